"""--full-task-lr-by-model: a model's own rate from the step the curriculum reaches the full
task on (the schedule's line restarted from it), through resume, branch and refusals."""
import dataclasses
import json

import numpy as np
import pytest

from cli_helpers import QUIET, run_cli
from relational_rnn.checkpoint import load_checkpoint
from relational_rnn.presets import PRESETS

# A tiny LSTM run of 10 steps whose curriculum reaches the full task after 6 steps, on a linear
# schedule whose rates are easy to write down.
RUN = ["--model", "lstm", "--batch-size", "8", "--eval-size", "32", "--eval-every", "1",
       "--checkpoint-every", "100", "--hidden-size", "8", "--mlp-hidden", "16",
       "--time-budget", "none", "--no-progress", "--no-plots", "--num-objects", "4",
       "--num-features", "4", "--curriculum", "3x2:6,4x4", "--lr", "1e-3",
       "--lr-schedule", "linear", "--lr-decay-steps", "100", "--min-lr", "1e-5"]


def evals(folder):
    lines = (folder / "lstm" / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "eval"]


def line(lr, step):
    """The linear schedule's rate at ``step`` from ``lr`` (to 1e-5 over 100 steps)."""
    return lr - (lr - 1e-5) * step / 100


def test_the_named_model_takes_its_rate_when_the_full_task_begins(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*RUN, "--steps", 10, "--out", out, "--full-task-lr-by-model",
                    "lstm=2e-3"]) == 0
    assert "the full task reached: learning rate" in capsys.readouterr().out
    for e in evals(out)[1:]:
        # the rate logged at step s is the one step s - 1 -> s used; the full task (phase 2)
        # begins with the 7th step
        expected = line(1e-3, e["step"] - 1) if e["phase"] == 0 else line(2e-3, e["step"] - 1)
        assert e["lr"] == pytest.approx(expected, rel=1e-12)
        assert (e["phase"] == 1) == (e["step"] > 6)
    info = load_checkpoint(out / "lstm")[1]
    assert info["optimizer"]["schedule"]["initial_lr"] == 2e-3
    assert json.loads((out / "run_config.json").read_text())["full_task_lr_by_model"] == \
        {"lstm": 2e-3}


def test_without_the_option_the_rate_follows_one_line(tmp_path):
    out = tmp_path / "run"
    assert run_cli([*RUN, "--steps", 10, "--out", out]) == 0
    for e in evals(out)[1:]:
        assert e["lr"] == pytest.approx(line(1e-3, e["step"] - 1), rel=1e-12)


def test_without_a_curriculum_the_full_task_rate_is_the_rate_from_the_start(tmp_path):
    out = tmp_path / "run"
    assert run_cli([*RUN, "--steps", 3, "--out", out, "--curriculum", "none",
                    "--full-task-lr-by-model", "lstm=2e-3"]) == 0
    assert [e["lr"] for e in evals(out)[1:]] == pytest.approx(
        [line(2e-3, 0), line(2e-3, 1), line(2e-3, 2)], rel=1e-12)


@pytest.mark.parametrize("stop", [4, 8])        # before and after the switch to the full task
def test_a_resumed_run_keeps_the_rate_of_its_phase(tmp_path, stop):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    flags = ["--full-task-lr-by-model", "lstm=2e-3"]
    assert run_cli([*RUN, "--steps", 10, "--out", whole, *flags]) == 0
    assert run_cli([*RUN, "--steps", stop, "--out", parts, *flags]) == 0
    assert run_cli(["--resume", parts, "--steps", 10, *QUIET]) == 0
    a, b = load_checkpoint(whole / "lstm")[0], load_checkpoint(parts / "lstm")[0]
    for name, value in a.parameters().items():
        np.testing.assert_array_equal(value, b.parameters()[name], err_msg=name)
    assert [e["lr"] for e in evals(whole)] == [e["lr"] for e in evals(parts)]


def test_a_branch_may_set_the_full_task_rate(tmp_path):
    parent, child = tmp_path / "parent", tmp_path / "child"
    assert run_cli([*RUN, "--steps", 8, "--out", parent]) == 0
    assert run_cli(["--branch-from", parent, "--out", child, "--steps", 10,
                    "--full-task-lr-by-model", "lstm=2e-3", *QUIET]) == 0
    last = evals(child)[-1]
    assert last["step"] == 10 and last["lr"] == pytest.approx(line(2e-3, 9), rel=1e-12)


def test_lr_alone_drops_a_presets_full_task_rates(tmp_path, monkeypatch):
    quick = PRESETS["quick"]
    monkeypatch.setitem(PRESETS, "quick", dataclasses.replace(
        quick, train=quick.train.replace(full_task_lr_by_model={"lstm": 2e-3})))
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    tiny = [a for a in RUN if a not in ("--lr", "1e-3")]
    assert run_cli([*tiny, "--preset", "quick", "--steps", 2, "--out", kept]) == 0
    assert run_cli([*RUN, "--preset", "quick", "--steps", 2, "--out", dropped]) == 0
    assert json.loads((kept / "run_config.json").read_text())["full_task_lr_by_model"] == \
        {"lstm": 2e-3}
    assert "full_task_lr_by_model" not in json.loads((dropped / "run_config.json").read_text())


@pytest.mark.parametrize("value, message", [
    ("lstm=0", "--full-task-lr-by-model"),
    ("gru=1e-3", "--full-task-lr-by-model"),
    ("rmc=1e-3", "--full-task-lr-by-model sets a rate for rmc, which the run does not train"),
    ("lstm=1e-6", "--min-lr (1e-05) must not exceed the lstm model's initial --lr (1e-06)"),
])
def test_bad_full_task_rates_are_refused_before_anything_is_written(tmp_path, capsys, value,
                                                                   message):
    out = tmp_path / "run"
    assert run_cli([*RUN, "--steps", 2, "--out", out, "--full-task-lr-by-model", value]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
