"""Run folders written before the application's redesign still evaluate, resume and branch.

``tests/data/run_v1`` was written by the single-module ``training.py`` (its README gives the
command); these tests work on copies of it.
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import nth_farthest as nf
from relational_rnn import cli
from relational_rnn.checkpoint import load_checkpoint
from relational_rnn.evaluation import evaluate
from relational_rnn.run_folder import read_metrics, read_run_config

RUN_V1 = Path(__file__).parent / "data" / "run_v1"
KINDS = ("rmc", "lstm", "rrnn")


@pytest.fixture
def run_v1(tmp_path):
    copy = tmp_path / "run_v1"
    shutil.copytree(RUN_V1, copy)
    return copy


def last_eval(folder, kind):
    return [e for e in read_metrics(folder / kind / "metrics.jsonl") if e["event"] == "eval"][-1]


def test_the_old_run_config_reads_into_the_typed_config_and_writes_back_the_same_json(run_v1):
    from relational_rnn.run_folder import config_json
    cfg = read_run_config(str(run_v1))
    assert cfg.models == KINDS and cfg.train.steps == 40 and cfg.sizes("rmc").mem_slots == 2
    assert config_json(cfg) == json.loads((run_v1 / "run_config.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_each_old_checkpoint_evaluates_to_its_recorded_figures(run_v1, kind):
    cfg = read_run_config(str(run_v1))
    t = cfg.train
    eval_set = nf.make_eval_set(t.eval_seed, t.eval_size, t.num_objects, t.num_features,
                                dtype=t.dtype)
    recorded = last_eval(run_v1, kind)
    model, info = load_checkpoint(run_v1 / kind)                 # the averaged weights
    assert info["weights"] == "averaged" and info["step"] == recorded["step"] == 40
    measured = evaluate(model, eval_set, t.num_objects)
    assert measured["heldout_acc"] == recorded["heldout_acc"]
    assert measured["heldout_loss"] == pytest.approx(recorded["heldout_loss"], rel=1e-5)
    model, _ = load_checkpoint(run_v1 / kind, averaged=False)  # the last iterate
    assert evaluate(model, eval_set, t.num_objects)["heldout_acc"] == \
        recorded["last_iterate_acc"]


def test_evaluate_prints_the_recorded_accuracy_of_every_model(run_v1, capsys):
    assert cli.main(["--evaluate", str(run_v1)]) == 0
    rows = {tuple(line.split()[:4:3]): line.split()[4] for line in
            capsys.readouterr().out.splitlines() if line.split()[:1] in (["rmc"], ["lstm"],
                                                                         ["rrnn"])}
    for kind in KINDS:
        assert rows[(kind, "averaged")] == f"{last_eval(run_v1, kind)['heldout_acc']:.3f}"


def _comparable(model, name: str, value: np.ndarray) -> np.ndarray:
    """The entries of parameter ``name`` that two runs of different code can be compared on.

    Left out: the key part of an attention block's LayerNorm bias (``...attn0.ln_b``).  Adding
    one vector to every key adds a constant to each query's logits, which the softmax ignores,
    so the gradient of those entries is zero up to rounding; Adam, which divides a gradient by
    its own size, moves them by up to lr a step along that rounding noise.  Any change in the
    order of the float operations of the backward pass (a faster one, say) changes their path,
    and they have no effect on the model's output.
    """
    if not re.search(r"attn\d+\.ln_b$", name):
        return value
    attn = model
    for part in name.split(".")[:-1]:
        attn = attn.children[part]
    keep = np.ones(value.shape, bool)
    for h in range(attn.num_heads):
        start = h * attn.qkv_size + attn.key_size
        keep[start:start + attn.key_size] = False
    return value[keep]


def test_an_old_run_resumes_to_the_parameters_of_an_uninterrupted_new_run(run_v1, tmp_path):
    before = json.loads((run_v1 / "run_config.json").read_text())
    assert cli.main(["--resume", str(run_v1), "--steps", "60", "--no-progress",
                     "--no-plots"]) == 0
    after = json.loads((run_v1 / "run_config.json").read_text())
    assert after == dict(before, steps=60, commands=after["commands"])
    assert after["commands"][:1] == before["commands"] and len(after["commands"]) == 2
    # the same run made in one go by today's code, from the command that made run_v1
    fresh = tmp_path / "fresh"
    argv = before["commands"][0].split()[2:]
    argv[argv.index("--out") + 1] = str(fresh)
    argv[argv.index("--steps") + 1] = "60"
    # run_v1's RelationalRNN predates its options, its full-task rate and its own schedule
    # length, which the preset sets since: the model's default data flow, one rate and one
    # length, as run_v1 trained it
    argv += ["--memory-input", "hidden", "--memory-readout", "mean",
             "--full-task-lr-by-model", "none", "--lr-decay-steps-by-model", "none"]
    assert cli.main(argv) == 0
    for kind in KINDS:
        resumed, _ = load_checkpoint(run_v1 / kind, averaged=False)
        whole, _ = load_checkpoint(fresh / kind, averaged=False)
        for name, p in whole.parameters().items():
            # bit-identical with the code and machine that wrote run_v1; float rounding with
            # other code or on another CPU
            np.testing.assert_allclose(_comparable(resumed, name, resumed.parameters()[name]),
                                       _comparable(whole, name, p), rtol=1e-3, atol=1e-5,
                                       err_msg=f"{kind} {name}")
        events = [e["event"] for e in read_metrics(run_v1 / kind / "metrics.jsonl")]
        assert events.count("resume") == 1 and last_eval(run_v1, kind)["step"] == 60


def test_an_old_run_branches(run_v1, tmp_path):
    branch = tmp_path / "branch"
    assert cli.main(["--branch-from", str(run_v1), "--out", str(branch), "--lr", "1e-3",
                     "--steps", "50", "--no-progress", "--no-plots"]) == 0
    for kind in KINDS:
        events = [e["event"] for e in read_metrics(branch / kind / "metrics.jsonl")]
        assert "branch" in events and last_eval(branch, kind)["step"] == 50
    assert read_run_config(str(branch)).branched_from["changed"]["lr"] == [6e-4, 1e-3]
