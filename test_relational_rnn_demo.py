"""How the memory of a RelationalRNN evolves over one sequence: a readable demo, and its tests.

Run it::

    python test_relational_rnn_demo.py                          # small models, trained here
    python test_relational_rnn_demo.py --checkpoint runs/quick/rrnn --out figures
    python -m pytest -q test_relational_rnn_demo.py             # the test_ functions below

Without ``--checkpoint`` it builds a small RelationalRNN classifier (LSTM + relational memory)
and an LSTM classifier of the same hidden size, trains both for a few hundred Adam steps on an
easy N-th Farthest setting (4 objects x 1 feature, in the 4 x 4 layout), and analyses one
held-out example.  With ``--checkpoint`` (a checkpoint of ``python nth_farthest.py``, any model
kind) it analyses the trained model on an example of its run's held-out set and writes an
attention heatmap PNG (RMC and RelationalRNN).

This file is the command line and its tests.  The tracing and the analysis are
:mod:`relational_rnn.memory_trace`; the demo's models and their training,
:mod:`relational_rnn.demo_training`; the printout, :mod:`relational_rnn.memory_report`.
Shape letters: T time steps, N memory slots, d slot width, H hidden units, I input width.
"""
from __future__ import annotations

import os
import sys

import argparse
import dataclasses
import math
import time

import numpy as np

import nth_farthest as nf
from lstm_baseline import LSTM, LSTMClassifier
from relational_memory import RelationalMemory, RMCClassifier
from relational_rnn import cli, plots
from relational_rnn.checkpoint import CheckpointError, load_checkpoint
from relational_rnn.cli_parser import int_at_least
from relational_rnn.evaluation import evaluate
from relational_rnn.memory_report import (column, describe_checkpoint, describe_demo, header,
                                          print_report, render_attention, render_gates,
                                          render_phases, render_slots)
from relational_rnn.demo_training import (DEMO_BATCH, DEMO_LR, DEMO_SIZES, DEMO_TASK,
                                          build_demo_models, train_classifier)
from relational_rnn.memory_trace import (CLASSIFIERS, Example, Trace, analyse, attention_entropy,
                                         gate_openness, input_attention, output_stats,
                                         parameter_groups, phase_slices, pick_example,
                                         recurrent_parameters, slot_norms, slot_specialisation,
                                         state_norms, state_phase_stats, subset, trace_model)
from relational_rnn.presets import PRESETS
from relational_rnn.registry import KINDS, MODEL_KINDS, build_model
from relational_rnn.run_folder import CHECKPOINT_NAME
from relational_rnn.threads import limit_blas_threads
from relational_rnn_cell import RelationalRNN, RelationalRNNClassifier

PROG = "test_relational_rnn_demo.py"
DEMO_STEPS = 300                 # default of --steps
DEMO_EVAL_SEED, DEMO_EVAL_SIZE = 20180606, 500
ACCURACY_EXAMPLES = 500          # held-out examples used for the accuracy lines
HEATMAP_NAME = "demo_attention_heatmap.png"
# With --checkpoint, the kind each model is compared with (see _counterpart).
COUNTERPART = {"rrnn": "lstm", "rmc": "lstm", "lstm": "rrnn"}


class DemoError(ValueError):
    """Bad input (missing or unreadable checkpoint, bad option value): message, exit status 2."""


class OutputError(OSError):
    """An output file that cannot be written: message, exit status 1."""


# ============================================================================================
# Accuracy and heatmaps
# ============================================================================================


def accuracy(model, eval_set: nf.EvalSet, num_objects: int) -> float:
    """Held-out accuracy, through the trainer's :func:`relational_rnn.evaluation.evaluate`."""
    return evaluate(model, eval_set, num_objects)["heldout_acc"]


def write_heatmaps(trace: Trace, out_dir: str, example: Example, title: str) -> list[str]:
    """The attention heatmap of ``trace`` (one PNG per attention block) through
    :func:`plots.plot_attention_heatmap`; returns the paths."""
    blocks = trace.attention.shape[1]
    paths = []
    for b in range(blocks):
        name = HEATMAP_NAME if blocks == 1 else HEATMAP_NAME.replace(".png", f"_block{b}.png")
        path = os.path.join(out_dir, name)
        try:
            paths.append(plots.plot_attention_heatmap(
                trace.attention[:, b], path, row_objects=example.ids,
                title=title + (f" (block {b} of {blocks})" if blocks > 1 else "")
                + "\nrows: memory-slot queries; columns: keys = memory slots s0.. and the input "
                  "row 'in'"))
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return paths


# ============================================================================================
# Command line
# ============================================================================================


_nonneg_int = int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Show how the memory of a RelationalRNN (LSTM + relational memory) evolves over one "
            "N-th Farthest sequence:\nstate norms per phase, per-slot activity and "
            "specialisation, gate openness, attention entropy per head,\nand a comparison of "
            "parameters and outputs with an LSTM."),
        epilog=(
            "without --checkpoint: builds a RelationalRNN classifier (hidden 32, 4 slots x 32, 2 "
            "heads) and an LSTM\n  classifier of the same hidden size, trains both for --steps "
            f"Adam steps (batch {DEMO_BATCH}, lr {DEMO_LR:g}) on\n  N-th Farthest with 4 objects x "
            "1 feature in the 4 x 4 layout, and analyses one held-out example\n"
            "  (about 5-10 s on 2 cores).\n"
            "with --checkpoint: analyses a model trained by 'python nth_farthest.py' (rmc, lstm "
            "or rrnn) on an\n  example of its run's held-out set, compares it with the other "
            "trained models of the same run\n  folder (without a trained LSTM there, with an "
            "untrained LSTM of the same hidden size; for an LSTM,\n  with a RelationalRNN), and "
            f"writes the attention heatmap {HEATMAP_NAME}\n  (per head and step; RMC and "
            "RelationalRNN only).  Takes a few seconds for the quick preset's\n  models, up to "
            "about a minute for the paper's.\n\n"
            "exit status: 0 success, 2 bad arguments or an unreadable checkpoint, 1 a file "
            "could not be written.\n\n"
            "examples:\n"
            f"  python {PROG}\n"
            f"  python {PROG} --seed 3 --steps 0          # untrained models\n"
            "  python nth_farthest.py --preset quick --model all --out runs/quick\n"
            f"  python {PROG} --checkpoint runs/quick/rrnn --example 5 --out figures"))
    p.add_argument("--checkpoint", metavar="PATH",
                   help="checkpoint.npz written by nth_farthest.py, or the folder holding it "
                        "(e.g. runs/quick/rrnn)")
    p.add_argument("--out", metavar="DIR",
                   help="folder for the attention heatmap (created if needed); default: the "
                        "checkpoint's folder; without --checkpoint no file is written unless "
                        "--out is given")
    p.add_argument("--seed", type=_nonneg_int, default=0, metavar="S",
                   help="seed of the demo models' initial parameters and training data (with "
                        "--checkpoint: of the untrained comparison model); default 0")
    p.add_argument("--steps", type=_nonneg_int, default=None, metavar="N",
                   help=f"training steps of the demo models (default {DEMO_STEPS}; 0 = analyse "
                        "them untrained); not with --checkpoint")
    p.add_argument("--example", type=_nonneg_int, default=0, metavar="I",
                   help="index of the analysed example in the held-out set (default 0, the "
                        "example of the trainer's own heatmap)")
    return p


def _resolve_out(args, default: str | None) -> str | None:
    """The output folder (created), or None; DemoError if unusable."""
    out = args.out if args.out is not None else default
    if out is None:
        return None
    if os.path.exists(out) and not os.path.isdir(out):
        raise DemoError(f"--out {out} exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"cannot create the output folder {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        hint = "" if args.out is not None else " (the checkpoint's folder); choose one with --out"
        raise DemoError(f"cannot write to the output folder {out}{hint}")
    return out


def _check_example(index: int, size: int) -> None:
    if index >= size:
        raise DemoError(f"--example must lie in [0, {size - 1}] (the held-out set has {size} "
                        f"examples), got {index}")


def run_demo(args, out=print) -> list[str]:
    """The demo without a checkpoint; returns the files written."""
    steps = DEMO_STEPS if args.steps is None else args.steps
    _check_example(args.example, DEMO_EVAL_SIZE)
    out_dir = _resolve_out(args, None)
    K, F = DEMO_TASK["num_objects"], DEMO_TASK["num_features"]
    k, f = DEMO_TASK["active_objects"], DEMO_TASK["active_features"]
    rrnn, lstm = build_demo_models(args.seed)
    out(describe_demo(rrnn, lstm))
    eval_set = nf.make_eval_set(DEMO_EVAL_SEED, DEMO_EVAL_SIZE, K, F, active_objects=k,
                                active_features=f)
    accs = {}
    for label, model in (("RelationalRNN", rrnn), ("LSTM", lstm)):
        if steps:
            info = train_classifier(model, steps=steps, seed=args.seed)
            out(header("training", f"{label:<13} {steps} Adam steps of batch {DEMO_BATCH}, lr "
                                   f"{DEMO_LR:g}, seed {args.seed}: {info['seconds']:.1f} s, "
                                   f"final training loss {info['loss']:.3f}"))
        accs[label] = accuracy(model, subset(eval_set, ACCURACY_EXAMPLES), k)
    if not steps:
        out(header("training", "none (--steps 0): the models are analysed at their "
                               "initialisation"))
    out(header("held-out", f"accuracy on {min(ACCURACY_EXAMPLES, DEMO_EVAL_SIZE)} examples "
                           f"(eval seed {DEMO_EVAL_SEED}): RelationalRNN "
                           f"{accs['RelationalRNN']:.3f}, LSTM {accs['LSTM']:.3f} (chance "
                           f"{1 / k:.3f})"))
    example = pick_example(eval_set, args.example, K, F,
                           f"held-out example {args.example} (eval seed {DEMO_EVAL_SEED})")
    state = "trained" if steps else "untrained"
    columns = [column(f"RelationalRNN ({state})", rrnn, example, accs["RelationalRNN"]),
               column(f"LSTM ({state})", lstm, example, accs["LSTM"])]
    print_report(columns[0], columns, example, out)
    written = []
    if out_dir is not None:
        written = write_heatmaps(columns[0]["trace"], out_dir, example,
                                 f"RelationalRNN demo ({state}, {steps} steps), attention on "
                                 f"held-out example {args.example} (m={example.m}, n={example.n}: "
                                 f"answer {example.label})")
    return written


def _load(path: str):
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise DemoError(str(exc)) from None


def _siblings(info: dict, task: tuple) -> list[tuple[str, object, dict]]:
    """Trained models of the other kinds in the same run folder (DIR/<kind>/checkpoint.npz)."""
    model_dir = os.path.dirname(os.path.abspath(info["path"]))
    if os.path.basename(model_dir) != info["kind"]:
        return []
    found = []
    for kind in MODEL_KINDS:
        path = os.path.join(os.path.dirname(model_dir), kind, CHECKPOINT_NAME)
        if kind == info["kind"] or not os.path.isfile(path):
            continue
        try:
            model, other = load_checkpoint(path, expect_kind=kind)
        except CheckpointError:
            continue
        cfg = other.get("run_config") or {}
        if (cfg.get("num_objects"), cfg.get("num_features")) == task:
            found.append((kind, model, other))
    return found


def _counterpart(kind: str, model, K: int, F: int, seed: int):
    """An untrained model to compare with, used when the run folder holds no trained model of
    kind ``COUNTERPART[kind]``: an LSTM of the same hidden size (for an RMC: of its state size
    N*d), or for an LSTM a RelationalRNN of its hidden size with the quick preset's memory.
    Returns (label, model)."""
    rng = np.random.default_rng(seed)
    mlp = list(model.mlp_hidden)
    if kind == "lstm":
        sizes = dataclasses.replace(PRESETS["quick"].models["rrnn"],
                                    hidden_size=model.hidden_size, mlp_hidden=tuple(mlp))
        other = build_model("rrnn", sizes, K, F, dtype=model.dtype, rng=rng)
        return f"RelationalRNN H={model.hidden_size} (untrained)", other
    hidden = model.hidden_size if kind == "rrnn" else model.core.mem_slots * model.core.mem_size
    other = build_model("lstm", {"hidden_size": hidden, "mlp_hidden": mlp}, K, F,
                                 dtype=model.dtype, rng=rng)
    return f"LSTM H={hidden} (untrained)", other


def run_checkpoint(args, out=print) -> list[str]:
    """The analysis of a trained checkpoint; returns the files written."""
    if args.steps is not None:
        raise DemoError("--steps trains the demo models and cannot be combined with --checkpoint")
    model, info = _load(args.checkpoint)
    kind = info["kind"]
    cfg = info.get("run_config") or {}
    missing = [k for k in ("num_objects", "num_features", "eval_seed", "eval_size")
               if not isinstance(cfg.get(k), int)]
    if missing:
        raise DemoError(f"{info['path']} has no run configuration with {', '.join(missing)}; "
                        "it was not written by nth_farthest.py")
    K, F = cfg["num_objects"], cfg["num_features"]
    _check_example(args.example, cfg["eval_size"])
    out_dir = _resolve_out(args, os.path.dirname(os.path.abspath(info["path"])))
    eval_set = nf.make_eval_set(cfg["eval_seed"], cfg["eval_size"], K, F,
                                dtype=np.dtype(info["dtype"]))
    acc_set = subset(eval_set, ACCURACY_EXAMPLES)
    label = KINDS[kind].label
    out(describe_checkpoint(label, model, info))
    example = pick_example(eval_set, args.example, K, F,
                           f"held-out example {args.example} of the run (eval seed "
                           f"{cfg['eval_seed']})")
    main_col = column(f"{label} (step {info['step']})", model, example, accuracy(model, acc_set, K))
    columns = [main_col]
    siblings = _siblings(info, (K, F))
    if not any(other_kind == COUNTERPART[kind] for other_kind, _, _ in siblings):
        cmp_label, cmp_model = _counterpart(kind, model, K, F, args.seed)
        columns.append(column(cmp_label, cmp_model, example, accuracy(cmp_model, acc_set, K)))
    for other_kind, other, other_info in siblings:
        columns.append(column(f"{KINDS[other_kind].label} of the run (step {other_info['step']})",
                              other, example, accuracy(other, acc_set, K)))
    out(header("held-out", f"accuracy on the first {len(acc_set)} held-out examples:\n"
                           + "\n".join(f"  {c['label']}: {c['accuracy']:.3f}" for c in columns)))
    print_report(main_col, columns, example, out)
    if main_col["trace"].attention is None:
        out(f"\nno heatmap: attention does not exist for an {label}.")
        return []
    return write_heatmaps(main_col["trace"], out_dir, example,
                          f"{label} at step {info['step']}: attention on held-out example "
                          f"{args.example} (m={example.m}, n={example.n}: answer {example.label})")


def main(argv=None) -> int:
    """Run the demo (see ``--help``); returns the exit status."""
    t0 = time.perf_counter()
    args = build_parser().parse_args(argv)
    limit_blas_threads()              # small matrices: one BLAS thread is fastest
    try:
        try:
            written = run_checkpoint(args) if args.checkpoint is not None else run_demo(args)
        except DemoError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        except OutputError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 1
        for path in written:
            print(f"\nattention heatmap written to {path}")
        print(f"\nfinished in {time.perf_counter() - t0:.1f} s", flush=True)
    except BrokenPipeError:
        # The reader of stdout went away (e.g. '| head'): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


# ============================================================================================
# Tests (collected by pytest): tiny models, no or only a few training steps
# ============================================================================================

# Tiny sizes: T = 7 steps, input width 5, hidden 6, N = 3 slots of d = 8 (2 heads x 4).
T_, I_, H_, N_, D_, HEADS_ = 7, 5, 6, 3, 8, 2


def _tiny_rnn(gate_style="unit", num_blocks=1, seed=0):
    return RelationalRNN(I_, H_, 4, num_slots=N_, slot_size=D_, num_heads=HEADS_,
                         num_blocks=num_blocks, gate_style=gate_style,
                         rng=np.random.default_rng(seed))


def _tiny_classifiers(seed=0):
    """One tiny float64 classifier of each kind for a 3-object x 2-feature task (width 11)."""
    rng = np.random.default_rng(seed)
    width = nf.task_width(3, 2)
    return {"rrnn": RelationalRNNClassifier(width, 3, hidden_size=H_, num_slots=N_,
                                            slot_size=D_, num_heads=HEADS_, mlp_hidden=[5],
                                            rng=rng),
            "rmc": RMCClassifier(width, 3, mem_slots=N_, head_size=D_ // HEADS_,
                                 num_heads=HEADS_, mlp_hidden=[5], rng=rng),
            "lstm": LSTMClassifier(width, H_, 3, mlp_hidden=[5], rng=rng)}


def _tiny_example(seed=1):
    x, _, _ = nf.make_batch(np.random.default_rng(seed), 1, 3, 2, dtype=np.float64)
    return x[0]                                                # (3, 11)


def _all_traces():
    x = np.random.default_rng(2).standard_normal((T_, I_))
    traces = {"rrnn bare": trace_model(_tiny_rnn(), x)}
    for kind, model in _tiny_classifiers().items():
        traces[kind] = trace_model(model, _tiny_example())
    return traces


def _walk(value, path="result"):
    """Yield (path, array) for every number in a nested analysis result."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    elif value is not None and not isinstance(value, str):
        yield path, np.asarray(value, dtype=np.float64)


# No module-level pytest import and no decorators: the demo must run without pytest installed.


def test_trace_and_analysis_have_the_documented_shapes():
    for gate_style, num_blocks in (("unit", 1), ("memory", 2), (None, 1)):
        _check_trace_shapes(gate_style, num_blocks)


def _check_trace_shapes(gate_style, num_blocks):
    rnn = _tiny_rnn(gate_style, num_blocks)
    x = np.random.default_rng(3).standard_normal((T_, I_))
    trace = trace_model(rnn, x)
    assert trace.kind == "rrnn" and trace.steps == T_ and trace.logits is None
    assert trace.outputs.shape == (T_, 4)
    assert trace.memory.shape == (T_, N_, D_) and trace.memory0.shape == (N_, D_)
    assert trace.attention.shape == (T_, num_blocks, HEADS_, N_ + 1, N_ + 1)
    G = {"unit": D_, "memory": 1, None: None}[gate_style]
    if G is None:
        assert trace.gates == {}
    else:
        assert {g.shape for g in trace.gates.values()} == {(T_, N_, G)}
    # The trace is the model's own forward pass.
    outputs, h_T, _, memory_T = rnn.forward(x[None], return_state=True)
    np.testing.assert_array_equal(trace.outputs, outputs[0])
    np.testing.assert_array_equal(trace.memory[-1], memory_T[0])
    np.testing.assert_array_equal(trace.states["LSTM hidden h"][1][-1], h_T[0])
    np.testing.assert_array_equal(trace.memory0, np.eye(N_, D_))

    r = analyse(trace)
    assert r["slot_norms"].shape == (T_, N_) and r["slot_norms0"].shape == (N_,)
    assert r["specialisation"]["cosine"].shape == (N_, N_)
    assert r["entropy"].shape == (T_, num_blocks, HEADS_)
    assert r["input_attention"].shape == (T_, num_blocks, HEADS_, N_)
    for norms, changes, relative in r["norms"].values():
        assert norms.shape == (T_ + 1,) and changes.shape == relative.shape == (T_,)
    for stats in r["gates"].values():
        assert {v.shape for v in stats.values()} == {(T_,)}
    assert [p["phase"] for p in r["phases"]["memory M"]] == ["early", "middle", "late"]


def test_trace_shapes_of_every_classifier_kind():
    x = _tiny_example()
    for kind, model in _tiny_classifiers().items():
        trace = trace_model(model, x)
        assert trace.kind == kind and trace.logits.shape == (3,)
        np.testing.assert_allclose(trace.logits, model.forward(x[None])[0][0])
        width = {"rrnn": H_, "rmc": N_ * D_, "lstm": H_}[kind]
        assert trace.outputs.shape == (3, width)
        if kind == "lstm":
            assert trace.memory is None and trace.attention is None
            assert {g.shape for g in trace.gates.values()} == {(3, H_)}
            assert set(trace.states) == {"LSTM hidden h", "LSTM cell c"}
        else:
            assert trace.attention.shape == (3, 1, HEADS_, N_ + 1, N_ + 1)
            assert trace.memory.shape == (3, N_, D_)


def test_every_analysed_value_is_finite():
    for name, trace in _all_traces().items():
        checked = 0
        for path, value in _walk(analyse(trace)):
            assert np.isfinite(value).all(), f"{name}: {path} = {value}"
            checked += value.size
        assert checked > 20, name


def test_memory_and_states_change_at_every_step():
    for name, trace in _all_traces().items():
        for state, (initial, seq) in trace.states.items():
            _, changes, relative = state_norms(initial, seq)
            assert (changes > 1e-6).all(), (name, state, changes)
            assert ((relative > 0) & (relative <= 2)).all(), (name, state, relative)
        if trace.memory is not None:
            steps = np.concatenate([trace.memory0[None], trace.memory])
            assert all(not np.allclose(a, b) for a, b in zip(steps[:-1], steps[1:])), name


def test_gates_lie_strictly_between_zero_and_one():
    for name, trace in _all_traces().items():
        assert trace.gates, name
        for gate, values in trace.gates.items():
            assert ((values > 0) & (values < 1)).all(), (name, gate)
            stats = gate_openness(values)
            assert (stats["min"] <= stats["mean"]).all() and (stats["mean"] <= stats["max"]).all()


def test_attention_entropy_lies_between_zero_and_log_n_plus_one():
    for name, trace in _all_traces().items():
        if trace.attention is None:
            continue
        np.testing.assert_allclose(trace.attention.sum(axis=-1), 1.0, atol=1e-12)
        r = analyse(trace)
        assert math.isclose(r["max_entropy"], math.log(N_ + 1))
        assert (r["entropy"] >= 0).all() and (r["entropy"] <= math.log(N_ + 1) + 1e-12).all()
        assert ((r["input_attention"] >= 0) & (r["input_attention"] <= 1)).all()


def test_attention_entropy_and_input_weight_on_known_attention():
    N = 4
    uniform = np.full((2, 1, 3, N + 1, N + 1), 1.0 / (N + 1))
    np.testing.assert_allclose(attention_entropy(uniform), math.log(N + 1))
    np.testing.assert_allclose(input_attention(uniform), 1.0 / (N + 1))
    # Every slot attends only to the input row: entropy 0, input weight 1.
    onehot = np.zeros((2, 1, 3, N + 1, N + 1))
    onehot[..., N] = 1.0
    np.testing.assert_array_equal(attention_entropy(onehot), 0.0)
    np.testing.assert_array_equal(input_attention(onehot), 1.0)
    # Half the slots uniform over two keys (ln 2), half one-hot (0); the input row's own query
    # (row N) is ignored even when it is uniform.
    mixed = np.zeros((1, 1, 1, N + 1, N + 1))
    mixed[..., :2, :2] = 0.5
    mixed[..., 2:N, 0] = 1.0
    mixed[..., N, :] = 1.0 / (N + 1)
    np.testing.assert_allclose(attention_entropy(mixed), math.log(2) / 2)


def test_parameter_counts_are_the_sum_of_the_parameter_sizes():
    models = dict(_tiny_classifiers(), bare_rrnn=_tiny_rnn(), bare_rmc=RelationalMemory(
        I_, N_, 4, HEADS_, rng=np.random.default_rng(0)), bare_lstm=LSTM(I_, H_))
    for name, model in models.items():
        groups = parameter_groups(model)
        total = sum(p.size for p in model.parameters().values())
        assert sum(count for _, count in groups) == total == model.num_parameters(), name
        assert len({label for label, _ in groups}) == len(groups), name
        readout = total - recurrent_parameters(model)
        expected = model.readout.num_parameters() if isinstance(model, CLASSIFIERS) else 0
        assert readout == expected, name
    # Hand counts: LSTM 4H(I + H + 1); read-out MLP [H, 5, 3]: (H + 1) 5 + (5 + 1) 3.
    width = nf.task_width(3, 2)
    lstm_groups = dict(parameter_groups(models["lstm"]))
    assert lstm_groups == {"LSTM": 4 * H_ * (width + H_ + 1),
                           "classifier read-out MLP": (H_ + 1) * 5 + 6 * 3}
    rrnn_groups = dict(parameter_groups(models["rrnn"]))
    assert rrnn_groups["LSTM cell"] == 4 * H_ * (width + H_ + 1)
    assert rrnn_groups["memory read-out"] == (D_ + 1) * H_
    assert rrnn_groups["combine [h ; r]"] == (2 * H_ + 1) * H_
    assert rrnn_groups["output projection"] == (H_ + 1) * H_


def test_phase_slices_cover_every_step_exactly_once():
    for T in range(1, 12):
        phases = phase_slices(T)
        steps = [t for _, sl in phases for t in range(T)[sl]]
        assert steps == list(range(T)), T
        assert all(sl.stop > sl.start for _, sl in phases)
        names = [name for name, _ in phases]
        assert names == (["all"] if T == 1 else ["early", "late"] if T == 2
                         else ["early", "middle", "late"])
    try:
        phase_slices(0)
    except ValueError as exc:
        assert "T must be an integer >= 1" in str(exc)
    else:
        raise AssertionError("phase_slices(0) did not raise")


def test_state_statistics_on_known_states():
    initial = np.zeros(2)
    states = np.array([[3.0, 4.0], [3.0, 4.0], [0.0, 0.0]])
    norms, changes, relative = state_norms(initial, states)
    np.testing.assert_allclose(norms, [0, 5, 5, 0])
    np.testing.assert_allclose(changes, [5, 0, 5])
    np.testing.assert_allclose(relative, [1, 0, 1])
    stats = state_phase_stats(initial, states)
    assert [(p["phase"], p["first"], p["last"]) for p in stats] == [
        ("early", 0, 0), ("middle", 1, 1), ("late", 2, 2)]
    assert [(p["norm"], p["change"]) for p in stats] == [(5, 5), (5, 0), (0, 5)]
    stats = state_phase_stats(initial, np.tile(states, (2, 1)))          # T = 6: 2 + 2 + 2
    assert [(p["first"], p["last"]) for p in stats] == [(0, 1), (2, 3), (4, 5)]
    assert [(p["norm"], p["change"]) for p in stats] == [(5, 2.5), (2.5, 5), (2.5, 2.5)]


def test_slot_specialisation_on_known_memories():
    orthogonal = np.tile(np.eye(3, 4) * 2.0, (5, 1, 1))                 # constant over time
    spec = slot_specialisation(orthogonal)
    np.testing.assert_allclose(spec["cosine"], np.eye(3), atol=1e-15)
    assert spec["mean_abs_cosine"] == 0 and spec["within"] == 0 and spec["ratio"] is None
    assert spec["between"] > 0
    np.testing.assert_allclose(slot_norms(orthogonal), 2.0)
    rng = np.random.default_rng(0)
    same = np.repeat(rng.standard_normal((5, 1, 4)), 3, axis=1)           # identical slots
    spec = slot_specialisation(same)
    np.testing.assert_allclose(spec["cosine"], 1.0)
    assert math.isclose(spec["mean_abs_cosine"], 1) and math.isclose(spec["between"], 0,
                                                                      abs_tol=1e-15)
    assert math.isclose(spec["ratio"], 0, abs_tol=1e-12)
    assert slot_specialisation(same[:, :1])["mean_abs_cosine"] is None    # one slot: no pairs


def test_output_statistics_on_known_values():
    stats = output_stats(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert stats == {"mean": 1.75, "std": float(np.std([3.0, 4.0, 0.0, 0.0])), "norm": 5.0,
                     "step_norm": 2.5, "size": 4}
    assert output_stats(np.array([3.0, 4.0]))["step_norm"] == 5.0


def run_cli(argv):
    """main() with argparse's SystemExit turned into the exit status."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


def test_demo_without_checkpoint_prints_every_section(capsys):
    assert run_cli(["--steps", 2, "--seed", 1]) == 0
    out = capsys.readouterr().out
    for title in ("1. State norms per phase", "2. Per-slot activity", "3. Gate openness",
                  "4. Attention entropy", "5. Models compared", "held-out  : accuracy",
                  "2 Adam steps", f"ln(N+1) = {math.log(DEMO_SIZES['num_slots'] + 1):.3f}",
                  "finished in"):
        assert title in out, title
    assert "heatmap" not in out.split("5. Models compared")[1]        # no --out: no file


def test_demo_models_and_training_are_reproducible_for_a_seed():
    def trained(seed):
        rrnn, lstm = build_demo_models(seed, dtype=np.float64)
        assert rrnn.hidden_size == lstm.hidden_size == DEMO_SIZES["hidden_size"]
        train_classifier(rrnn, steps=1, seed=seed, batch_size=4)
        return rrnn.parameters()
    first, again, other = trained(4), trained(4), trained(5)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not all(np.array_equal(first[k], other[k]) for k in first)


BAD_INPUT = [
    (["--checkpoint", "{tmp}/missing.npz"], "no checkpoint file"),
    (["--checkpoint", "{tmp}/garbage.npz"], "is not a checkpoint of this library"),
    (["--checkpoint", "{tmp}"], "no checkpoint file"),
    (["--seed", "-1"], "expected an integer >= 0"),
    (["--seed", "abc"], "expected an integer >= 0"),
    (["--steps", "1.5"], "expected an integer >= 0"),
    (["--example", str(DEMO_EVAL_SIZE)], "--example must lie in"),
    (["--out", "{tmp}/garbage.npz"], "is not a folder"),
]


def test_bad_input_exits_non_zero_with_a_clear_message(tmp_path, capsys):
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    for argv, message in BAD_INPUT:
        argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
        assert run_cli(argv) == 2, argv
        captured = capsys.readouterr()
        assert message in captured.err and "Traceback" not in captured.err, (argv, captured.err)
        assert "finished" not in captured.out, argv


_TINY_RUN = {}


def _tiny_run(tmp_path_factory):
    """A run folder of the trainer's CLI with a checkpoint of every model kind (3 steps each),
    trained once per test session."""
    if "dir" not in _TINY_RUN:
        run_dir = tmp_path_factory.mktemp("demo_run") / "run"
        argv = ["--model", "all", "--steps", "3", "--batch-size", "4", "--eval-size", "12",
                "--eval-every", "3", "--checkpoint-every", "3", "--num-objects", "3",
                "--num-features", "2", "--curriculum", "none", "--mem-slots", "2",
                "--head-size", "4", "--num-heads", "2", "--hidden-size", "8", "--mlp-hidden", "8",
                "--dtype", "float64", "--time-budget", "none", "--no-progress", "--no-plots",
                "--out", str(run_dir)]
        assert cli.main(argv) == 0
        _TINY_RUN["dir"] = run_dir
    return _TINY_RUN["dir"]


def test_checkpoint_of_every_kind_is_analysed(tmp_path_factory, tmp_path, capsys):
    """rmc and lstm write into --out; rrnn, without --out, next to its checkpoint."""
    run = _tiny_run(tmp_path_factory)
    capsys.readouterr()
    for kind in ("rrnn", "rmc", "lstm"):
        model, info = load_checkpoint(run / kind)
        eval_set = nf.make_eval_set(info["run_config"]["eval_seed"], 12, 3, 2, dtype=np.float64)
        example = pick_example(eval_set, 3, 3, 2, "")
        trace = trace_model(model, example.x)
        result = analyse(trace)
        assert all(np.isfinite(v).all() for _, v in _walk(result))
        out_dir = run / kind if kind == "rrnn" else tmp_path
        path = run / kind / "checkpoint.npz" if kind == "rrnn" else run / kind
        argv = ["--checkpoint", path, "--example", 3]
        assert run_cli(argv + (["--out", tmp_path] if kind != "rrnn" else [])) == 0, kind
        out = capsys.readouterr().out
        assert f"at training step {info['step']}" in out and "held-out example 3 of the run" in out
        labels = [f"obj {i}" for i in example.ids]
        for text in (render_phases(trace, result), render_slots(trace, result, labels),
                     render_gates(trace, result, labels), render_attention(trace, result, labels)):
            assert text in out, (kind, text)                 # the printout is these functions'
        for other in ("rrnn", "rmc", "lstm"):       # the run's other models are compared
            if other != kind:
                assert f"{KINDS[other].label} of the run (step 3)" in out, (kind, other)
        heatmap = out_dir / HEATMAP_NAME
        if kind == "lstm":
            assert "attention does not exist for an LSTM" in out and not heatmap.exists()
        else:
            assert heatmap.read_bytes().startswith(b"\x89PNG"), kind
            assert f"attention heatmap written to {heatmap}" in out, kind
            heatmap.unlink()


def test_checkpoint_refuses_training_options_and_examples_out_of_range(tmp_path_factory, capsys):
    run = _tiny_run(tmp_path_factory)
    capsys.readouterr()
    assert run_cli(["--checkpoint", run / "rmc", "--steps", 3]) == 2
    assert "cannot be combined with --checkpoint" in capsys.readouterr().err
    assert run_cli(["--checkpoint", run / "rmc", "--example", 12]) == 2
    assert "[0, 11]" in capsys.readouterr().err

if __name__ == "__main__":
    sys.exit(main())
