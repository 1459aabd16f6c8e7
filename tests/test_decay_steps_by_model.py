"""--lr-decay-steps-by-model: a model's own schedule length, through a run, resume, branch,
refusals, and the 4 x 4 presets' RelationalRNN (the recipe of the shipped rrnn-4x4); also a
hand-edited run folder with bad per-model values of any kind (lengths or rates)."""
import json
from pathlib import Path

import pytest

from cli_helpers import QUIET, run_cli
from relational_rnn import cli_parser, cli_run
from relational_rnn.checkpoint import load_checkpoint
from relational_rnn.config import RATE_MAPS, RunConfig
from relational_rnn.optimization import decay_steps, make_schedule

ROOT = Path(__file__).resolve().parent.parent
# Two tiny models, 6 steps, no curriculum, a linear schedule over 100 steps for all but those
# named in --lr-decay-steps-by-model.
RUN = ["--model", "rmc,lstm", "--batch-size", "8", "--eval-size", "32", "--eval-every", "1",
       "--checkpoint-every", "100", "--hidden-size", "8", "--mlp-hidden", "16",
       "--mem-slots", "2", "--head-size", "4", "--num-heads", "2",
       "--time-budget", "none", "--no-progress", "--no-plots", "--num-objects", "4",
       "--num-features", "4", "--curriculum", "none", "--lr", "1e-3",
       "--lr-schedule", "linear", "--lr-decay-steps", "100", "--min-lr", "1e-5"]


def logged_rates(folder, kind):
    lines = (folder / kind / "metrics.jsonl").read_text().splitlines()
    return {e["step"]: e["lr"] for e in map(json.loads, lines) if e["event"] == "eval"
            and e["step"] > 0}


def line(step, over):
    """The linear schedule's rate at ``step`` from 1e-3 to 1e-5 over ``over`` steps."""
    return max(1e-3 - (1e-3 - 1e-5) * step / over, 1e-5)


def test_the_named_model_runs_its_own_schedule_length(tmp_path):
    out = tmp_path / "run"
    assert run_cli([*RUN, "--steps", 6, "--out", out,
                    "--lr-decay-steps-by-model", "lstm=4"]) == 0
    # the rate logged at step s is the one step s - 1 -> s used
    for step, lr in logged_rates(out, "lstm").items():
        assert lr == pytest.approx(line(step - 1, 4), rel=1e-12)
    for step, lr in logged_rates(out, "rmc").items():
        assert lr == pytest.approx(line(step - 1, 100), rel=1e-12)
    assert logged_rates(out, "lstm")[6] == pytest.approx(1e-5)          # at its floor
    assert json.loads((out / "run_config.json").read_text())["lr_decay_steps_by_model"] == \
        {"lstm": 4}
    assert load_checkpoint(out / "lstm")[1]["optimizer"]["schedule"]["decay_steps"] == 4


def test_a_resumed_run_keeps_it_and_a_branch_may_change_it(tmp_path):
    whole, parts, child = tmp_path / "whole", tmp_path / "parts", tmp_path / "child"
    flags = ["--lr-decay-steps-by-model", "lstm=4"]
    assert run_cli([*RUN, "--steps", 6, "--out", whole, *flags]) == 0
    assert run_cli([*RUN, "--steps", 3, "--out", parts, *flags]) == 0
    assert run_cli(["--resume", parts, "--steps", 6, *QUIET]) == 0
    assert logged_rates(parts, "lstm") == logged_rates(whole, "lstm")
    assert run_cli(["--branch-from", parts, "--out", child, "--steps", 8,
                    "--lr-decay-steps-by-model", "lstm=10", *QUIET]) == 0
    assert logged_rates(child, "lstm")[8] == pytest.approx(line(7, 10), rel=1e-12)
    assert logged_rates(child, "rmc")[8] == pytest.approx(line(7, 100), rel=1e-12)


def test_without_the_key_an_older_run_folder_uses_one_length(tmp_path):
    out = tmp_path / "run"
    assert run_cli([*RUN, "--steps", 2, "--out", out]) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert "lr_decay_steps_by_model" not in config        # written only when set
    train = RunConfig.from_json(config).train
    assert train.lr_decay_steps_by_model is None
    assert decay_steps(train, "lstm") == decay_steps(train, "rmc") == 100


@pytest.mark.parametrize("value, message", [
    ("lstm=0", "--lr-decay-steps-by-model"),
    ("lstm=1.5", "--lr-decay-steps-by-model"),
    ("gru=10", "--lr-decay-steps-by-model"),
    ("rrnn=10", "--lr-decay-steps-by-model sets decay steps for rrnn, which the run does not "
                "train"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, value, message):
    out = tmp_path / "run"
    assert run_cli([*RUN, "--steps", 2, "--out", out, "--lr-decay-steps-by-model", value]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def resolved(argv):
    return cli_run.resolve_new(cli_parser.build_parser().parse_args(argv)).cfg


def test_lr_decay_steps_alone_drops_a_presets_per_model_lengths(tmp_path):
    preset = resolved(["--preset", "curriculum", "--out", str(tmp_path / "a")])
    assert preset.train.lr_decay_steps_by_model == {"rrnn": 60_000}
    alone = resolved(["--preset", "curriculum", "--lr-decay-steps", "5000",
                      "--out", str(tmp_path / "b")])
    assert alone.train.lr_decay_steps_by_model is None
    both = resolved(["--preset", "curriculum", "--lr-decay-steps", "5000",
                     "--lr-decay-steps-by-model", "lstm=7", "--out", str(tmp_path / "c")])
    assert both.train.lr_decay_steps_by_model == {"lstm": 7}
    assert not any(tmp_path.iterdir())                   # resolving writes nothing


@pytest.mark.parametrize("preset", ["curriculum", "quick"])
def test_the_4x4_presets_relational_rnn_is_the_shipped_rrnn_4x4_recipe(tmp_path, preset):
    """The RelationalRNN of --preset curriculum is the model and the schedule of the shipped
    rrnn-4x4 (98.4% in 30 minutes), which was trained with flags on the older preset."""
    shipped = RunConfig.from_json(json.loads(
        (ROOT / "relational_rnn" / "pretrained" / "4x4-rrnn" / "run_config.json").read_text()))
    mine = resolved(["--preset", preset, "--model", "rrnn", "--out", str(tmp_path / "r")])
    assert mine.model_sizes["rrnn"] == shipped.model_sizes["rrnn"]
    for full_task in (False, True):
        a = make_schedule(mine.train, "rrnn", full_task=full_task)
        b = make_schedule(shipped.train, "rrnn", full_task=full_task)
        assert a.config() == b.config()
        assert [a(s) for s in range(0, 70_000, 500)] == [b(s) for s in range(0, 70_000, 500)]
    if preset == "curriculum":                            # the rest of the recipe, too
        ignore = {"lr_decay_steps": None, "lr_decay_steps_by_model": None}
        assert mine.train.replace(**ignore) == shipped.train.replace(**ignore)
        assert mine.phases == shipped.phases


BAD_EDITS = [("lr_decay_steps_by_model", value) for value in ({"lstm": 0}, {"lstm": 2.5},
                                                              {"gru": 10}, [10])] + [
    (key, value) for key in RATE_MAPS
    for value in ({"lstm": 0}, {"lstm": -1e-3}, {"lstm": "1e-3"}, {"lstm": True},
                  {"lstm": float("inf")}, {"gru": 1e-3}, [1e-3])]


@pytest.mark.parametrize("key, value", BAD_EDITS)
def test_a_run_folder_with_bad_per_model_values_is_refused_before_anything_changes(
        tmp_path, capsys, key, value):
    """A hand-edited run_config.json: --resume names the setting and writes nothing. Covers
    the per-model schedule lengths and both per-model rate maps."""
    out = tmp_path / "run"
    assert run_cli([*RUN, "--steps", 2, "--out", out]) == 0
    config = json.loads((out / "run_config.json").read_text())
    config[key] = value
    (out / "run_config.json").write_text(json.dumps(config))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert run_cli(["--resume", out, "--steps", 4, *QUIET]) == 2
    assert f"{key} must map model kinds" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
