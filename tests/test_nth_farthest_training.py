"""Training CLI of nth_farthest.py: outputs of a run, exact resume, refusals, NaN stop,
curriculum, that learning happens, checkpoints and bad arguments.  Tiny models, tens of steps."""
import dataclasses
import json
import os
import re

import numpy as np
import pytest

import nth_farthest as nf
from cli_helpers import QUIET, run_cli
from relational_rnn import cli, cli_parser, cli_run, curriculum, evaluation, outputs, trainer
from relational_rnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from relational_rnn.config import RunConfig, TrainSettings
from relational_rnn.curriculum import parse_curriculum, phase_at
from relational_rnn.presets import PRESETS
from relational_rnn.registry import build_model
from relational_rnn.run_folder import read_json

# Tiny models and a tiny run: every size option is given so the presets may change freely.
BASE = ["--batch-size", "8", "--eval-size", "64", "--eval-every", "5", "--checkpoint-every", "10",
        "--mem-slots", "2", "--head-size", "4", "--num-heads", "2", "--hidden-size", "8",
        "--mlp-hidden", "16", "--lr", "1e-3", "--time-budget", "none", "--no-progress",
        "--num-objects", "4", "--num-features", "4", "--no-plots"]
TINY = BASE + ["--curriculum", "3x2:6,4x4"]
# The same for an lstm-only run (the memory options do not apply to it).
LSTM = ["--batch-size", "8", "--eval-size", "64", "--eval-every", "5", "--checkpoint-every", "10",
        "--hidden-size", "8", "--mlp-hidden", "16", "--time-budget", "none", "--no-progress",
        "--curriculum", "none", "--no-plots"]


def set_preset_lr_by_model(monkeypatch, rates):
    """Make the quick preset start models at their own rates, for one test."""
    quick = PRESETS["quick"]
    monkeypatch.setitem(PRESETS, "quick",
                        dataclasses.replace(quick, train=quick.train.replace(lr_by_model=rates)))


def strict_json_lines(path):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant} in {path}")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line, parse_constant=reject) for line in fh if line.strip()]


def params_of(folder):
    model, info = load_checkpoint(folder)
    return model.parameters(), info


# --------------------------------------------------------------------------------------------
# Smoke run: every output of every model
# --------------------------------------------------------------------------------------------


def test_smoke_run_of_all_models_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["--model", "all", "--steps", 12, "--out", out,
                    *[a for a in TINY if a != "--no-plots"]]) == 0
    stdout = capsys.readouterr().out
    for name in ("run_config.json", "results.json", "learning_curves.png",
                 "attention_heatmap.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "results.json", encoding="utf-8") as fh:
        results = json.load(fh, parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
    assert set(results["models"]) == {"rmc", "lstm", "rrnn"}
    assert results["chance_accuracy"] == 0.25
    assert "nth_farthest.py" in results["command"]
    for kind in ("rmc", "lstm", "rrnn"):
        r = results["models"][kind]
        assert r["status"] == "finished" and r["steps_done"] == 12 and r["steps"] == 12
        assert 0.0 <= r["final"]["heldout_acc"] <= 1.0 and len(r["final"]["acc_per_n"]) == 4
        lines = strict_json_lines(out / kind / "metrics.jsonl")
        evals = [e for e in lines if e["event"] == "eval"]
        assert [e["step"] for e in evals] == [0, 5, 10, 12]
        for key in ("wall_time", "phase", "lr", "train_loss", "heldout_loss", "heldout_acc",
                    "acc_per_n"):
            assert key in evals[-1], key
        assert [(e["step"], e["active_objects"]) for e in lines if e["event"] == "phase"] == \
            [(0, 3), (6, 4)]
        model, info = load_checkpoint(out / kind)
        assert info["kind"] == kind and info["step"] == 12 and info["dtype"] == "float32"
        assert model.num_parameters() == r["num_parameters"]
    # the summary table names every model
    table = stdout[stdout.index("held-out acc"):]
    assert all(k in table for k in ("rmc", "lstm", "rrnn"))
    assert "curriculum phase 2/2: 4 objects x 4 features" in stdout


def test_progress_lines_on_stderr_when_not_a_tty(tmp_path, capsys):
    assert run_cli(["--model", "lstm", "--steps", 5, "--out", tmp_path / "p", "--batch-size", 8,
                    "--eval-size", 32, "--hidden-size", 8, "--mlp-hidden", 16, "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "[lstm] step 5/5" in err and "steps/s" in err and "held-out acc" in err


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------


class Interrupt:
    """Wrap make_batch to raise KeyboardInterrupt on its ``at``-th call (a crash mid-run)."""

    def __init__(self, at):
        self.at, self.calls = at, 0
        self.real = nf.make_batch

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def eval_history(folder):
    return [{k: v for k, v in e.items() if k != "wall_time"}
            for e in strict_json_lines(folder / "metrics.jsonl") if e["event"] == "eval"]


@pytest.mark.parametrize("how", ["crash", "time_budget"])
def test_interrupted_and_resumed_run_ends_with_exactly_the_same_parameters(tmp_path, monkeypatch,
                                                                         how):
    steps = 27
    full, cut = tmp_path / "full", tmp_path / "cut"
    argv = ["--model", "rmc,lstm", "--steps", steps, *TINY]
    assert run_cli([*argv, "--out", full]) == 0
    if how == "crash":
        # The rmc model crashes while drawing the batch of step 24: its checkpoint is at 20 and
        # metrics.jsonl already has lines up to step 20 (eval at 5, 10, ...), lstm never starts.
        interrupt = Interrupt(at=24)
        monkeypatch.setattr(trainer.nf, "make_batch", interrupt)
        assert run_cli([*argv, "--out", cut]) == 130
        monkeypatch.setattr(trainer.nf, "make_batch", interrupt.real)
        assert load_checkpoint(cut / "rmc")[1]["step"] == 20
        assert not (cut / "lstm" / "checkpoint.npz").exists()
        with open(cut / "rmc" / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": "eval", "step": 23, "wall_time": 0.0}) + "\n")
        assert run_cli(["--resume", cut, *QUIET]) == 0
    else:
        # A budget this small stops each model cleanly after its first step (checkpoint at 1).
        assert run_cli([*argv, "--out", cut, "--time-budget", "1e-9"]) == 0
        for kind in ("rmc", "lstm"):
            assert load_checkpoint(cut / kind)[1]["step"] == 1
        with open(cut / "results.json", encoding="utf-8") as fh:
            assert json.load(fh)["models"]["rmc"]["status"] == "time_budget"
        assert run_cli(["--resume", cut, "--time-budget", "none", *QUIET]) == 0
    for kind in ("rmc", "lstm"):
        p_full, info_full = params_of(full / kind)
        p_cut, info_cut = params_of(cut / kind)
        assert info_cut["step"] == info_full["step"] == steps
        assert p_full.keys() == p_cut.keys()
        for name in p_full:
            assert np.array_equal(p_full[name], p_cut[name]), f"{kind} {name}"
        for moment in ("m", "v"):
            for name, value in info_full["optimizer"][moment].items():
                assert np.array_equal(value, info_cut["optimizer"][moment][name])
        assert info_full["data_rng_state"] == info_cut["data_rng_state"]
        history_full, history_cut = eval_history(full / kind), eval_history(cut / kind)
        if how == "crash":       # the line past the checkpoint was dropped; identical history
            assert history_cut == history_full
        else:   # one extra evaluation where the budget stopped it, which starts a new window
            def held_out(history):      # of training statistics: compare held-out values only
                return [{k: v for k, v in e.items() if not k.startswith("train_")}
                        for e in history if e["step"] != 1]
            assert held_out(history_cut) == held_out(history_full)
    with open(cut / "results.json", encoding="utf-8") as fh:
        results = json.load(fh)
    assert all(r["status"] == "finished" for r in results["models"].values())
    assert len(results["commands"]) == 2


def test_resume_with_more_steps_continues_and_finished_models_are_skipped(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli(["--model", "lstm", "--steps", 10, "--out", out, *LSTM]) == 0
    assert run_cli(["--resume", out, *QUIET]) == 0
    assert "already at step 10/10: skipped" in capsys.readouterr().out
    assert run_cli(["--resume", out, "--steps", 15, *QUIET]) == 0
    assert load_checkpoint(out / "lstm")[1]["step"] == 15
    resumes = [e for e in strict_json_lines(out / "lstm" / "metrics.jsonl")
               if e["event"] == "resume"]
    assert [e["step"] for e in resumes] == [10]


def test_the_recipe_presets_train_the_relational_rnn_with_its_options():
    for name in ("quick", "curriculum", "curriculum8x16"):
        sizes = PRESETS[name].models["rrnn"]
        assert (sizes.memory_input, sizes.memory_readout) == ("input_and_hidden", "slots")


def test_relational_rnn_options_reach_the_model_and_resume(tmp_path):
    out = tmp_path / "o"
    assert run_cli(["--model", "rrnn", "--steps", 10, "--out", out, *TINY,
                    "--memory-input", "input_and_hidden", "--memory-readout", "slots"]) == 0
    sizes = read_json(out / "run_config.json")["model_sizes"]["rrnn"]
    assert (sizes["memory_input"], sizes["memory_readout"]) == ("input_and_hidden", "slots")
    model, _ = load_checkpoint(out / "rrnn")
    assert (model.rnn.cell.memory_input, model.rnn.cell.memory_readout) == \
        ("input_and_hidden", "slots")
    assert model.rnn.cell.readout.params["W"].shape == (2 * 8, 8)   # N * d -> H
    assert run_cli(["--resume", out, "--steps", 15, *QUIET]) == 0
    assert load_checkpoint(out / "rrnn")[1]["step"] == 15
    # without them (a preset that leaves them unset) the run config keeps the shape it had
    # before they existed, and the model its default data flow
    plain = tmp_path / "p"
    assert run_cli(["--model", "rrnn", "--preset", "sonnet", "--steps", 5, "--out", plain,
                    *TINY]) == 0
    sizes = read_json(plain / "run_config.json")["model_sizes"]["rrnn"]
    assert "memory_input" not in sizes and "memory_readout" not in sizes
    model, _ = load_checkpoint(plain / "rrnn")
    assert (model.rnn.cell.memory_input, model.rnn.cell.memory_readout) == ("hidden", "mean")


def test_relational_rnn_options_are_refused_for_other_models(tmp_path, capsys):
    out = tmp_path / "x"
    assert run_cli(["--model", "lstm", "--steps", 5, "--out", out, *LSTM,
                    "--memory-readout", "slots"]) == 2
    assert "--memory-readout applies to rrnn" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Refusals: existing run, bad checkpoints, bad arguments
# --------------------------------------------------------------------------------------------


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_out_folder_holding_a_run_is_refused_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["--model", "lstm", "--steps", 3, "--out", out, *LSTM]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert run_cli(["--model", "lstm", "--steps", 3, "--out", out, *LSTM]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err
    assert snapshot(out) == before
    # an existing empty folder is fine
    (tmp_path / "empty").mkdir()
    assert run_cli(["--model", "lstm", "--steps", 2, "--out", tmp_path / "empty",
                    *LSTM]) == 0


def test_bad_checkpoints_are_refused_with_a_clear_message(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["--model", "rmc,lstm", "--steps", 3, "--out", out, *TINY]) == 0
    capsys.readouterr()
    before = snapshot(out)

    # another model's checkpoint in the rmc folder
    rmc_ckpt = out / "rmc" / "checkpoint.npz"
    rmc_bytes = rmc_ckpt.read_bytes()
    rmc_ckpt.write_bytes((out / "lstm" / "checkpoint.npz").read_bytes())
    with pytest.raises(CheckpointError, match="holds a 'lstm' model, expected 'rmc'"):
        load_checkpoint(rmc_ckpt, expect_kind="rmc")
    assert run_cli(["--resume", out, "--steps", 5]) == 2
    assert "holds a 'lstm' model, expected 'rmc'" in capsys.readouterr().err

    # an unreadable file
    rmc_ckpt.write_bytes(b"this is not a zip archive")
    with pytest.raises(CheckpointError, match="is not a checkpoint of this library"):
        load_checkpoint(rmc_ckpt)
    assert run_cli(["--resume", out, "--steps", 5]) == 2
    err = capsys.readouterr().err
    assert "is not a checkpoint of this library" in err and "pickle" not in err

    # a checkpoint of another run (different model sizes in the run config)
    rmc_ckpt.write_bytes(rmc_bytes)
    config_path = out / "run_config.json"
    config_bytes = config_path.read_bytes()
    config = json.loads(config_bytes)
    config["model_sizes"]["rmc"]["mem_slots"] = 3
    config_path.write_text(json.dumps(config))
    assert run_cli(["--resume", out, "--steps", 5]) == 2
    assert "belongs to another run" in capsys.readouterr().err
    config_path.write_bytes(config_bytes)

    # a missing checkpoint file, a folder without a run
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "nowhere")
    assert run_cli(["--resume", tmp_path]) == 2
    assert "no run to resume" in capsys.readouterr().err
    assert snapshot(out) == before


@pytest.mark.parametrize("argv, message", [
    (["--num-objects", "1"], "--num-objects"),
    (["--batch-size", "0"], "--batch-size"),
    (["--steps", "-5"], "--steps"),
    (["--steps", "ten"], "--steps"),
    (["--preset", "huge"], "--preset"),
    (["--model", "gru"], "--model"),
    (["--curriculum", "3x1:100,5x4"], "objects must lie in [2, 4]"),
    (["--curriculum", "3x1,4x4"], "needs a step count"),
    (["--curriculum", "3x1:10,4x4:20"], "takes no step count"),
    (["--curriculum", "3by1:10,4x4"], "OBJECTSxFEATURES"),
    (["--curriculum", "3x9:10,4x4"], "features must lie in [1, 4]"),
    (["--lr", "0"], "--lr"),
    (["--lr", "0.01", "--min-lr", "0.1"], "--min-lr"),
    (["--lr-decay-rate", "1.5"], "--lr-decay-rate"),
    (["--lr-schedule", "cosine"], "--lr-schedule"),
    (["--model", "lstm", "--num-heads", "2"], "--num-heads applies to rmc/rrnn"),
    (["--mlp-hidden", "16,x"], "--mlp-hidden"),
    (["--dtype", "float16"], "--dtype"),
    (["--ema-decay", "1.5"], "--ema-decay must lie in (0, 1)"),
    (["--ema-decay", "x"], "--ema-decay"),
    (["--curriculum", "3x1:10@1.2,4x4"], "fraction in (0, 1]"),
    (["--resume", "x", "--lr", "0.1"], "cannot be combined with --lr"),
    (["--workers", "0"], "--workers"),
    (["--workers", "two"], "--workers"),
    (["--batch-size", "8", "--workers", "9"], "--workers=9 exceeds the batch size 8"),
])
def test_bad_arguments_exit_non_zero_before_writing_anything(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert run_cli(["--out", out, "--model", "rmc", *argv] if "--resume" not in argv
                   else argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# NaN stop
# --------------------------------------------------------------------------------------------


def test_nan_loss_stops_the_model_names_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch,
                                                                         capsys):
    from relational_memory import RMCClassifier
    real_forward = RMCClassifier.forward
    calls = {"train": 0}

    def forward(self, x):
        logits, cache = real_forward(self, x)
        if x.shape[0] == 8:                  # a training batch (the held-out batches hold 64)
            calls["train"] += 1
            if calls["train"] == 13:
                logits = logits * np.nan
        return logits, cache

    monkeypatch.setattr(RMCClassifier, "forward", forward)
    out = tmp_path / "nan"
    assert run_cli(["--model", "rmc,lstm", "--steps", 20, "--out", out, *TINY]) == 1
    err = capsys.readouterr().err
    assert "rmc: training stopped at step 13" in err and "NaN" in err.replace("nan", "NaN")
    model, info = load_checkpoint(out / "rmc")
    assert info["step"] == 10
    assert all(np.isfinite(p).all() for p in model.parameters().values())
    stops = [e for e in strict_json_lines(out / "rmc" / "metrics.jsonl") if e["event"] == "stop"]
    assert stops[-1]["reason"] == "nan" and stops[-1]["step"] == 13
    with open(out / "results.json", encoding="utf-8") as fh:
        results = json.load(fh)
    assert results["models"]["rmc"]["status"] == "nan"
    assert results["models"]["lstm"]["status"] == "finished"      # the next model still ran


# --------------------------------------------------------------------------------------------
# Curriculum
# --------------------------------------------------------------------------------------------


def test_parse_curriculum_and_phase_boundaries():
    phases = parse_curriculum(" 3x1:3000, 3X4:6000 ,4x4", 4, 4)
    assert phases == [(3, 1, 3000, None), (3, 4, 6000, None), (4, 4, None, None)]
    assert [phase_at(phases, s) for s in (0, 2999, 3000, 8999, 9000, 10 ** 6)] == \
        [0, 0, 1, 1, 2, 2]
    assert parse_curriculum("none", 8, 16) == [(8, 16, None, None)]
    assert parse_curriculum(None, 8, 16) == [(8, 16, None, None)]
    assert curriculum.format_curriculum(phases) == "3x1:3000,3x4:6000,4x4"
    for bad in ("", "3x1:0,4x4", "1x1:5,4x4", "4x5", "3x1:5,,4x4", "x:1,4x4", "3x1:a,4x4"):
        if bad == "":
            continue                                   # '' means no curriculum
        with pytest.raises(ValueError, match="curriculum phase"):
            parse_curriculum(bad, 4, 4)


def test_parse_gated_curriculum_round_trips_and_rejects_bad_gates():
    phases = parse_curriculum("3x1:10000@0.9, 3x4:8000 @ 0.95,4x4", 4, 4)
    assert phases == [(3, 1, 10000, 0.9), (3, 4, 8000, 0.95), (4, 4, None, None)]
    assert curriculum.format_curriculum(phases) == "3x1:10000@0.9,3x4:8000@0.95,4x4"
    assert parse_curriculum(curriculum.format_curriculum(phases), 4, 4) == phases
    # run configs written before gates existed hold 3-element phases
    assert curriculum.normalize_phases([[3, 1, 5], [4, 4, None]]) == [(3, 1, 5, None),
                                                                    (4, 4, None, None)]
    for bad, what in (("3x1:100@0,4x4", "fraction in"), ("3x1:100@1.5,4x4", "fraction in"),
                      ("3x1:100@x,4x4", "'x'"), ("3x1:100@nan,4x4", "fraction in"),
                      ("3x1:@0.9,4x4", "step count"), ("3x1:100@0.9,4x4:5@0.9", "last phase")):
        with pytest.raises(ValueError, match=what):
            parse_curriculum(bad, 4, 4)


def phase_events(folder):
    return [(e["step"], e["active_objects"], e["reason"])
            for e in strict_json_lines(folder / "metrics.jsonl") if e["event"] == "phase"]


def test_gated_phase_ends_when_its_training_accuracy_reaches_the_gate(tmp_path, monkeypatch,
                                                                      capsys):
    # A window of 4 steps; a gate of 1% passes at the first window (any model beats it), a gate
    # of 100% never does in these few steps, so that phase runs its full step count.
    monkeypatch.setattr(curriculum, "GATE_WINDOW", 4)
    out = tmp_path / "g"
    argv = ["--model", "lstm", "--steps", 20, "--out", out, *LSTM[:-3], "--no-plots",
            "--curriculum", "3x1:9@0.01,3x4:6@1,4x4"]
    assert run_cli(argv) == 0
    assert phase_events(out / "lstm") == [(0, 3, None), (4, 3, "accuracy"), (10, 4, "steps")]
    log = capsys.readouterr().out
    assert "until its training accuracy reaches 0.01, at most 9 steps" in log
    assert "training accuracy reached" in log
    # the 3x4 phase ended on its cap: the log says it did not pass its gate
    assert "ran to its cap of 6 steps below its gate 1: last training accuracy 0." in log


def test_gated_curriculum_resumes_exactly_mid_window(tmp_path, monkeypatch):
    # Stopped at step 8, inside the second 4-step window of the 3x4 phase's gate (steps 3-6
    # made the first); resumed, the gate passes at step 10 exactly as in one uninterrupted run.
    monkeypatch.setattr(curriculum, "GATE_WINDOW", 4)
    argv = ["--model", "lstm", "--steps", 16, *LSTM[:-3], "--no-plots",
            "--curriculum", "3x1:2,3x4:12@0.3,4x4"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_cli([*argv, "--out", full]) == 0
    assert phase_events(full / "lstm") == [(0, 3, None), (2, 3, "steps"), (10, 4, "accuracy")]
    assert run_cli([*argv, "--out", cut, "--steps", 8]) == 0
    info = load_checkpoint(cut / "lstm")[1]
    state = info["curriculum"]
    assert (info["phase_index"], state["phase_start"], state["gate"]["steps"]) == (1, 2, 2)
    assert run_cli(["--resume", cut, "--steps", 16, *QUIET]) == 0
    assert phase_events(cut / "lstm") == phase_events(full / "lstm")
    p_full, _ = params_of(full / "lstm")
    p_cut, _ = params_of(cut / "lstm")
    for name in p_full:
        assert np.array_equal(p_full[name], p_cut[name]), name


def test_each_phase_trains_on_its_active_sizes_and_evaluation_uses_the_full_task(tmp_path,
                                                                                monkeypatch):
    seen = []
    real = nf.make_batch

    def spy(rng, batch_size, num_objects, num_features, **kwargs):
        x, y, n = real(rng, batch_size, num_objects, num_features, **kwargs)
        if batch_size == 8:                             # not the held-out set (40 examples)
            seen.append((kwargs.get("active_objects"), kwargs.get("active_features"), x, y, n))
        return x, y, n

    from lstm_baseline import LSTMClassifier
    real_forward = LSTMClassifier.forward
    eval_shapes = []

    def forward(self, x):
        if x.shape[0] != 8:
            eval_shapes.append(x.shape)
        return real_forward(self, x)

    monkeypatch.setattr(trainer.nf, "make_batch", spy)
    monkeypatch.setattr(LSTMClassifier, "forward", forward)
    argv = ["--model", "lstm", "--steps", 10, "--out", tmp_path / "c", "--batch-size", 8,
            "--eval-size", 40, "--eval-every", 5, "--hidden-size", 8, "--mlp-hidden", 16,
            "--num-objects", 5, "--num-features", 3, "--curriculum", "2x1:3,3x2:4,5x3",
            "--no-progress", "--no-plots"]
    assert run_cli(argv) == 0
    assert [(k, f) for k, f, *_ in seen] == [(2, 1)] * 3 + [(3, 2)] * 4 + [(5, 3)] * 3
    width = nf.task_width(5, 3)
    for k, f, x, y, n in seen:
        assert x.shape == (8, k, width)
        assert not x[:, :, f:3].any()                   # inactive features are zero
        assert y.max() < k and n.max() < k
    assert eval_shapes and all(s[1:] == (5, width) for s in eval_shapes)
    lines = strict_json_lines(tmp_path / "c" / "lstm" / "metrics.jsonl")
    assert [(e["step"], e["active_objects"], e["active_features"])
            for e in lines if e["event"] == "phase"] == [(0, 2, 1), (3, 3, 2), (7, 5, 3)]


# --------------------------------------------------------------------------------------------
# Learning happens
# --------------------------------------------------------------------------------------------


def test_lstm_learns_the_easy_task_well_above_chance(tmp_path):
    """3 objects x 1 feature, a few hundred steps: held-out accuracy far above chance (1/3).

    So few steps reach the first plateau of this task: the rank n = 0 (the answer is m itself,
    found by matching the id and m one-hots) is solved, the other ranks are not yet (they need
    the distances), which gives 1/3 + 2/3 * 1/2 = 2/3 overall."""
    out = tmp_path / "learn"
    assert run_cli(["--model", "lstm", "--num-objects", 3, "--num-features", 1,
                    "--curriculum", "none", "--steps", 200, "--batch-size", 32,
                    "--lr", "3e-3", "--lr-decay-rate", 1, "--min-lr", 0, "--hidden-size", 32,
                    "--mlp-hidden", "32", "--eval-size", 600, "--eval-every", 200,
                    "--out", out, "--no-progress", "--no-plots"]) == 0
    with open(out / "results.json", encoding="utf-8") as fh:
        final = json.load(fh)["models"]["lstm"]["final"]
    assert final["heldout_acc"] > 0.6, final
    assert final["acc_per_n"][0] > 0.95, final


# --------------------------------------------------------------------------------------------
# Library helpers
# --------------------------------------------------------------------------------------------


def test_checkpoint_is_written_atomically_and_round_trips(tmp_path):
    from optimizer import Adam
    model = build_model("rmc", PRESETS["quick"].models["rmc"], 3, 2,
                                 dtype=np.float64, rng=np.random.default_rng(1))
    opt = Adam(model, lr=1e-3)
    rng = np.random.default_rng(5)
    rng.random(3)
    path = tmp_path / "checkpoint.npz"
    cfg = {"phases": [[3, 2, None]], "example": True}
    save_checkpoint(str(path), kind="rmc", model=model, optimizer=opt, data_rng=rng,
                             step=7, run_config=cfg)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]    # no temporary left
    loaded, info = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.dtype == np.float64
    for name, p in model.parameters().items():
        assert np.array_equal(p, loaded.parameters()[name])
    assert info["step"] == 7 and info["run_config"] == cfg and info["kind"] == "rmc"
    restored = np.random.Generator(np.random.PCG64())
    restored.bit_generator.state = info["data_rng_state"]
    assert np.array_equal(restored.random(4), rng.random(4))


def test_plot_functions_reject_bad_input(tmp_path):
    from relational_rnn import plots
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.plot_learning_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="shape"):
        plots.plot_attention_heatmap(np.zeros((2, 3, 4)), tmp_path / "x.png")


def test_learning_curves_draw_models_whose_gated_phases_ended_at_different_steps(tmp_path):
    from relational_rnn import plots

    def lines(change_at):
        evals = [{"event": "eval", "step": s, "wall_time": 0.1 * s, "heldout_acc": 0.3,
                  "heldout_loss": 1.3, "train_loss": 1.2, "acc_per_n": [1, 0.2, 0.1]}
                 for s in (0, 10, 20)]
        return evals + [{"event": "phase", "step": change_at, "wall_time": 0.1 * change_at,
                         "active_objects": 3, "active_features": 2}]

    path = plots.plot_learning_curves({"rmc": lines(4), "lstm": lines(12)},
                                      tmp_path / "curves.png", chance=1 / 3)
    assert os.path.getsize(path) > 0


def test_a_branch_is_marked_on_the_curves_and_named_in_their_title(tmp_path):
    from relational_rnn import plots
    evals = [{"event": "eval", "step": s, "wall_time": 0.1 * s, "heldout_acc": 0.3,
              "heldout_loss": 1.3, "acc_per_n": [1, 0.2, 0.1]} for s in (0, 10, 20)]
    branch = {"event": "branch", "step": 10, "wall_time": 1.0}
    assert plots._branches([*evals, branch]) == [branch]
    path = plots.plot_learning_curves({"rmc": [*evals[:2], branch, evals[2]]},
                                      tmp_path / "curves.png", chance=1 / 3)
    assert os.path.getsize(path) > 0
    train = PRESETS["curriculum8x16"].train.replace(batch_size=256, curriculum=None)
    cfg = RunConfig(preset="curriculum", models=("rmc",), train=train, phases=((8, 16, None),),
                    model_sizes={}, branched_from={"steps": {"rmc": 10},
                                                   "changed": {"batch_size": [128, 256]}})
    assert outputs.curves_title(cfg).endswith(
        "batch 256; branched at step 10 from another run, changed: --batch-size 128 -> 256)")


def test_long_titles_wrap_at_spaces_and_after_commas():
    from relational_rnn import plots
    spec = "3x1:10000@0.9,3x4:10000@0.9,4x4:10000@0.9,4x16:10000@0.9,6x16:20000@0.8,8x16"
    title = f"N-th Farthest, 8 objects x 16 features (curriculum {spec})"
    wrapped = plots.wrap_title(title, 40)
    lines = wrapped.split("\n")
    assert len(lines) > 1 and all(len(line) <= 40 for line in lines)
    # nothing lost or reordered: a break replaces one space, or follows a comma
    rebuilt = lines[0]
    for line in lines[1:]:
        rebuilt += ("" if rebuilt.endswith(",") and not title.startswith(rebuilt + " ")
                    else " ") + line
    assert rebuilt == title
    assert plots.wrap_title("short, title", 40) == "short, title"
    assert plots.wrap_title(spec, 5).split("\n")[0] == "3x1:10000@0.9,"   # too long: kept whole


# --------------------------------------------------------------------------------------------
# Averaged weights
# --------------------------------------------------------------------------------------------


def test_evaluation_and_load_checkpoint_use_the_averaged_weights(tmp_path):
    out = tmp_path / "a"
    assert run_cli(["--model", "lstm", "--steps", 12, "--out", out, *LSTM,
                    "--ema-decay", "0.9"]) == 0
    evals = [e for e in strict_json_lines(out / "lstm" / "metrics.jsonl") if e["event"] == "eval"]
    assert all(e["weights"] == "averaged" and "last_iterate_acc" in e for e in evals)
    model, info = load_checkpoint(out / "lstm")
    assert info["weights"] == "averaged" and info["ema"]["t"] == 12
    assert info["ema"]["decay"] == 0.9
    raw, raw_info = load_checkpoint(out / "lstm", averaged=False)
    assert raw_info["weights"] == "last"
    differ = 0
    for name, value in model.parameters().items():
        assert np.array_equal(value, info["ema"]["average"][name])
        differ += not np.array_equal(value, raw.parameters()[name])
    assert differ > 0                  # the average is not the last iterate
    # the last evaluation's accuracy is that of the averaged weights
    final = evaluation.evaluate(model, nf.make_eval_set(info["run_config"]["eval_seed"], 64, 4, 4,
                                                      dtype=np.float32), 4)
    assert final["heldout_acc"] == evals[-1]["heldout_acc"]


def test_without_averaging_the_checkpoint_holds_the_last_iterate_and_old_runs_resume(tmp_path):
    out = tmp_path / "n"
    assert run_cli(["--model", "lstm", "--steps", 6, "--out", out, *LSTM,
                    "--ema-decay", "none", "--lr", "1e-3", "--lr-schedule", "exponential"]) == 0
    evals = [e for e in strict_json_lines(out / "lstm" / "metrics.jsonl") if e["event"] == "eval"]
    assert all(e["weights"] == "last" and "last_iterate_acc" not in e for e in evals)
    _, info = load_checkpoint(out / "lstm")
    assert info["ema"] is None and info["weights"] == "last"
    # a run folder written before --ema-decay, --lr-schedule and per-model rates existed has
    # none of those keys: it resumes with no average, the exponential schedule, one rate
    config = json.loads((out / "run_config.json").read_text())
    for key in ("ema_decay", "lr_schedule", "lr_by_model"):
        del config[key]
    assert "full_task_lr_by_model" not in config      # written only when set
    (out / "run_config.json").write_text(json.dumps(config))
    assert run_cli(["--resume", out, "--steps", 10, *QUIET]) == 0
    assert load_checkpoint(out / "lstm")[1]["step"] == 10


def test_linear_schedule_reaches_its_floor_and_resumes_with_it(tmp_path):
    out = tmp_path / "lin"
    assert run_cli(["--model", "lstm", "--steps", 10, "--out", out, *LSTM, "--lr", "1e-3",
                    "--lr-schedule", "linear", "--lr-decay-steps", 10, "--min-lr", "1e-4"]) == 0
    evals = [e for e in strict_json_lines(out / "lstm" / "metrics.jsonl") if e["event"] == "eval"]
    # the lr logged at step s is the one the step s-1 -> s used: 1e-3 - 9e-5 (s - 1)
    for e in evals[1:]:
        assert e["lr"] == pytest.approx(1e-3 - 9e-5 * (e["step"] - 1), rel=1e-12)
    _, info = load_checkpoint(out / "lstm")
    assert info["run_config"]["lr_schedule"] == "linear"
    assert run_cli(["--resume", out, "--steps", 14, *QUIET]) == 0
    last = [e for e in strict_json_lines(out / "lstm" / "metrics.jsonl") if e["event"] == "eval"]
    assert last[-1]["step"] == 14 and last[-1]["lr"] == pytest.approx(1e-4, rel=1e-12)


def test_a_preset_may_start_one_model_at_its_own_lr_and_lr_overrides_it(tmp_path, monkeypatch):
    set_preset_lr_by_model(monkeypatch, {"lstm": 2e-3})
    out = tmp_path / "p"
    assert run_cli(["--model", "lstm", "--steps", 5, "--out", out, *LSTM, "--preset",
                    "quick"]) == 0
    optimizer_state = load_checkpoint(out / "lstm")[1]["optimizer"]
    assert optimizer_state["lr"] == 2e-3 and optimizer_state["schedule"]["initial_lr"] == 2e-3
    first_step = [e for e in strict_json_lines(out / "lstm" / "metrics.jsonl")
                  if e["event"] == "eval" and e["step"] > 0][0]
    assert first_step["lr"] < 2e-3 < first_step["lr"] * 1.01     # the rate the steps used
    assert json.loads((out / "run_config.json").read_text())["lr_by_model"] == {"lstm": 2e-3}
    # --lr applies to every model, the preset's per-model rate included
    out2 = tmp_path / "q"
    assert run_cli(["--model", "lstm", "--steps", 5, "--out", out2, *LSTM, "--preset", "quick",
                    "--lr", "5e-4"]) == 0
    assert load_checkpoint(out2 / "lstm")[1]["optimizer"]["schedule"]["initial_lr"] == 5e-4
    assert json.loads((out2 / "run_config.json").read_text())["lr_by_model"] is None
    # a per-model rate below --min-lr is refused before anything is written
    set_preset_lr_by_model(monkeypatch, {"lstm": 1e-6})
    out3 = tmp_path / "r"
    assert run_cli(["--model", "lstm", "--steps", 5, "--out", out3, *LSTM, "--preset", "quick",
                    "--min-lr", "1e-5"]) == 2
    assert not out3.exists()


def test_the_8x16_preset_is_the_command_line_of_the_best_8x16_run(tmp_path):
    """--preset curriculum8x16 gives exactly the configuration of row 4 of the 8 x 16 table
    (IMPLEMENTATION_SUMMARY.md), which was run with explicit flags on the 4 x 4 preset."""
    def resolved(argv):
        return cli_run.resolve_new(cli_parser.build_parser().parse_args(argv)).cfg
    row4 = resolved(["--model", "rmc", "--preset", "curriculum", "--num-objects", "8",
                     "--num-features", "16", "--curriculum",
                     "3x1:10000@0.9,3x4:10000@0.9,4x4:10000@0.9,4x16:10000@0.9,6x16:20000@0.8,"
                     "8x16", "--mem-slots", "8", "--num-heads", "2", "--steps", "1000000",
                     "--lr", "3e-4", "--lr-decay-steps", "1000000", "--time-budget", "none",
                     "--eval-every", "2000", "--eval-size", "5000", "--out", str(tmp_path / "a")])
    preset = resolved(["--preset", "curriculum8x16", "--out", str(tmp_path / "b")])
    assert preset.models == ("rmc",)                     # only the RMC unless --model says so
    # the RelationalRNN's own rate aside, which an RMC run does not use
    assert preset.train.lr_by_model == {"rrnn": 1.5e-4}
    assert preset.replace(preset="curriculum",
                          train=preset.train.replace(lr_by_model=None)) == row4
    both = resolved(["--preset", "curriculum8x16", "--model", "rmc,lstm",
                     "--out", str(tmp_path / "c")])
    assert both.models == ("rmc", "lstm") and both.model_sizes["lstm"].hidden_size > 0
    assert not any(tmp_path.iterdir())                   # resolving writes nothing


def test_lr_by_model_sets_the_rates_of_the_named_models(tmp_path, monkeypatch):
    set_preset_lr_by_model(monkeypatch, {"lstm": 2e-3})
    out = tmp_path / "p"
    assert run_cli(["--model", "lstm", "--steps", 2, "--out", out, *LSTM, "--preset", "quick",
                    "--lr", "5e-4", "--lr-by-model", "lstm=1e-3"]) == 0
    assert load_checkpoint(out / "lstm")[1]["optimizer"]["schedule"]["initial_lr"] == 1e-3
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["lr"] == 5e-4 and cfg["lr_by_model"] == {"lstm": 1e-3}
    assert cli_parser._lr_by_model("lstm=1e-3, RMC=7e-4") == {"lstm": 1e-3, "rmc": 7e-4}
    out2 = tmp_path / "q"                  # 'none' drops the preset's per-model rate
    assert run_cli(["--model", "lstm", "--steps", 2, "--out", out2, *LSTM, "--preset", "quick",
                    "--lr-by-model", "none"]) == 0
    assert json.loads((out2 / "run_config.json").read_text())["lr_by_model"] is None
    assert load_checkpoint(out2 / "lstm")[1]["optimizer"]["schedule"]["initial_lr"] == \
        PRESETS["quick"].train.lr


@pytest.mark.parametrize("value", ["lstm", "gru=1e-3", "lstm=0", "lstm=x", "lstm=1e-3,",
                                   "rmc=1e-3"])
def test_bad_lr_by_model_is_refused(tmp_path, capsys, value):
    out = tmp_path / "p"
    assert run_cli(["--model", "lstm", "--steps", 2, "--out", out, *LSTM,
                    "--lr-by-model", value]) == 2
    assert "--lr-by-model" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Branches: a new run from another run's checkpoints, with other optimisation settings
# --------------------------------------------------------------------------------------------


def test_branch_without_changes_ends_exactly_where_the_continued_run_ends(tmp_path):
    # A branch carries the weights, Adam moments and step count, weight average, data stream
    # and curriculum position: with nothing changed it is the parent run, resumed elsewhere.
    parent, full, branch = tmp_path / "parent", tmp_path / "full", tmp_path / "branch"
    argv = ["--model", "rmc,lstm", *TINY, "--ema-decay", "0.9"]
    assert run_cli([*argv, "--steps", 16, "--out", full]) == 0
    assert run_cli([*argv, "--steps", 10, "--out", parent]) == 0
    before = snapshot(parent)
    assert run_cli(["--branch-from", parent, "--out", branch, "--steps", 16, *QUIET]) == 0
    assert snapshot(parent) == before                    # the parent run is only read
    for kind in ("rmc", "lstm"):
        p_full, info_full = params_of(full / kind)
        p_branch, info_branch = params_of(branch / kind)
        assert info_branch["step"] == 16
        for name in p_full:
            assert np.array_equal(p_full[name], p_branch[name]), f"{kind} {name}"
        for moment in ("m", "v"):
            for name, value in info_full["optimizer"][moment].items():
                assert np.array_equal(value, info_branch["optimizer"][moment][name])

        def held_out(folder):
            return [(e["step"], e["phase"], e["heldout_acc"], e["heldout_loss"])
                    for e in eval_history(folder / kind)]
        assert held_out(branch) == held_out(full)
        events = [e["event"] for e in strict_json_lines(branch / kind / "metrics.jsonl")]
        assert events.count("branch") == 1
    cfg = read_json(branch / "run_config.json")
    assert cfg["branched_from"]["steps"] == {"rmc": 10, "lstm": 10}
    assert cfg["branched_from"]["changed"] == {}


def test_branch_trains_on_with_its_own_rate_and_batch_and_resumes(tmp_path, capsys):
    parent, branch = tmp_path / "parent", tmp_path / "branch"
    assert run_cli(["--model", "lstm", "--steps", 10, "--out", parent, *LSTM]) == 0
    capsys.readouterr()
    # --steps equal to the parent's: nothing is trained, but the branch exists and resumes
    # from the parent's step (its checkpoint was written when the branch was made).
    assert run_cli(["--branch-from", parent, "--out", branch, "--steps", 10, "--lr", "3e-3",
                    "--lr-schedule", "exponential", "--lr-decay-rate", "1", "--batch-size", 4,
                    *QUIET]) == 0
    out = capsys.readouterr().out
    assert "branched from" in out and "--lr" in out and "--batch-size 8 -> 4" in out
    first = load_checkpoint(branch / "lstm", averaged=False)[1]
    assert first["step"] == 10 and first["optimizer"]["t"] == 10
    # Its optimizer entry is the branch's own (rate and schedule), not the parent's.
    assert first["optimizer"]["schedule"]["initial_lr"] == 3e-3
    assert first["optimizer"]["schedule"]["type"] == "ExponentialDecay"
    parent_info = load_checkpoint(parent / "lstm", averaged=False)[1]
    for moment in ("m", "v"):
        for name, value in parent_info["optimizer"][moment].items():
            assert np.array_equal(first["optimizer"][moment][name], value)
    assert run_cli(["--resume", branch, "--steps", 15, *QUIET]) == 0
    lines = strict_json_lines(branch / "lstm" / "metrics.jsonl")
    assert [e["step"] for e in lines if e["event"] == "resume"] == [10]
    evals = [e for e in lines if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 5, 10, 15]       # the parent's history, then on
    assert evals[-1]["lr"] == 3e-3 and evals[1]["lr"] != 3e-3
    model, info = load_checkpoint(branch / "lstm", averaged=False)
    assert info["step"] == 15 and info["optimizer"]["t"] == 15
    assert info["run_config"]["batch_size"] == 4 and info["run_config"]["lr"] == 3e-3
    assert load_checkpoint(parent / "lstm")[1]["step"] == 10


@pytest.mark.parametrize("extra, message", [
    (["--num-objects", "3"], "cannot be combined with --num-objects"),
    (["--hidden-size", "16"], "cannot be combined with --hidden-size"),
    (["--seed", "3"], "cannot be combined with --seed"),
    (["--preset", "paper"], "cannot be combined with --preset"),
    (["--no-out"], "needs --out"),
    (["--resume", "PARENT"], "exclude each other"),
    (["--model", "rmc"], "--model rmc is not part of the run"),
    (["--steps", "5"], "beyond --steps 5"),
    (["--lr-by-model", "rrnn=1e-3"], "sets a rate for rrnn, which the run does not train"),
])
def test_bad_branches_are_refused_before_writing_anything(tmp_path, capsys, extra, message):
    parent, branch = tmp_path / "parent", tmp_path / "branch"
    assert run_cli(["--model", "lstm", "--steps", 10, "--out", parent, *LSTM]) == 0
    before = snapshot(parent)
    capsys.readouterr()
    argv = ["--branch-from", parent, *QUIET]
    if extra != ["--no-out"]:
        argv += ["--out", branch]
        argv += [parent if a == "PARENT" else a for a in extra]
    assert run_cli(argv) == 2
    assert message in capsys.readouterr().err
    assert not branch.exists() and snapshot(parent) == before


def test_branch_refuses_an_out_folder_holding_a_run_and_a_run_without_checkpoints(tmp_path,
                                                                               capsys):
    parent = tmp_path / "parent"
    assert run_cli(["--model", "lstm", "--steps", 10, "--out", parent, *LSTM]) == 0
    assert run_cli(["--branch-from", parent, "--out", parent, *QUIET]) == 2
    assert "already holds a run" in capsys.readouterr().err
    (parent / "lstm" / "checkpoint.npz").unlink()
    assert run_cli(["--branch-from", parent, "--out", tmp_path / "b", *QUIET]) == 2
    assert "no checkpoint there to branch from" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# --evaluate: held-out metrics of a run's checkpoints, nothing written
# --------------------------------------------------------------------------------------------


def folder_state(folder):
    """Every file under ``folder`` with its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def evaluate_rows(stdout):
    """The table rows of ``--evaluate``: (model, step, weights, acc, loss, per-n values)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model")) + 2
    rows = []
    for line in lines[start:]:
        # columns are 2+ spaces apart: model, step, wall time, weights, acc, loss, per n
        kind, step, _, weights, acc, loss, per_n = re.split(r"\s{2,}", line)
        rows.append((kind, int(step), weights, float(acc), float(loss),
                     [float(a) for a in per_n.split()]))
    return rows


def test_evaluate_reproduces_the_last_evaluation_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["--model", "rmc,lstm", "--steps", 12, "--out", out, *TINY,
                    "--ema-decay", "0.9"]) == 0
    before = folder_state(out)
    capsys.readouterr()
    assert run_cli(["--evaluate", out]) == 0
    stdout = capsys.readouterr().out
    assert "64 examples of the full 4 x 4 task" in stdout and "own held-out set" in stdout
    rows = evaluate_rows(stdout)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("rmc", 12, "averaged"), ("rmc", 12, "last"), ("lstm", 12, "averaged"),
        ("lstm", 12, "last")]
    for kind in ("rmc", "lstm"):
        last_eval = [e for e in strict_json_lines(out / kind / "metrics.jsonl")
                     if e["event"] == "eval"][-1]
        averaged, last = [r for r in rows if r[0] == kind]
        assert averaged[3] == pytest.approx(last_eval["heldout_acc"], abs=5e-4)
        assert averaged[4] == pytest.approx(last_eval["heldout_loss"], abs=5e-4)
        assert last[3] == pytest.approx(last_eval["last_iterate_acc"], abs=5e-4)
        assert averaged[5] == pytest.approx(last_eval["acc_per_n"], abs=5e-4)
    assert folder_state(out) == before


def test_evaluate_on_a_fresh_held_out_set_and_one_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["--model", "lstm", "--steps", 6, "--out", out, *LSTM,
                    "--ema-decay", "none"]) == 0
    capsys.readouterr()
    assert run_cli(["--evaluate", out, "--model", "lstm", "--eval-size", 300,
                    "--eval-seed", 5]) == 0
    stdout = capsys.readouterr().out
    assert "300 examples" in stdout and "seed 5" in stdout and "own held-out set" not in stdout
    (row,) = evaluate_rows(stdout)                      # no average kept: the last iterate only
    assert row[:3] == ("lstm", 6, "last")
    model, _ = load_checkpoint(out / "lstm")
    expected = evaluation.evaluate(model, nf.make_eval_set(5, 300, 4, 4, dtype=np.float32), 4)
    assert row[3] == pytest.approx(expected["heldout_acc"], abs=5e-4)


def test_evaluate_reports_broken_weights_with_exit_status_1(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_cli(["--model", "lstm", "--steps", 6, "--out", out, *LSTM]) == 0
    real = evaluation.evaluate
    monkeypatch.setattr(cli, "evaluate",
                        lambda *a, **k: dict(real(*a, **k), heldout_loss=float("nan")))
    capsys.readouterr()
    assert run_cli(["--evaluate", out]) == 1
    assert "NaN or Inf" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--lr", "1e-3"], "cannot be combined with --lr"),
    (["--workers", "2"], "cannot be combined with --workers"),
    (["--resume", "X"], "excludes --resume and --branch-from"),
    (["--model", "rrnn"], "--model rrnn is not part of the run"),
])
def test_bad_evaluate_arguments_are_refused(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert run_cli(["--model", "lstm", "--steps", 2, "--out", out, *LSTM]) == 0
    before = folder_state(out)
    capsys.readouterr()
    assert run_cli(["--evaluate", out, *extra]) == 2
    assert message in capsys.readouterr().err
    assert folder_state(out) == before


def test_evaluate_refuses_a_folder_without_a_run_or_checkpoints(tmp_path, capsys):
    assert run_cli(["--evaluate", tmp_path / "none"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert run_cli(["--evaluate", tmp_path]) == 2
    assert "no run_config.json there, so no run to evaluate" in capsys.readouterr().err
    out = tmp_path / "run"
    assert run_cli(["--model", "lstm", "--steps", 2, "--out", out, *LSTM]) == 0
    (out / "lstm" / "checkpoint.npz").unlink()
    capsys.readouterr()
    assert run_cli(["--evaluate", out]) == 2
    assert "no checkpoint of lstm there yet" in capsys.readouterr().err


def test_evaluate_refuses_a_checkpoint_of_another_run(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(["--model", "lstm", "--steps", 2, "--out", a, *LSTM]) == 0
    assert run_cli(["--model", "lstm", "--steps", 2, "--out", b, *LSTM,
                    "--hidden-size", 12]) == 0
    (a / "lstm" / "checkpoint.npz").write_bytes((b / "lstm" / "checkpoint.npz").read_bytes())
    capsys.readouterr()
    assert run_cli(["--evaluate", a]) == 2
    assert "belongs to another run (it differs in model_sizes)" in capsys.readouterr().err
