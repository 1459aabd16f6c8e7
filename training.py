"""Training on the N-th Farthest task: presets, curriculum, the training loop, checkpoints and
the command line behind ``python nth_farthest.py``.

Public API (besides :func:`main`, the CLI):

* :data:`PRESETS` -- one dict per preset (``quick``, ``curriculum``, ``sonnet``, ``paper``): task sizes,
  optimisation settings and the sizes of each model.
* :func:`parse_curriculum` / :func:`phase_at` -- curriculum phases ``(objects, features, steps)``.
* :func:`build_model` -- a classifier of one kind (``rmc``, ``lstm``, ``rrnn``) for a task.
* :func:`evaluate` -- held-out loss, accuracy and accuracy per rank n of a model on an EvalSet.
* :func:`train_model` -- train one model of a run folder (fresh or resumed from its checkpoint).
* :func:`save_checkpoint` / :func:`load_checkpoint` -- atomic ``.npz`` checkpoints;
  ``load_checkpoint(path) -> (model, info)`` rebuilds the trained model for user scripts.
* :func:`write_run_outputs` -- learning curves, attention heatmap, results.json and the summary
  table of a run folder.

A run folder ``DIR`` holds ``run_config.json`` (the resolved configuration and the command
lines), one sub-folder per model (``DIR/rmc/metrics.jsonl``, ``DIR/rmc/checkpoint.npz``, ...)
and the combined outputs (``learning_curves.png``, ``attention_heatmap.png``, ``results.json``).

Randomness: ``SeedSequence(seed)`` spawns two streams, one for the initial parameters and one for
the training data (the same data stream for every model of a run); the held-out set has its own
``default_rng(eval_seed)``.  A checkpoint stores the data generator's state, so resuming from it
continues bit-exactly.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shlex
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence

import numpy as np

import layers
import nth_farthest as nf
from optimizer import Adam, ExponentialDecay, ExponentialMovingAverage, LinearDecay
from relational_rnn.parallel import DataParallel, check_workers
from relational_rnn.report import format_table

MODEL_KINDS = ("rmc", "lstm", "rrnn")
MODEL_TITLES = {"rmc": "RMC (relational memory core)", "lstm": "LSTM baseline",
                "rrnn": "RelationalRNN (LSTM + relational memory)"}
MODEL_LABELS = {"rmc": "RMC", "lstm": "LSTM", "rrnn": "RelationalRNN"}
_MODEL_CLASSES = {"rmc": ("relational_memory", "RMCClassifier"),
                  "lstm": ("lstm_baseline", "LSTMClassifier"),
                  "rrnn": ("relational_rnn_cell", "RelationalRNNClassifier")}

# Model sizes in the CLI's vocabulary, and which of them each kind uses.
SIZE_KEYS = ("mem_slots", "head_size", "num_heads", "num_blocks", "key_size",
             "attention_mlp_layers", "gate_style", "hidden_size", "mlp_hidden")
_MEMORY_KEYS = ("mem_slots", "head_size", "num_heads", "num_blocks", "key_size",
                "attention_mlp_layers", "gate_style")
SIZE_KEYS_BY_KIND = {"rmc": _MEMORY_KEYS + ("mlp_hidden",),
                     "lstm": ("hidden_size", "mlp_hidden"),
                     "rrnn": ("hidden_size",) + _MEMORY_KEYS + ("mlp_hidden",)}

# Task and optimisation settings of a run.
TRAIN_KEYS = ("num_objects", "num_features", "curriculum", "steps", "batch_size", "lr",
              "lr_by_model", "lr_schedule", "lr_decay_rate", "lr_decay_steps", "min_lr",
              "clip_norm", "eval_size", "eval_seed", "eval_every", "checkpoint_every", "seed",
              "dtype", "time_budget", "ema_decay")
LR_SCHEDULES = ("exponential", "linear")
# Settings added after runs were first written, with the value that reproduces those runs.
_LATER_KEYS = {"ema_decay": None, "lr_schedule": "exponential", "lr_by_model": None}
# The only settings that --resume may change (none of them changes the training trajectory).
RESUMABLE_KEYS = ("steps", "time_budget", "eval_every", "checkpoint_every")
# What --branch-from may change besides those: the optimisation from the branch step on.  The
# task, the model, the data stream, the held-out set and the weight average stay the parent's.
BRANCH_KEYS = RESUMABLE_KEYS + ("batch_size", "lr", "lr_by_model", "lr_schedule",
                                "lr_decay_rate", "lr_decay_steps", "min_lr", "clip_norm")

RUN_CONFIG_NAME = "run_config.json"
RESULTS_NAME = "results.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.npz"
CURVES_NAME = "learning_curves.png"
HEATMAP_NAME = "attention_heatmap.png"
CHECKPOINT_FORMAT = "relational-rnn/nth-farthest-checkpoint"
CHECKPOINT_VERSION = 1
EVAL_BATCH = 1000          # held-out examples per forward pass during evaluation

# ============================================================================================
# Presets: one dict each, in this one place.  Every value can be overridden on the command line.
# "default_models" (optional) names the models a preset trains when --model is not given.
# ============================================================================================

# The 4 x 4 curriculum recipe (IMPLEMENTATION_SUMMARY.md, section 5): the measured way off the
# N-th Farthest plateau on a CPU.  Models of the size of the paper's read-out (4 x 256) with a
# small memory (4 slots x 2 heads x 32).  The easy phases are gated at 90% training accuracy:
# the RMC leaves 3x1 after about 1250 steps, the RelationalRNN needs about 7000 (with a fixed
# 2000-step phase it never left the plateau).  Adam 6e-4 falling in a straight line to 1e-5
# over 90 000 steps (about what 30 minutes hold on the 2-core machine): the RMC reached 98.35%
# in 30 minutes, where 3e-4 halved every 30 000 steps gave 97.45%.  The RelationalRNN starts at
# 3e-4: at 6e-4 it did not leave the 3x1 plateau within that phase's 10 000 steps.  Evaluation
# with weights averaged over about the last 1000 steps.
_RECIPE_4X4_TRAIN = dict(num_objects=4, num_features=4,
                         curriculum="3x1:10000@0.9,3x4:10000@0.9,4x4",
                         steps=150_000, batch_size=128, lr=6e-4, lr_schedule="linear",
                         lr_decay_rate=1.0, lr_decay_steps=90_000, min_lr=1e-5, clip_norm=5.0,
                         eval_size=2000, eval_seed=20180606, eval_every=1000,
                         checkpoint_every=2000, seed=0, dtype="float32", time_budget=1800.0,
                         ema_decay=0.999, lr_by_model={"rrnn": 3e-4})
_RECIPE_4X4_MODELS = {
    "rmc": dict(mem_slots=4, head_size=32, num_heads=2, num_blocks=1, key_size=None,
                attention_mlp_layers=2, gate_style="unit", mlp_hidden=[256, 256, 256, 256]),
    "lstm": dict(hidden_size=256, mlp_hidden=[256, 256, 256, 256]),
    "rrnn": dict(hidden_size=128, mem_slots=4, head_size=32, num_heads=2, num_blocks=1,
                 key_size=None, attention_mlp_layers=2, gate_style="unit",
                 mlp_hidden=[256, 256, 256, 256]),
}

PRESETS: dict[str, dict] = {
    # The README's main job: the first minutes of the curriculum recipe, for all three models,
    # in under 10 minutes on 2 cores.
    "quick": {
        "summary": "the first 150 s of the 'curriculum' preset for each model: 4 objects x 4 "
                   "features, gated curriculum 3x1 -> 3x4 -> 4x4, batch 128, Adam 6e-4 "
                   "(RelationalRNN 3e-4); "
                   "--model all ends within about 9 minutes on 2 cores",
        "train": dict(_RECIPE_4X4_TRAIN, eval_every=500, time_budget=150.0),
        "models": _RECIPE_4X4_MODELS,
    },
    # The same recipe for 30 minutes per model (issue: >= 98% on 4 x 4 within 30 minutes).
    "curriculum": {
        "summary": "4 objects x 4 features, curriculum 3x1 -> 3x4 -> 4x4 with the easy "
                   "phases gated at 90% training accuracy (at most 10 000 steps each), RMC 4 "
                   "slots x 2 heads x 32, LSTM 256, RelationalRNN 128 + the same memory, "
                   "read-out 4 x 256, batch 128, Adam 6e-4 (RelationalRNN 3e-4) falling "
                   "linearly to 1e-5 over 90 000 steps, weights averaged (decay 0.999) for "
                   "evaluation, 150 000 steps or 30 minutes per model",
        "train": dict(_RECIPE_4X4_TRAIN),
        "models": _RECIPE_4X4_MODELS,
    },
    # The paper's 8 x 16 task with the measured way off its plateau (IMPLEMENTATION_SUMMARY.md,
    # section 5, row 4 of the 8 x 16 table): a small RMC (8 slots x 2 heads x 32) through a gated
    # curriculum that grows the objects and features in the 8 x 16 layout.  The rate decides
    # whether the 25% plateau is left: 3e-4 left it within 2500 steps of the switch to 8 x 16,
    # 6e-4 did not.  The linear schedule stretched over the whole 1 000 000 steps keeps the rate
    # nearly constant; the weight average does what a late anneal would.  Hours on a CPU: run it
    # with --time-budget and continue with --resume.  Only the RMC by default (--model adds the
    # others, sized as in the 4 x 4 recipe).
    "curriculum8x16": {
        "summary": "the paper's task, 8 objects x 16 features, with the gated curriculum 3x1 "
                   "-> 3x4 -> 4x4 -> 4x16 -> 6x16 -> 8x16, RMC 8 slots x 2 heads x 32, 1 "
                   "block, read-out 4 x 256, batch 128, Adam 3e-4 (linear over 1 000 000 "
                   "steps, nearly constant), weights averaged (decay 0.999), held-out set of "
                   "5000; only the RMC unless --model says otherwise; no time limit (hours: use "
                   "--time-budget and --resume)",
        "default_models": ["rmc"],
        "train": dict(_RECIPE_4X4_TRAIN, num_objects=8, num_features=16,
                      curriculum="3x1:10000@0.9,3x4:10000@0.9,4x4:10000@0.9,4x16:10000@0.9,"
                                 "6x16:20000@0.8,8x16",
                      steps=1_000_000, lr=3e-4, lr_decay_steps=1_000_000, eval_size=5000,
                      eval_every=2000, time_budget=None, lr_by_model=None),
        "models": dict(_RECIPE_4X4_MODELS,
                       rmc=dict(_RECIPE_4X4_MODELS["rmc"], mem_slots=8),
                       rrnn=dict(_RECIPE_4X4_MODELS["rrnn"], mem_slots=8)),
    },
    # DeepMind Sonnet's reduced example (rmc_nth_farthest.py): 4 x 4 task, 4 memory slots,
    # batch 1600, Adam 1e-4 decaying (x0.9 every 10 000 steps) to 8e-5, read-out 4 x 256.
    # Sonnet's script uses head_size 2048 (and, through a quirk, 4 heads and 4 blocks); that
    # width is out of reach of a CPU, so the memory here is 4 heads x 32 = 128 wide, 1 block.
    "sonnet": {
        "summary": "Sonnet's reduced example: 4 objects x 4 features, RMC 4 slots x 4 heads x "
                   "32, 1 block, read-out 4 x 256, batch 1600, Adam 1e-4 -> 8e-5, no "
                   "curriculum, 100 000 steps (hours to days on a CPU)",
        "train": dict(num_objects=4, num_features=4, curriculum=None, steps=100_000,
                      batch_size=1600, lr=1e-4, lr_schedule="exponential",
                      lr_decay_rate=0.9, lr_decay_steps=10_000,
                      min_lr=8e-5, clip_norm=None, eval_size=5000, eval_seed=20180606,
                      eval_every=500, checkpoint_every=1000, seed=0, dtype="float32",
                      time_budget=None, ema_decay=None, lr_by_model=None),
        "models": {
            "rmc": dict(mem_slots=4, head_size=32, num_heads=4, num_blocks=1, key_size=None,
                        attention_mlp_layers=2, gate_style="unit",
                        mlp_hidden=[256, 256, 256, 256]),
            "lstm": dict(hidden_size=512, mlp_hidden=[256, 256, 256, 256]),
            "rrnn": dict(hidden_size=256, mem_slots=4, head_size=32, num_heads=4, num_blocks=1,
                         key_size=None, attention_mlp_layers=2, gate_style="unit",
                         mlp_hidden=[256, 256, 256, 256]),
        },
    },
    # The paper's configuration (Santoro et al., 2018): 8 x 16 task, 8 slots, 8 heads of 32,
    # 1 block, attention MLP 2 layers, read-out 4 x 256, batch 1600, Adam 1e-4 -> 8e-5.
    "paper": {
        "summary": "the paper: 8 objects x 16 features, RMC 8 slots x 8 heads x 32, 1 block, "
                   "attention MLP 2 layers, read-out 4 x 256, batch 1600, Adam 1e-4 -> 8e-5, "
                   "no curriculum, 1 000 000 steps (GPU reproductions took 50-140 h; on a CPU "
                   "use --time-budget and --resume)",
        "train": dict(num_objects=8, num_features=16, curriculum=None, steps=1_000_000,
                      batch_size=1600, lr=1e-4, lr_schedule="exponential",
                      lr_decay_rate=0.9, lr_decay_steps=10_000,
                      min_lr=8e-5, clip_norm=None, eval_size=10_000, eval_seed=20180606,
                      eval_every=1000, checkpoint_every=1000, seed=0, dtype="float32",
                      time_budget=None, ema_decay=None, lr_by_model=None),
        "models": {
            "rmc": dict(mem_slots=8, head_size=32, num_heads=8, num_blocks=1, key_size=None,
                        attention_mlp_layers=2, gate_style="unit",
                        mlp_hidden=[256, 256, 256, 256]),
            "lstm": dict(hidden_size=1024, mlp_hidden=[256, 256, 256, 256]),
            "rrnn": dict(hidden_size=512, mem_slots=8, head_size=32, num_heads=8, num_blocks=1,
                         key_size=None, attention_mlp_layers=2, gate_style="unit",
                         mlp_hidden=[256, 256, 256, 256]),
        },
    },
}


class UsageError(ValueError):
    """A bad command-line argument or run folder: reported on stderr, exit status 2."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong where it is used."""


# ============================================================================================
# Curriculum
# ============================================================================================


# Training steps over which a gated phase measures its training accuracy (see parse_curriculum).
GATE_WINDOW = 250


def parse_curriculum(spec, num_objects: int, num_features: int) -> list[tuple]:
    """Parse a curriculum spec into phases ``(objects, features, steps, gate)``.

    ``"3x1:3000,3x4:6000,4x4"`` gives ``[(3, 1, 3000, None), (3, 4, 6000, None),
    (4, 4, None, None)]``.  Each phase is ``OBJECTSxFEATURES:STEPS`` (the number of training
    steps spent in it) or ``OBJECTSxFEATURES:STEPS@ACC``, a *gated* phase: it ends as soon as the
    training accuracy on its own task, measured over each block of :data:`GATE_WINDOW` steps,
    reaches ACC (a fraction in (0, 1]), and after STEPS steps at the latest.  Models leave the
    plateau of an easy phase after very different numbers of steps; a gate moves each model on
    when it has learnt the phase, with the same rule for all.  The last phase has no step count
    and runs to the end.  Objects lie in [2, num_objects] and features in [1, num_features]: the
    phases keep the layout of the target task (see ``make_batch``).  ``None``, ``""`` or
    ``"none"`` mean no curriculum: one phase, the full task.
    """
    K = nf._check_num_objects(num_objects)
    F = layers.check_positive_int("num_features", num_features)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
        return [(K, F, None, None)]
    if not isinstance(spec, str):
        raise ValueError(f"curriculum must be a string like '3x1:3000,3x4:6000,4x4', got {spec!r}")
    items = [s.strip() for s in spec.split(",")]
    phases = []
    for i, item in enumerate(items):
        last = i == len(items) - 1
        where = f"curriculum phase {i + 1} ({item!r})"
        size, sep, steps_text = item.partition(":")
        objects_text, x, features_text = size.strip().lower().partition("x")
        try:
            if not x:
                raise ValueError
            k, f = int(objects_text), int(features_text)
        except ValueError:
            raise ValueError(f"{where}: expected OBJECTSxFEATURES[:STEPS[@ACC]] such as "
                             f"'3x1:3000' or '3x1:8000@0.9', in '{spec}'") from None
        if not 2 <= k <= K:
            raise ValueError(f"{where}: objects must lie in [2, {K}] (num_objects), got {k}")
        if not 1 <= f <= F:
            raise ValueError(f"{where}: features must lie in [1, {F}] (num_features), got {f}")
        steps = gate = None
        if sep:
            steps_text, at, gate_text = steps_text.partition("@")
            try:
                steps = int(steps_text.strip())
            except ValueError:
                raise ValueError(f"{where}: the step count must be an integer >= 1, "
                                 f"got {steps_text.strip()!r}") from None
            if steps < 1:
                raise ValueError(f"{where}: the step count must be an integer >= 1, got {steps}")
            if at:
                try:
                    gate = float(gate_text.strip())
                except ValueError:
                    gate = math.nan
                if not 0 < gate <= 1:
                    raise ValueError(f"{where}: the accuracy gate after '@' must be a fraction "
                                     f"in (0, 1], got {gate_text.strip()!r}")
            if last:
                raise ValueError(f"{where}: the last phase runs to the end of training and takes "
                                 f"no step count (write '{k}x{f}')")
        elif not last:
            raise ValueError(f"{where}: every phase but the last needs a step count, "
                             f"e.g. '{k}x{f}:1000'")
        phases.append((k, f, steps, gate))
    return phases


def normalize_phases(phases: Sequence[Sequence]) -> list[tuple]:
    """Phases as 4-tuples ``(objects, features, steps, gate)``; run configs written before
    gates existed hold 3-element phases (no gate)."""
    return [tuple(p) + (None,) * (4 - len(p)) for p in phases]


def format_curriculum(phases: Sequence[Sequence]) -> str:
    """Inverse of :func:`parse_curriculum`."""
    return ",".join(f"{k}x{f}" + ("" if s is None else f":{s}") + ("" if g is None else f"@{g:g}")
                    for k, f, s, g in normalize_phases(phases))


def phase_starts(phases: Sequence[Sequence]) -> list[int]:
    """First training step of each phase when every phase runs its full step count (for a
    gated phase: the latest step at which the next phase can start)."""
    starts, at = [], 0
    for p in phases:
        starts.append(at)
        at += p[2] or 0
    return starts


def phase_at(phases: Sequence[Sequence], step: int) -> int:
    """Index of the phase that the update after ``step`` completed updates belongs to, when
    no gate ends a phase early (:func:`phase_starts`)."""
    index = 0
    for i, start in enumerate(phase_starts(phases)):
        if step >= start:
            index = i
    return index


# ============================================================================================
# Models
# ============================================================================================


def model_class(kind: str):
    """The classifier class of a model kind (imported on first use)."""
    if kind not in _MODEL_CLASSES:
        raise ValueError(f"model kind must be one of {list(MODEL_KINDS)}, got {kind!r}")
    module, name = _MODEL_CLASSES[kind]
    return getattr(importlib.import_module(module), name)


def model_kwargs(kind: str, sizes: Mapping, num_objects: int, num_features: int) -> dict:
    """Constructor keyword arguments of ``kind`` for the task, from sizes in CLI vocabulary.

    The RelationalRNN names its memory ``num_slots`` x ``slot_size`` with
    ``slot_size = num_heads * head_size``; the RMC takes ``mem_slots`` and ``head_size``.
    """
    width = nf.task_width(num_objects, num_features)
    common = dict(input_size=width, num_classes=num_objects,
                  mlp_hidden=list(sizes["mlp_hidden"]))
    memory = {k: sizes[k] for k in ("num_heads", "num_blocks", "key_size",
                                    "attention_mlp_layers", "gate_style")} \
        if kind != "lstm" else {}
    if kind == "rmc":
        return dict(common, mem_slots=sizes["mem_slots"], head_size=sizes["head_size"], **memory)
    if kind == "lstm":
        return dict(common, hidden_size=sizes["hidden_size"])
    if kind == "rrnn":
        return dict(common, hidden_size=sizes["hidden_size"], num_slots=sizes["mem_slots"],
                    slot_size=sizes["num_heads"] * sizes["head_size"], **memory)
    raise ValueError(f"model kind must be one of {list(MODEL_KINDS)}, got {kind!r}")


def build_model(kind: str, sizes: Mapping, num_objects: int, num_features: int, *,
                dtype=np.float32, rng: np.random.Generator | None = None):
    """A fresh classifier of ``kind`` (``rmc``, ``lstm``, ``rrnn``) for a K x F task."""
    kwargs = model_kwargs(kind, sizes, num_objects, num_features)
    return model_class(kind)(**kwargs, dtype=dtype,
                             rng=np.random.default_rng(0) if rng is None else rng)


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(parameter-init generator, training-data generator) of a run seed."""
    init_seq, data_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(init_seq), np.random.default_rng(data_seq)


# ============================================================================================
# Evaluation
# ============================================================================================


def evaluate(model, eval_set: nf.EvalSet, num_objects: int, *,
             batch_size: int = EVAL_BATCH) -> dict:
    """Held-out metrics of ``model`` on ``eval_set`` (forward passes of ``batch_size``).

    Returns ``{"heldout_loss", "heldout_acc", "acc_per_n"}``: mean cross-entropy, accuracy, and
    a list with the accuracy on the examples of each rank n in [0, num_objects) (None for a rank
    with no example).
    """
    K = num_objects
    total_loss = 0.0
    correct = np.zeros(K)
    count = np.zeros(K)
    for x, y, n in eval_set.batches(batch_size):
        logits, _ = model.forward(x)
        loss, _, _ = layers.softmax_cross_entropy(logits, y)
        total_loss += loss * len(y)
        hit = (np.argmax(logits, axis=1) == y).astype(np.float64)
        correct += np.bincount(n, weights=hit, minlength=K)[:K]
        count += np.bincount(n, minlength=K)[:K]
    size = len(eval_set)
    return {"heldout_loss": total_loss / size,
            "heldout_acc": float(correct.sum() / size),
            "acc_per_n": [float(c / m) if m else None for c, m in zip(correct, count)]}


# ============================================================================================
# Files: JSON, metrics, checkpoints
# ============================================================================================


def _json_safe(value):
    """Replace NaN/Inf floats by None (strict JSON) and numpy scalars by Python ones."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dumps(value, **kwargs) -> str:
    return json.dumps(_json_safe(value), allow_nan=False, **kwargs)


def _atomic_write_bytes(path: str, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path: str, value) -> None:
    """Write ``value`` as indented strict JSON, atomically."""
    text = _dumps(value, indent=2) + "\n"
    _atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8")))


def read_json(path: str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_metrics(path: str) -> list[dict]:
    """The lines of a metrics.jsonl (see :mod:`plots`)."""
    import plots
    return plots.read_metrics(path)


def _history_until(path: str, step: int) -> list[dict]:
    """The metrics lines of ``path`` up to a checkpoint at ``step`` (none if there is no file):
    evaluations and events at steps <= step, and phase changes at steps < step (a run continued
    from ``step`` announces the phase at ``step`` again if it starts there)."""
    if not os.path.exists(path):
        return []
    return [e for e in read_metrics(path)
            if e.get("step", 0) < step or (e.get("step", 0) == step and e.get("event") != "phase")]


def _write_metrics(path: str, entries: Sequence[Mapping]) -> None:
    """Replace the metrics file ``path`` by ``entries``, atomically."""
    text = "".join(_dumps(e) + "\n" for e in entries)
    _atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8")))


def _truncate_metrics(path: str, step: int) -> None:
    """Keep only the history up to a checkpoint at ``step`` (see :func:`_history_until`)."""
    if os.path.exists(path):
        _write_metrics(path, _history_until(path, step))


def save_checkpoint(path: str, *, kind: str, model, optimizer: Adam,
                    data_rng: np.random.Generator, step: int, run_config: Mapping,
                    extra: Mapping | None = None,
                    average: ExponentialMovingAverage | None = None) -> None:
    """Write a checkpoint atomically (np.savez to a temporary file, then os.replace).

    The ``.npz`` holds ``params/<dotted name>``, ``adam_m/<name>``, ``adam_v/<name>`` arrays,
    ``ema/<name>`` (the averaged parameters, when ``average`` is given) and ``meta``, a JSON
    string: format and version, model kind, constructor config and dtype, step, curriculum
    phase, optimizer state (without moments), the average's decay and count, the data
    generator's bit_generator state, the full run config and ``extra`` (wall time, running
    training statistics, curriculum state).
    """
    opt_state = optimizer.state_dict()
    arrays = {f"params/{n}": p for n, p, _ in model.named_parameters()}
    arrays.update({f"adam_m/{n}": a for n, a in opt_state.pop("m").items()})
    arrays.update({f"adam_v/{n}": a for n, a in opt_state.pop("v").items()})
    ema_state = None
    if average is not None:
        ema_state = average.state_dict()
        arrays.update({f"ema/{n}": a for n, a in ema_state.pop("average").items()})
    # The training loop passes the phase it is in (gated phases end at no fixed step);
    # other callers get the phase of a fixed schedule.
    phases = run_config.get("phases") or [[None, None, None]]
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": kind,
            "model_config": model.config, "dtype": np.dtype(model.dtype).name, "step": int(step),
            "phase_index": phase_at(phases, max(step - 1, 0)), "optimizer": opt_state,
            "data_rng_state": data_rng.bit_generator.state, "run_config": run_config,
            "ema": ema_state,
            "numpy_version": np.__version__, **dict(extra or {})}
    arrays["meta"] = np.array(json.dumps(_json_safe(meta)))
    _atomic_write_bytes(path, lambda fh: np.savez(fh, **arrays))


def load_checkpoint(path, *, expect_kind: str | None = None, averaged: bool = True):
    """Load a checkpoint written by training: ``(model, info)``.

    Args:
        path: a ``checkpoint.npz`` or a folder holding one (e.g. ``runs/quick/rmc``).
        expect_kind: if given, raise unless the checkpoint holds that model kind.
        averaged: when the run kept a moving average of the parameters (``--ema-decay``), load
            those averaged weights -- the ones the held-out accuracy was measured with -- rather
            than the last training iterate (``averaged=False``, what resuming needs).

    Returns the rebuilt model (its class, config and dtype from the checkpoint, parameters
    loaded) and ``info``: a dict with ``kind``, ``model_config``, ``dtype``, ``step``,
    ``phase_index``, ``run_config``, ``optimizer`` (an ``Adam.state_dict()``), ``ema`` (an
    ``ExponentialMovingAverage.state_dict()`` or None), ``weights`` (``"averaged"`` or
    ``"last"``: which ones the model holds), ``data_rng_state``, ``wall_time``, ``path`` and the
    other stored entries.

    Raises :class:`CheckpointError` (a ValueError) with a clear message for a missing, unreadable,
    foreign or inconsistent file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "meta" not in archive.files:
                raise CheckpointError(f"{path} is not a training checkpoint (no 'meta' entry)")
            meta = json.loads(str(archive["meta"][()]))
            arrays = {k: archive[k] for k in archive.files if k != "meta"}
    except CheckpointError:
        raise
    except Exception as exc:          # BadZipFile, OSError, ValueError, JSON errors, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") \
            from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a relational-rnn N-th Farthest checkpoint")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {meta.get('version')!r}, "
                              f"this code reads version {CHECKPOINT_VERSION}")
    kind = meta.get("kind")
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"{path} holds an unknown model kind {kind!r}")
    if expect_kind is not None and kind != expect_kind:
        raise CheckpointError(f"{path} holds a {kind!r} model, expected {expect_kind!r}")
    dtype = meta.get("dtype")
    if dtype not in ("float32", "float64"):
        raise CheckpointError(f"{path} has an unsupported dtype {dtype!r}")
    params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    average = {k[len("ema/"):]: v for k, v in arrays.items() if k.startswith("ema/")}
    ema = meta.get("ema")
    if ema is not None:
        if not isinstance(ema, dict) or set(average) != set(params):
            raise CheckpointError(f"{path} has an incomplete parameter average (the ema/ "
                                  "arrays do not match the parameters)")
        ema = dict(ema, average=average)
    use_average = averaged and ema is not None
    try:
        model = model_class(kind)(**meta["model_config"], dtype=dtype,
                                  rng=np.random.default_rng(0))
        for name, value in [*params.items(), *average.items()]:
            if value.dtype != np.dtype(dtype):
                raise ValueError(f"parameter {name!r} is {value.dtype}, expected {dtype}")
        model.load_state_dict(average if use_average else params)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} does not match its own {kind} model config: {exc}") \
            from exc
    optimizer = dict(meta.get("optimizer") or {})
    optimizer["m"] = {k[len("adam_m/"):]: v for k, v in arrays.items() if k.startswith("adam_m/")}
    optimizer["v"] = {k[len("adam_v/"):]: v for k, v in arrays.items() if k.startswith("adam_v/")}
    info = dict(meta)
    info["optimizer"] = optimizer
    info["ema"] = ema
    info["weights"] = "averaged" if use_average else "last"
    info["path"] = path
    return model, info


# ============================================================================================
# Progress display and interruption
# ============================================================================================


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """A progress line on ``stream``: one updating line on a TTY, else a plain line every
    ``every`` seconds."""

    def __init__(self, stream, label: str, total: int, *, enabled: bool = True,
                 every: float = 5.0):
        self.stream, self.label, self.total = stream, label, total
        self.enabled = enabled
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.every = 0.1 if self.tty else every
        self.last = -math.inf
        self.width = 0

    def update(self, step: int, *, loss, acc, rate, left, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        pct = 100.0 * step / max(1, self.total)
        text = (f"[{self.label}] step {step}/{self.total} ({pct:5.1f}%)"
                f" | loss {_fmt_float(loss)} | held-out acc {_fmt_float(acc)}"
                f" | {rate:.1f} steps/s | {_fmt_duration(left)} left")
        if self.tty:
            pad = max(0, self.width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the updating line (before another message is printed)."""
        if self.enabled and self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def _fmt_float(value) -> str:
    return "-" if value is None else (f"{value:.3f}" if math.isfinite(value) else str(value))


class StopRequest:
    """Ctrl-C once: finish the current step, save a checkpoint and stop.  Twice: abort."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:            # not in the main thread: leave the default behaviour
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


# ============================================================================================
# Training one model
# ============================================================================================


def initial_lr(cfg: Mapping, kind: str) -> float:
    """The initial learning rate of the ``kind`` model of a run: its entry in
    ``cfg["lr_by_model"]`` (a preset's per-model rate) or else ``cfg["lr"]``."""
    return float((cfg.get("lr_by_model") or {}).get(kind, cfg["lr"]))


def _make_optimizer(model, cfg: Mapping, kind: str) -> Adam:
    lr = initial_lr(cfg, kind)
    if cfg["lr_schedule"] == "linear":
        schedule = LinearDecay(lr, decay_steps=cfg["lr_decay_steps"], min_lr=cfg["min_lr"])
    else:
        schedule = ExponentialDecay(lr, decay_rate=cfg["lr_decay_rate"],
                                    decay_steps=cfg["lr_decay_steps"], min_lr=cfg["min_lr"])
    return Adam(model, lr=lr, clip_norm=cfg["clip_norm"], schedule=schedule)


def _resumed_optimizer(model, info: Mapping, cfg: Mapping, kind: str) -> Adam:
    """The Adam of a resumed (or branched) model: the run config decides the rate, its
    schedule and the clipping (a branch may change them); the checkpoint ``info`` gives the
    step count and the moments."""
    optimizer = _make_optimizer(model, cfg, kind)
    optimizer.load_state_dict({k: v for k, v in info["optimizer"].items()
                               if k not in ("lr", "schedule", "clip_norm")})
    return optimizer


def train_model(kind: str, cfg: Mapping, run_dir: str, eval_set: nf.EvalSet, *,
                resume_from=None, log=print, progress_stream=None, progress: bool = True,
                stop: StopRequest | None = None, workers: int = 1) -> dict:
    """Train the ``kind`` model of the run in ``run_dir`` according to the run config ``cfg``.

    Writes ``run_dir/<kind>/metrics.jsonl`` (one JSON line per evaluation and per event) and
    ``run_dir/<kind>/checkpoint.npz`` (every ``checkpoint_every`` steps and when it stops).
    ``resume_from`` is ``load_checkpoint(..., averaged=False)``'s ``(model, info)`` to continue
    from; metrics lines past its step are dropped first.

    ``workers`` processes compute each step's gradient, a shard of the batch each (see
    :class:`parallel.DataParallel`; 1 = this process alone).

    Stops at ``cfg["steps"]``, at ``cfg["time_budget"]`` seconds of this call, when ``stop``
    is requested, or at a non-finite loss or gradient (then no checkpoint is written: the last
    one stays).  Returns ``{"kind", "status", "step", "wall_time", "message", "last_eval"}`` with
    status ``finished``, ``time_budget``, ``interrupted`` or ``nan``.
    """
    progress_stream = sys.stderr if progress_stream is None else progress_stream
    workers = check_workers(workers, cfg["batch_size"])
    K, F = cfg["num_objects"], cfg["num_features"]
    dtype = np.dtype(cfg["dtype"])
    phases = normalize_phases(cfg["phases"])
    steps, B = cfg["steps"], cfg["batch_size"]
    eval_every, ckpt_every = cfg["eval_every"], cfg["checkpoint_every"]
    budget = cfg.get("time_budget")
    # Held-out forward passes no larger than the training batch (memory), but not tiny (speed).
    eval_batch = min(EVAL_BATCH, max(B, 256))
    model_dir = os.path.join(run_dir, kind)
    os.makedirs(model_dir, exist_ok=True)
    metrics_path = os.path.join(model_dir, METRICS_NAME)
    ckpt_path = os.path.join(model_dir, CHECKPOINT_NAME)

    if resume_from is not None:
        model, info = resume_from
        optimizer = _resumed_optimizer(model, info, cfg, kind)
        if info.get("weights") == "averaged":
            raise CheckpointError("resuming needs the last training iterate: load the "
                                  "checkpoint with load_checkpoint(..., averaged=False)")
        data_rng = np.random.Generator(np.random.PCG64())
        data_rng.bit_generator.state = info["data_rng_state"]
        step = int(info["step"])
        wall0 = float(info.get("wall_time", 0.0))
        window = dict(info.get("train_window") or {})
        curriculum = dict(info.get("curriculum") or {})
        _truncate_metrics(metrics_path, step)
        mode = "a"
    else:
        init_rng, data_rng = _rngs(cfg["seed"])
        model = build_model(kind, cfg["model_sizes"][kind], K, F, dtype=dtype, rng=init_rng)
        optimizer = _make_optimizer(model, cfg, kind)
        step, wall0, window, curriculum = 0, 0.0, {}, {}
        mode = "w"
    # Held-out evaluations use a moving average of the weights when the run keeps one.
    average = None
    if cfg.get("ema_decay"):
        average = ExponentialMovingAverage(model, cfg["ema_decay"])
        if resume_from is not None:
            if not info.get("ema"):
                raise CheckpointError(f"{ckpt_path} holds no parameter average, but the run "
                                      f"keeps one (ema_decay {cfg['ema_decay']})")
            average.load_state_dict(info["ema"])
    window = {"loss_sum": float(window.get("loss_sum", 0.0)),
              "count": int(window.get("count", 0)),
              "correct": int(window.get("correct", 0)),
              "seen": int(window.get("seen", 0))}
    # Curriculum position: the phase, the step it began at, and the gate's accuracy window (a
    # gated phase ends early once a block of GATE_WINDOW steps reaches its training accuracy).
    gate = {"steps": 0, "correct": 0, "seen": 0, "acc": None, "passed": False}
    gate.update(curriculum.get("gate") or {})

    start_step = step
    t0 = time.perf_counter()
    bar = Progress(progress_stream, kind, steps, enabled=progress)
    last_eval: dict | None = None
    last_lr = optimizer.current_lr()
    shown_loss = None

    def say(message: str) -> None:
        bar.clear()
        log(message)

    def wall() -> float:
        return wall0 + (time.perf_counter() - t0)

    # Each step's gradient: on this process alone, or shared with workers - 1 more (parallel.py).
    with open(metrics_path, mode, encoding="utf-8") as metrics, \
            DataParallel(model, kind, cfg["model_sizes"][kind], K, F,
                         workers=workers) as parallel:
        def record(entry: dict) -> None:
            metrics.write(_dumps(entry) + "\n")
            metrics.flush()

        def run_eval(at_step: int, phase: int) -> dict:
            nonlocal last_eval
            if average is None:
                result, also = evaluate(model, eval_set, K, batch_size=eval_batch), {}
            else:
                with average.applied():
                    result = evaluate(model, eval_set, K, batch_size=eval_batch)
                last = evaluate(model, eval_set, K, batch_size=eval_batch)
                also = {"last_iterate_acc": last["heldout_acc"],
                        "last_iterate_loss": last["heldout_loss"]}
            k, f = phases[phase][:2]
            entry = {"event": "eval", "step": at_step, "wall_time": wall(), "phase": phase,
                     "active_objects": k, "active_features": f, "lr": last_lr,
                     "train_loss": (window["loss_sum"] / window["count"]
                                    if window["count"] else None),
                     "train_acc": window["correct"] / window["seen"] if window["seen"] else None,
                     **result, "weights": "last" if average is None else "averaged", **also,
                     "workers": workers}
            record(entry)
            window.update(loss_sum=0.0, count=0, correct=0, seen=0)
            last_eval = entry
            say(f"[{kind}] step {at_step}/{steps}: held-out acc {entry['heldout_acc']:.3f}, "
                f"held-out loss {_fmt_float(entry['heldout_loss'])}, train loss "
                f"{_fmt_float(entry['train_loss'])} (phase {phase + 1}/{len(phases)}: "
                f"{k}x{f}, lr {last_lr:.3g})"
                + ("" if average is None else
                   f"; averaged weights, last iterate {also['last_iterate_acc']:.3f}"))
            return entry

        def save(at_step: int) -> None:
            save_checkpoint(ckpt_path, kind=kind, model=model, optimizer=optimizer,
                            data_rng=data_rng, step=at_step, run_config=dict(cfg), average=average,
                            extra={"wall_time": wall(), "train_window": dict(window),
                                   "phase_index": phase,
                                   "curriculum": {"phase_start": phase_start,
                                                  "gate": dict(gate)}})

        if resume_from is not None:
            record({"event": "resume", "step": step, "wall_time": wall0})
            say(f"[{kind}] resuming from step {step} ({ckpt_path})")
        else:
            say(f"[{kind}] {MODEL_TITLES[kind]}: {model.num_parameters():,} parameters, "
                f"{steps} steps of batch {B}, Adam lr {initial_lr(cfg, kind):g} "
                f"({cfg['lr_schedule']} decay)")
        phase = phase_start = None
        if step > 0:
            phase = int(info["phase_index"])
            # Checkpoints written before gates existed hold no curriculum entry: their phases
            # began at fixed steps.
            phase_start = int(curriculum.get("phase_start", phase_starts(phases)[phase]))

        def enter_phase(at_step: int) -> None:
            """Move to the next phase when the current one is over (its steps are done or its
            gate has passed); announce it in the metrics and the log."""
            nonlocal phase, phase_start
            reason, last_gate_acc = None, None
            if phase is None:
                phase = phase_at(phases, at_step)
                phase_start = phase_starts(phases)[phase]
            else:
                n_steps = phases[phase][2]
                if n_steps is None:
                    return
                if gate["passed"]:
                    reason = "accuracy"
                elif at_step - phase_start >= n_steps:
                    reason = "steps"
                else:
                    return
                phase, phase_start, last_gate_acc = phase + 1, at_step, gate["acc"]
                gate.update(steps=0, correct=0, seen=0, acc=None, passed=False)
            k, f, n_steps, gate_acc = phases[phase]
            record({"event": "phase", "step": at_step, "wall_time": wall(), "phase": phase,
                    "active_objects": k, "active_features": f, "phase_steps": n_steps,
                    "gate": gate_acc, "reason": reason, "previous_gate_acc": last_gate_acc})
            if len(phases) > 1:
                if n_steps is None:
                    length = " until the end"
                elif gate_acc is None:
                    length = f" for {n_steps} steps"
                else:
                    length = (f" until its training accuracy reaches {gate_acc:g}, at most "
                              f"{n_steps} steps")
                why = ""
                if reason == "accuracy":
                    why = (f" (the previous phase's training accuracy reached {last_gate_acc:.3f}"
                           f" over {GATE_WINDOW} steps)")
                elif reason == "steps" and phases[phase - 1][3] is not None:
                    # A gated phase that ends on its cap did not pass its gate: say so, or the
                    # log reads as if the easier task had been learnt.
                    _, _, cap, gate_of_previous = phases[phase - 1]
                    last = "-" if last_gate_acc is None else f"{last_gate_acc:.3f}"
                    why = (f" (the previous phase ran to its cap of {cap} steps below its gate"
                           f" {gate_of_previous:g}: last training accuracy {last} over"
                           f" {GATE_WINDOW} steps)")
                say(f"[{kind}] step {at_step}: curriculum phase {phase + 1}/{len(phases)}: "
                    f"{k} objects x {f} feature{'s' if f > 1 else ''}{length}{why}")

        status, message = None, ""
        if step >= steps:
            status = "finished"
        elif step == 0:
            enter_phase(0)
            run_eval(0, phase)
        while status is None:
            enter_phase(step)
            k, f = phases[phase][:2]
            x, y, _ = nf.make_batch(data_rng, B, K, F, active_objects=k, active_features=f,
                                    dtype=dtype)
            loss, correct = parallel.gradient(x, y)
            failure = None
            if not math.isfinite(loss):
                failure = f"the training loss is {loss}"
            else:
                try:
                    info = optimizer.step()
                except FloatingPointError as exc:
                    failure = f"non-finite gradient ({exc})"
            if failure is not None:
                bad_step = step + 1
                kept = (f"the last good checkpoint ({ckpt_path}) is kept"
                        if os.path.exists(ckpt_path) else "no checkpoint had been written yet")
                message = (f"{kind}: training stopped at step {bad_step}: {failure}; {kept}. "
                           "A new run with a smaller --lr or a --clip-norm may avoid it.")
                record({"event": "stop", "reason": "nan", "step": bad_step,
                        "wall_time": wall(), "message": message})
                bar.clear()
                print(f"error: {message}", file=sys.stderr)
                status = "nan"
                break
            step += 1
            if average is not None:
                average.update()
            last_lr = info["lr"]
            window["loss_sum"] += loss
            window["count"] += 1
            window["correct"] += correct
            window["seen"] += len(y)
            gate_acc = phases[phase][3]
            if gate_acc is not None:
                gate["steps"] += 1
                gate["correct"] += correct
                gate["seen"] += len(y)
                if gate["steps"] == GATE_WINDOW:
                    gate["acc"] = gate["correct"] / gate["seen"]
                    gate["passed"] = gate["acc"] >= gate_acc
                    gate.update(steps=0, correct=0, seen=0)
            shown_loss = loss if shown_loss is None else 0.9 * shown_loss + 0.1 * loss

            elapsed = time.perf_counter() - t0
            if step >= steps:
                status = "finished"
            elif budget is not None and elapsed >= budget:
                status = "time_budget"
                message = (f"{kind}: time budget of {budget:g} s reached at step {step}/{steps}; "
                           f"continue with --resume")
            elif stop is not None and stop.requested:
                status = "interrupted"
                message = f"{kind}: interrupted at step {step}/{steps}; continue with --resume"
            if step % eval_every == 0 or status is not None:
                run_eval(step, phase)
            if step % ckpt_every == 0 or status is not None:
                save(step)
            rate = (step - start_step) / max(elapsed, 1e-9)
            left = (steps - step) / rate if rate > 0 else None
            if budget is not None and left is not None:
                left = min(left, max(0.0, budget - elapsed))
            bar.update(step, loss=shown_loss, acc=last_eval["heldout_acc"] if last_eval else None,
                       rate=rate, left=left, force=status is not None)
        if status != "nan":
            record({"event": "stop", "reason": status, "step": step, "wall_time": wall(),
                    "message": message})
        bar.clear()
        if message and status != "nan":
            log(message)
    return {"kind": kind, "status": status, "step": step, "wall_time": wall(),
            "message": message, "last_eval": last_eval}


# ============================================================================================
# Run outputs: plots, results.json, summary table
# ============================================================================================


def _model_summary(kind: str, lines: list[dict], run_dir: str, steps: int) -> dict:
    evals = [e for e in lines if e.get("event") == "eval"]
    stops = [e for e in lines if e.get("event") == "stop"]
    last = evals[-1] if evals else None
    best = max(evals, key=lambda e: e.get("heldout_acc") or -1.0) if evals else None
    ckpt = os.path.join(run_dir, kind, CHECKPOINT_NAME)
    summary = {
        "status": stops[-1]["reason"] if stops else "incomplete",
        "message": stops[-1].get("message", "") if stops else "",
        "steps_done": last["step"] if last else 0,
        "steps": steps,
        "wall_time": last["wall_time"] if last else 0.0,
        "final": ({k: last.get(k) for k in ("heldout_acc", "heldout_loss", "acc_per_n",
                                            "train_loss", "train_acc", "lr")}
                  if last else None),
        "best_heldout_acc": best["heldout_acc"] if best else None,
        "best_step": best["step"] if best else None,
        "checkpoint": os.path.join(kind, CHECKPOINT_NAME) if os.path.exists(ckpt) else None,
        "metrics": os.path.join(kind, METRICS_NAME),
    }
    if summary["status"] == "nan":
        summary["steps_done"] = stops[-1]["step"] - 1
    return summary


def _attention_heatmap(run_dir: str, cfg: Mapping, eval_set: nf.EvalSet | None) -> str | None:
    """Draw the RMC's attention on held-out example 0, if the run has an RMC checkpoint."""
    import plots
    from relational_memory import RelationalMemory
    ckpt = os.path.join(run_dir, "rmc", CHECKPOINT_NAME)
    if not os.path.exists(ckpt):
        return None
    model, info = load_checkpoint(ckpt, expect_kind="rmc")
    K, F = cfg["num_objects"], cfg["num_features"]
    if eval_set is None:
        eval_set = nf.make_eval_set(cfg["eval_seed"], cfg["eval_size"], K, F,
                                    dtype=cfg["dtype"])
    x = eval_set.inputs[:1]
    logits, cache = model.forward(x)
    weights = RelationalMemory.attention_weights(cache["core"])    # (T, blocks, B, H, N+1, N+1)
    blocks = weights.shape[1]
    ids = np.argmax(x[0, :, F:F + K], axis=1)
    m = int(np.argmax(x[0, 0, F + K:F + 2 * K]))
    n = int(eval_set.n[0])
    label, pred = int(eval_set.labels[0]), int(np.argmax(logits[0]))
    title = (f"RMC attention at step {info['step']} on held-out example 0 "
             f"(m={m}, n={n}: answer {label}, predicted {pred})"
             + (f"; last of {blocks} blocks" if blocks > 1 else "")
             + "\nrows: memory-slot queries; columns: keys = memory slots s0.. and the input "
               "row 'in'")
    return plots.plot_attention_heatmap(weights[:, -1, 0], os.path.join(run_dir, HEATMAP_NAME),
                                        row_objects=ids, title=title)


def summary_table(results: Mapping) -> str:
    """The end-of-run table: one row per model."""
    header = ("model", "params", "steps", "wall time", "held-out acc", "held-out loss",
              "best acc", "status")
    rows = []
    for kind, r in results["models"].items():
        final = r.get("final") or {}
        rows.append((kind, f"{r.get('num_parameters', 0):,}",
                     f"{r['steps_done']}/{r['steps']}", _fmt_duration(r["wall_time"]),
                     _fmt_float(final.get("heldout_acc")), _fmt_float(final.get("heldout_loss")),
                     _fmt_float(r.get("best_heldout_acc")), r["status"]))
    lines = [format_table(header, rows)]
    chance = results.get("chance_accuracy")
    if chance is not None:
        lines.append(f"(chance accuracy 1/{results['config']['num_objects']} = {chance:.3f}; "
                     "evaluated on the full target task)")
    return "\n".join(lines)


def _changes(branch: Mapping) -> str:
    """'--lr 0.0003 -> 0.0005, ...': the settings a branch changed."""
    return ", ".join(f"{_option(k)} {old} -> {new}" for k, (old, new) in
                     branch["changed"].items()) or "no optimisation setting"


def curves_title(cfg: Mapping) -> str:
    """The learning-curve title of a run: task, preset, batch, curriculum, branch point."""
    title = (f"N-th Farthest, {cfg['num_objects']} objects x {cfg['num_features']} features "
             f"(preset {cfg.get('preset')}, batch {cfg['batch_size']}"
             + (f", curriculum {cfg['curriculum']}" if cfg.get("curriculum") else ""))
    branch = cfg.get("branched_from")
    if branch:
        steps = sorted(set(branch["steps"].values()))
        title += (f"; branched at step {', '.join(map(str, steps))} from another run, "
                  f"changed: {_changes(branch)}")
    return title + ")"


def write_run_outputs(run_dir: str, cfg: Mapping, *, eval_set: nf.EvalSet | None = None,
                      command: Sequence[str] | None = None, make_plots: bool = True) -> dict:
    """Write learning_curves.png, attention_heatmap.png (RMC runs) and results.json of a run
    folder from its per-model metrics and checkpoints; return the results dict."""
    import plots
    metrics = {}
    for kind in cfg["models"]:
        path = os.path.join(run_dir, kind, METRICS_NAME)
        if os.path.exists(path):
            metrics[kind] = read_metrics(path)
    K = cfg["num_objects"]
    results = {"config": dict(cfg), "commands": list(cfg.get("commands", [])),
               "chance_accuracy": 1.0 / K, "models": {},
               "environment": {"python": platform.python_version(), "numpy": np.__version__,
                               "platform": platform.platform(), "cpu_count": os.cpu_count(),
                               "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}}
    if command is not None:
        results["command"] = shlex.join(command)
    for kind, lines in metrics.items():
        summary = _model_summary(kind, lines, run_dir, cfg["steps"])
        sizes = cfg["model_sizes"][kind]
        model = build_model(kind, sizes, K, cfg["num_features"], dtype=cfg["dtype"])
        summary["num_parameters"] = model.num_parameters()
        summary["model_config"] = model.config
        results["models"][kind] = summary
    if metrics and make_plots:
        plots.plot_learning_curves(metrics, os.path.join(run_dir, CURVES_NAME), chance=1.0 / K,
                                   title=curves_title(cfg),
                                   labels={k: MODEL_LABELS[k] for k in metrics})
        results["learning_curves"] = CURVES_NAME
        if _attention_heatmap(run_dir, cfg, eval_set):
            results["attention_heatmap"] = HEATMAP_NAME
    write_json(os.path.join(run_dir, RESULTS_NAME), results)
    return results


# ============================================================================================
# Command line
# ============================================================================================


def _preset_values(key: str, kind: str | None = None) -> str:
    """'quick X, curriculum Y, sonnet Z, paper W' for --help."""
    parts = []
    for name, preset in PRESETS.items():
        if kind is None:
            value = preset["train"].get(key)
        else:
            value = preset["models"].get(kind, {}).get(key)
        if isinstance(value, list):
            value = ",".join(map(str, value))
        elif value is None:
            value = "none"
        parts.append(f"{name} {value}")
    return "; ".join(parts)


def _size_help(key: str) -> str:
    kinds = [k for k in MODEL_KINDS if key in SIZE_KEYS_BY_KIND[k]]
    return f"[{'/'.join(kinds)}] presets: " + " | ".join(
        f"{k}: {_preset_values(key, k)}" for k in kinds)


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") \
                from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _optional(parse):
    """Accept 'none' (or 0 where noted by the caller) as None."""
    def wrapped(text: str):
        if text.strip().lower() in ("none", "off"):
            return "none"
        return parse(text)
    return wrapped


def _lr_by_model(text: str) -> dict:
    """'rrnn=3e-4,lstm=1e-3' -> {'rrnn': 3e-4, 'lstm': 1e-3}."""
    rates = {}
    for item in text.split(","):
        kind, sep, value = item.strip().partition("=")
        kind = kind.strip().lower()
        if not sep or kind not in MODEL_KINDS:
            raise argparse.ArgumentTypeError(
                f"expected KIND=LR pairs with KIND one of {', '.join(MODEL_KINDS)}, such as "
                f"rrnn=3e-4,lstm=1e-3, got {text!r}")
        rates[kind] = _positive_float(value)
    return rates


def _mlp_hidden(text: str) -> list[int]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths such as 256,256,256,256, got {text!r}") \
            from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be >= 1, got {text!r}")
    return sizes


def _models_arg(text: str) -> list[str]:
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return list(MODEL_KINDS)
    bad = [n for n in names if n not in MODEL_KINDS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(MODEL_KINDS)}, all, or a comma-separated list, "
            f"got {text!r}")
    return list(dict.fromkeys(names))


DESCRIPTION = """\
Train the models of this library on the N-th Farthest task (Santoro et al., 2018).

The task: an example shows K objects (vectors of F features drawn uniform in [-1, 1]) one per
time step, in shuffled order; every row is [vector | one-hot object id | one-hot m | one-hot n].
The model must answer "which object is the n-th farthest from object m?" (K classes; n = 0 is m
itself, n = K-1 the farthest).  Chance accuracy is 1/K.  Training draws fresh examples every
step; a fixed held-out set of the full target task measures accuracy (overall and per n).

Models: rmc (relational memory core + read-out MLP), lstm (LSTM + read-out MLP), rrnn (LSTM plus
relational memory + read-out MLP), or all of them one after another.

Outputs in --out DIR: per model DIR/<model>/metrics.jsonl (one JSON line per evaluation: step,
wall time, curriculum phase, lr, train loss, held-out loss/accuracy, accuracy per n; plus event
lines for phase changes, stops and resumes) and DIR/<model>/checkpoint.npz; then
DIR/learning_curves.png, DIR/attention_heatmap.png (RMC), DIR/results.json and a summary table.
"""


def _epilog() -> str:
    lines = ["presets (every value can be overridden by the options above):"]
    for name, preset in PRESETS.items():
        lines.append(textwrap.fill(f"{name}: {preset['summary']}.", width=92,
                                   initial_indent="  ", subsequent_indent="    "))
    lines += [
        "",
        "curriculum: --curriculum '3x1:3000,3x4:6000,4x4' trains 3000 steps on 3 objects x 1",
        "  feature, then 6000 steps on 3 x 4, then the rest on 4 x 4 (the last phase has no step",
        "  count).  A gated phase 'KxF:STEPS@ACC' ends as soon as the training accuracy on its",
        f"  own task over a block of {GATE_WINDOW} steps reaches ACC (e.g. 3x1:10000@0.9), after",
        "  STEPS steps at the latest: each model moves on when it has learnt the phase.  Phases",
        "  keep the layout of the target task (K, F); the held-out set is always the full target",
        "  task; every phase change is logged, written to metrics.jsonl and drawn on the plots.",
        "  '--curriculum none' trains on the full task from the start.",
        "",
        "time budget: --time-budget SECONDS applies to each model separately and to each",
        "  invocation (with --model all, every model gets its own budget).  At the budget the",
        "  model stops cleanly after the current step, is evaluated and checkpointed; continue",
        "  it later with --resume DIR.  Ctrl-C does the same for the running model (twice aborts).",
        "",
        "resume: --resume DIR continues every model of the run in DIR from its checkpoint (a",
        "  model that already finished is skipped; --model picks some of them).  Only --steps,",
        "  --time-budget, --eval-every and --checkpoint-every may change; the rest is read from",
        "  DIR/run_config.json.  A run interrupted and resumed ends with exactly the parameters",
        "  of an uninterrupted one.",
        "",
        "branch: --branch-from DIR --out NEW starts a new run where the run in DIR stands (each",
        "  model's checkpoint: weights, Adam moments and step count, weight average, data",
        "  stream, curriculum position, wall time; metrics so far are copied) and goes on with",
        "  other --lr, --lr-schedule, --lr-decay-rate, --lr-decay-steps, --min-lr, --clip-norm,",
        "  --batch-size or --steps: a way to try settings late in a long run without repeating",
        "  it.  The schedule is a function of the step count, which continues from DIR's.  Task,",
        "  model sizes, seed, dtype and held-out set stay DIR's.  Continue a branch with",
        "  --resume NEW.",
        "",
        "evaluate: --evaluate DIR trains nothing and writes nothing: it loads each model's",
        "  checkpoint in DIR and prints its held-out accuracy, loss and accuracy per n, for the",
        "  averaged weights and (when the run keeps an average) the last iterate.  By default",
        "  it uses the run's own held-out set, so it reproduces the last evaluation; --eval-size",
        "  N --eval-seed S draws a fresh one (e.g. 20000 examples with another seed).",
        "",
        "threads: small matrices run fastest on one BLAS thread; when this file is run as a",
        "  script, --threads N (default 1; 0 = the BLAS library's default) is applied before",
        "  NumPy loads.  An OPENBLAS_NUM_THREADS/OMP_NUM_THREADS already set is kept unless",
        "  --threads is given.",
        "",
        "workers: --workers N splits each training batch into N shards computed by N processes",
        "  at once (this one and N - 1 workers), then sums their gradients: the same update as",
        "  one process up to float rounding, faster while N cores are free (2 workers: 1.4 to",
        "  1.7 times on a 2-core machine; a tiny model is slower).  It may change on --resume;",
        "  the eval lines of metrics.jsonl record it.",
        "",
        "exit status: 0 success (including a stop at the time budget), 1 a model stopped on a",
        "  NaN/Inf loss, 2 bad arguments or run folder, 130 interrupted.",
        "",
        "examples:",
        "  python nth_farthest.py --preset quick --model all --out runs/quick",
        "  python nth_farthest.py --model rmc --preset quick --curriculum none --steps 3000 \\",
        "      --out runs/rmc-nocurr",
        "  python nth_farthest.py --preset curriculum8x16 --time-budget 7200 --out runs/rmc-8x16",
        "  python nth_farthest.py --resume runs/rmc-8x16 --time-budget 7200 --workers 2",
        "  python nth_farthest.py --model rmc --preset paper --time-budget 3600 --out runs/paper",
        "  python nth_farthest.py --resume runs/paper --time-budget 3600",
        "  python nth_farthest.py --evaluate runs/paper --eval-size 20000 --eval-seed 777",
        "  python -c \"import training; m, info = training.load_checkpoint('runs/quick/rmc')\"",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python nth_farthest.py`` (every default None = from preset)."""
    p = argparse.ArgumentParser(
        prog="nth_farthest.py", description=DESCRIPTION, epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=None)
    run = p.add_argument_group("run")
    run.add_argument("--model", type=_models_arg, metavar="{rmc,lstm,rrnn,all}",
                     help="model(s) to train: rmc, lstm, rrnn, all, or a comma-separated "
                          "list such as rmc,lstm (default: all" + "".join(
                              f"; preset {name}: {','.join(preset['default_models'])}"
                              for name, preset in PRESETS.items()
                              if "default_models" in preset) + ")")
    run.add_argument("--preset", choices=list(PRESETS),
                     help="starting configuration (default quick); see 'presets' below")
    run.add_argument("--out", metavar="DIR",
                     help="run folder to create (default runs/<preset>); refused if it already "
                          "holds a run")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoints")
    run.add_argument("--branch-from", metavar="DIR",
                     help="start a new run (--out) from the checkpoints of the run in DIR and "
                          "go on with other optimisation settings; see 'branch' below")
    run.add_argument("--evaluate", metavar="DIR",
                     help="train nothing: print the held-out accuracy, loss and accuracy per n "
                          "of the checkpoints in DIR (averaged weights and last iterate) on "
                          "--eval-size examples drawn with --eval-seed (default: the run's own "
                          "held-out set); writes nothing")
    run.add_argument("--time-budget", type=_optional(_nonneg_float), metavar="SECONDS",
                     help="wall-clock limit per model and per invocation, then stop cleanly "
                          "with a checkpoint; 0 or none = no limit (presets: "
                          f"{_preset_values('time_budget')})")
    run.add_argument("--threads", type=_nonneg_int, metavar="N",
                     help="BLAS threads when run as a script (default 1; 0 = library default)")
    run.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                     help="processes that share each step's batch (default 1; up to the "
                          "number of free cores); see 'workers' below")
    run.add_argument("--no-progress", action="store_true", default=False,
                     help="no progress line on stderr")
    run.add_argument("--no-plots", action="store_true", default=False,
                     help="skip learning_curves.png and attention_heatmap.png (results.json "
                          "and the summary table are still written)")

    task = p.add_argument_group("task")
    task.add_argument("--num-objects", type=_int_at_least(2), metavar="K",
                      help=f"objects per example, >= 2 (presets: {_preset_values('num_objects')})")
    task.add_argument("--num-features", type=_positive_int, metavar="F",
                      help=f"features per object (presets: {_preset_values('num_features')})")
    task.add_argument("--curriculum", metavar="SPEC",
                      help="phases 'KxF:STEPS[@ACC],...,KxF' or 'none'; see "
                           "'curriculum' below (presets: "
                           f"{_preset_values('curriculum')})")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=_positive_int, metavar="N",
                     help=f"training steps per model (presets: {_preset_values('steps')})")
    opt.add_argument("--batch-size", type=_positive_int, metavar="B",
                     help=f"examples per step (presets: {_preset_values('batch_size')})")
    lr_presets = "; ".join(
        f"{name} {preset['train']['lr']:g}" + "".join(
            f" ({kind} {lr:g})" for kind, lr in (preset["train"]["lr_by_model"] or {}).items())
        for name, preset in PRESETS.items())
    opt.add_argument("--lr", type=_positive_float,
                     help="initial Adam learning rate of every model (a preset may start one "
                          f"kind at another rate, in brackets) (presets: {lr_presets})")
    opt.add_argument("--lr-by-model", type=_optional(_lr_by_model), metavar="KIND=LR,...",
                     help="initial rates of some models, e.g. rrnn=3e-4,lstm=1e-3; the others "
                          "start at --lr; none = every model at --lr (replaces a preset's "
                          "per-model rates)")
    opt.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                     help="exponential: lr x RATE every --lr-decay-steps (smoothly) down to "
                          "--min-lr; linear: a straight line from the initial lr to --min-lr over "
                          "--lr-decay-steps, then constant (--lr-decay-rate unused) "
                          f"(presets: {_preset_values('lr_schedule')})")
    opt.add_argument("--lr-decay-rate", type=_positive_float, metavar="RATE",
                     help="exponential schedule: lr multiplied by RATE every --lr-decay-steps "
                          f"(smoothly), in (0, 1] (presets: {_preset_values('lr_decay_rate')})")
    opt.add_argument("--lr-decay-steps", type=_positive_int, metavar="N",
                     help="exponential: steps per factor RATE; linear: steps to reach --min-lr "
                          f"(presets: {_preset_values('lr_decay_steps')})")
    opt.add_argument("--min-lr", type=_nonneg_float, metavar="LR",
                     help=f"floor of the decaying lr (presets: {_preset_values('min_lr')})")
    opt.add_argument("--clip-norm", type=_optional(_positive_float), metavar="NORM",
                     help="clip the global gradient norm to NORM; none = no clipping "
                          f"(presets: {_preset_values('clip_norm')})")
    opt.add_argument("--ema-decay", type=_optional(_positive_float), metavar="DECAY",
                     help="evaluate (and save for load_checkpoint) a moving average of the "
                          "weights with this decay per step, in (0, 1), e.g. 0.999 (about the "
                          "last 1000 steps); none = the last iterate "
                          f"(presets: {_preset_values('ema_decay')})")
    opt.add_argument("--seed", type=_nonneg_int,
                     help=f"seed of the initial parameters and the training data "
                          f"(presets: {_preset_values('seed')})")
    opt.add_argument("--dtype", choices=("float32", "float64"),
                     help=f"floating-point type (presets: {_preset_values('dtype')})")

    ev = p.add_argument_group("evaluation and checkpoints")
    ev.add_argument("--eval-size", type=_positive_int, metavar="N",
                    help=f"held-out examples (presets: {_preset_values('eval_size')})")
    ev.add_argument("--eval-seed", type=_nonneg_int, metavar="SEED",
                    help=f"seed of the held-out set (presets: {_preset_values('eval_seed')})")
    ev.add_argument("--eval-every", type=_positive_int, metavar="N",
                    help=f"steps between evaluations (presets: {_preset_values('eval_every')})")
    ev.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                    help=f"steps between checkpoints (presets: "
                         f"{_preset_values('checkpoint_every')})")

    size = p.add_argument_group(
        "model sizes (each applies to the models named in brackets; values per preset)")
    size.add_argument("--mem-slots", type=_positive_int, metavar="N", help=_size_help("mem_slots"))
    size.add_argument("--head-size", type=_positive_int, metavar="N",
                      help="value width per head; memory row width = heads x head size; "
                           + _size_help("head_size"))
    size.add_argument("--num-heads", type=_positive_int, metavar="N", help=_size_help("num_heads"))
    size.add_argument("--num-blocks", type=_positive_int, metavar="N",
                      help=_size_help("num_blocks"))
    size.add_argument("--key-size", type=_optional(_positive_int), metavar="N",
                      help="query/key width per head; none = head size; "
                           + _size_help("key_size"))
    size.add_argument("--attention-mlp-layers", type=_positive_int, metavar="N",
                      help=_size_help("attention_mlp_layers"))
    size.add_argument("--gate-style", choices=("unit", "memory", "none"),
                      help=_size_help("gate_style"))
    size.add_argument("--hidden-size", type=_positive_int, metavar="N",
                      help="LSTM width; " + _size_help("hidden_size"))
    size.add_argument("--mlp-hidden", type=_mlp_hidden, metavar="W1,W2,...",
                      help="read-out MLP hidden widths (ReLU), then a linear layer to the "
                           "logits; 'none' = linear read-out; " + _size_help("mlp_hidden"))
    return p


def _given(args: argparse.Namespace, key: str) -> bool:
    return getattr(args, key, None) is not None


def _cli_value(key: str, value):
    """CLI spellings of 'no value' -> None."""
    if value == "none" and key in ("clip_norm", "time_budget", "key_size", "gate_style",
                                   "ema_decay", "lr_by_model"):
        return None
    if key == "time_budget" and value == 0:
        return None
    return value


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def _lr_applies_to_all(args: argparse.Namespace, cfg: dict) -> None:
    """--lr alone sets the rate of every model, a preset's (or parent run's) per-model rates
    included; with --lr-by-model the models named there keep their own."""
    if _given(args, "lr") and not _given(args, "lr_by_model"):
        cfg["lr_by_model"] = None


def _check_lr_kinds(args: argparse.Namespace, kinds: Sequence[str]) -> None:
    """A rate given in --lr-by-model for a model the run does not train would be stored and
    never used: refuse it."""
    rates = args.lr_by_model if isinstance(args.lr_by_model, dict) else {}
    unused = [kind for kind in rates if kind not in kinds]
    if unused:
        raise UsageError(f"--lr-by-model sets a rate for {', '.join(unused)}, which the run "
                         f"does not train (model(s) {','.join(kinds)})")


def _check_train_config(cfg: dict) -> None:
    """Cross-checks of the training settings (single values are checked by the parser)."""
    try:
        nf.task_width(cfg["num_objects"], cfg["num_features"])
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for key in ("steps", "batch_size", "eval_size", "eval_every", "checkpoint_every",
                "lr_decay_steps"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{_option(key)} must be an integer >= 1, got {value!r}")
    if cfg["lr_schedule"] not in LR_SCHEDULES:
        raise UsageError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, "
                         f"got {cfg['lr_schedule']!r}")
    if not 0 < cfg["lr_decay_rate"] <= 1:
        raise UsageError(f"--lr-decay-rate must lie in (0, 1], got {cfg['lr_decay_rate']}")
    if cfg["ema_decay"] is not None and not 0 < cfg["ema_decay"] < 1:
        raise UsageError(f"--ema-decay must lie in (0, 1) or be none, got {cfg['ema_decay']}")
    by_model = cfg["lr_by_model"]
    if by_model is not None and (not isinstance(by_model, dict) or any(
            k not in MODEL_KINDS or isinstance(v, bool) or not isinstance(v, (int, float))
            or not 0 < v < math.inf for k, v in by_model.items())):
        raise UsageError(f"lr_by_model must map model kinds {MODEL_KINDS} to learning rates "
                         f"> 0, got {by_model!r}")
    for kind in cfg.get("models") or MODEL_KINDS:
        lr = initial_lr(cfg, kind)
        if cfg["min_lr"] > lr:
            raise UsageError(f"--min-lr ({cfg['min_lr']}) must not exceed the {kind} model's "
                             f"initial --lr ({lr})")
    if cfg["dtype"] not in ("float32", "float64"):
        raise UsageError(f"--dtype must be float32 or float64, got {cfg['dtype']!r}")
    try:
        phases = parse_curriculum(cfg["curriculum"], cfg["num_objects"], cfg["num_features"])
    except ValueError as exc:
        raise UsageError(f"--curriculum: {exc}") from None
    cfg["phases"] = [list(p) for p in phases]
    cfg["curriculum"] = None if len(phases) == 1 and phases[0][:2] == (
        cfg["num_objects"], cfg["num_features"]) else format_curriculum(phases)


def _run_files(folder: str) -> list[str]:
    """The run outputs already present in ``folder``."""
    names = [RUN_CONFIG_NAME, RESULTS_NAME, CURVES_NAME, HEATMAP_NAME]
    names += [os.path.join(k, n) for k in MODEL_KINDS for n in (METRICS_NAME, CHECKPOINT_NAME)]
    return [n for n in names if os.path.exists(os.path.join(folder, n))]


def _resolve_new(args: argparse.Namespace) -> tuple[dict, str, list[str]]:
    preset_name = args.preset or "quick"
    preset = PRESETS[preset_name]
    kinds = args.model or list(preset.get("default_models", MODEL_KINDS))
    _check_lr_kinds(args, kinds)
    cfg = {"preset": preset_name, "models": kinds}
    for key in TRAIN_KEYS:
        cfg[key] = _cli_value(key, getattr(args, key)) if _given(args, key) \
            else preset["train"][key]
    _lr_applies_to_all(args, cfg)
    _check_train_config(cfg)
    sizes = {}
    for key in SIZE_KEYS:
        if _given(args, key) and not any(key in SIZE_KEYS_BY_KIND[k] for k in kinds):
            users = [k for k in MODEL_KINDS if key in SIZE_KEYS_BY_KIND[k]]
            raise UsageError(f"{_option(key)} applies to {'/'.join(users)}, not to the "
                             f"selected model(s) {','.join(kinds)}")
    for kind in kinds:
        s = dict(preset["models"][kind])
        for key in SIZE_KEYS_BY_KIND[kind]:
            if _given(args, key):
                s[key] = _cli_value(key, getattr(args, key))
        sizes[kind] = s
        try:
            build_model(kind, s, cfg["num_objects"], cfg["num_features"], dtype=cfg["dtype"])
        except (TypeError, ValueError) as exc:
            raise UsageError(f"cannot build the {kind} model with {s}: {exc}") from None
    cfg["model_sizes"] = sizes
    out = args.out or os.path.join("runs", preset_name)
    _check_new_out(out)
    return cfg, out, kinds


def _check_new_out(out: str) -> None:
    """Refuse an --out that is a file or already holds a run (nothing is ever overwritten)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a folder")
    if os.path.isdir(out):
        found = _run_files(out)
        if found:
            raise UsageError(f"--out {out} already holds a run ({', '.join(found[:3])}); "
                             f"continue it with --resume {out}, or choose another --out")


_RESUME_FORBIDDEN = [k for k in TRAIN_KEYS if k not in RESUMABLE_KEYS] + list(SIZE_KEYS) \
    + ["preset", "out"]
_BRANCH_FORBIDDEN = [k for k in TRAIN_KEYS if k not in BRANCH_KEYS] + list(SIZE_KEYS) \
    + ["preset"]


_OPTION_VERBS = {"--resume": "resume", "--branch-from": "branch from",
                 "--evaluate": "evaluate"}


def _read_run_config(run_dir: str, option: str) -> dict:
    """The ``run_config.json`` of the run in ``run_dir`` (``option`` names the flag in errors)."""
    config_path = os.path.join(run_dir, RUN_CONFIG_NAME)
    if not os.path.isdir(run_dir):
        raise UsageError(f"{option} {run_dir}: no such folder")
    if not os.path.isfile(config_path):
        raise UsageError(f"{option} {run_dir}: no {RUN_CONFIG_NAME} there, so no run to "
                         f"{_OPTION_VERBS[option]}")
    try:
        cfg = read_json(config_path)
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
        for key, value in _LATER_KEYS.items():
            cfg.setdefault(key, value)
        missing = [k for k in TRAIN_KEYS + ("models", "model_sizes", "phases") if k not in cfg]
        if missing:
            raise ValueError(f"missing entries {missing}")
    except (OSError, ValueError) as exc:
        raise UsageError(f"{option} {run_dir}: unreadable {RUN_CONFIG_NAME}: {exc}") from None
    return cfg


def _run_kinds(args: argparse.Namespace, cfg: Mapping, run_dir: str) -> list[str]:
    """The models of the run that ``--model`` selects (default: all of them)."""
    kinds = args.model or list(cfg["models"])
    foreign = [k for k in kinds if k not in cfg["models"]]
    if foreign:
        raise UsageError(f"--model {','.join(foreign)} is not part of the run in {run_dir} "
                         f"(models: {','.join(cfg['models'])})")
    return kinds


def _load_run_checkpoint(run_dir: str, kind: str, cfg: Mapping, option: str,
                         may_differ: Sequence[str]):
    """``load_checkpoint(..., averaged=False)`` of the ``kind`` model of the run in ``run_dir``,
    checked against the run config ``cfg`` (settings outside ``may_differ``, model sizes,
    shapes, dtype, steps); None if that model was never checkpointed."""
    ckpt = os.path.join(run_dir, kind, CHECKPOINT_NAME)
    if not os.path.exists(ckpt):
        return None
    try:
        model, info = load_checkpoint(ckpt, expect_kind=kind, averaged=False)
    except CheckpointError as exc:
        raise UsageError(f"{option} {run_dir}: {exc}") from None
    theirs = info.get("run_config") or {}
    mismatch = [k for k in TRAIN_KEYS if k not in may_differ
                and theirs.get(k, _LATER_KEYS.get(k)) != cfg[k]]
    if (theirs.get("model_sizes") or {}).get(kind) != cfg["model_sizes"].get(kind):
        mismatch.append("model_sizes")
    if mismatch:
        raise UsageError(f"{option} {run_dir}: {ckpt} belongs to another run (it differs "
                         f"in {', '.join(mismatch)})")
    expected = build_model(kind, cfg["model_sizes"][kind], cfg["num_objects"],
                           cfg["num_features"], dtype=cfg["dtype"]).config
    if _json_safe(expected) != info["model_config"] or info["dtype"] != cfg["dtype"]:
        raise UsageError(f"{option} {run_dir}: {ckpt} holds a model of another shape or "
                         "dtype than the run config")
    if info["step"] > cfg["steps"]:
        raise UsageError(f"{option} {run_dir}: {kind} is already at step {info['step']}, "
                         f"beyond --steps {cfg['steps']}")
    return model, info


def _resolve_resume(args: argparse.Namespace) -> tuple[dict, str, list[str], dict]:
    run_dir = args.resume
    changed = [_option(k) for k in _RESUME_FORBIDDEN if _given(args, k)]
    if changed:
        raise UsageError(f"--resume continues a run with its own settings; it cannot be combined "
                         f"with {', '.join(changed)} (only --steps, --time-budget, --eval-every, "
                         "--checkpoint-every, --model, --threads, --workers, --no-progress, "
                         "--no-plots)")
    cfg = _read_run_config(run_dir, "--resume")
    for key in RESUMABLE_KEYS:
        if _given(args, key):
            cfg[key] = _cli_value(key, getattr(args, key))
    _check_train_config(cfg)
    kinds = _run_kinds(args, cfg, run_dir)
    checkpoints = {}
    for kind in kinds:
        found = _load_run_checkpoint(run_dir, kind, cfg, "--resume", RESUMABLE_KEYS)
        if found is not None:                 # else never checkpointed: starts afresh
            checkpoints[kind] = found
    return cfg, run_dir, kinds, checkpoints


def _resolve_branch(args: argparse.Namespace) -> tuple[dict, str, list[str], dict]:
    """A new run in --out that starts where the run in --branch-from stands (its checkpoints:
    weights, Adam moments and step count, weight average, data stream, curriculum position,
    wall time) and goes on with other optimisation settings."""
    parent = args.branch_from
    changed = [_option(k) for k in _BRANCH_FORBIDDEN if _given(args, k)]
    if changed:
        raise UsageError(f"--branch-from keeps the task, model and data of its run; it cannot "
                         f"be combined with {', '.join(changed)} (only "
                         f"{', '.join(_option(k) for k in BRANCH_KEYS)}"
                         ", --model, --out and the run-time flags)")
    if args.out is None:
        raise UsageError("--branch-from needs --out, the new run folder")
    cfg = _read_run_config(parent, "--branch-from")
    before = {k: cfg[k] for k in BRANCH_KEYS}
    for key in BRANCH_KEYS:
        if _given(args, key):
            cfg[key] = _cli_value(key, getattr(args, key))
    _lr_applies_to_all(args, cfg)
    _check_train_config(cfg)
    kinds = _run_kinds(args, cfg, parent)
    _check_lr_kinds(args, kinds)
    checkpoints = {}
    for kind in kinds:
        found = _load_run_checkpoint(parent, kind, cfg, "--branch-from", BRANCH_KEYS)
        if found is None:
            raise UsageError(f"--branch-from {parent}: the {kind} model has no checkpoint "
                             f"there to branch from")
        checkpoints[kind] = found
    _check_new_out(args.out)
    cfg["models"] = kinds
    cfg["branched_from"] = {
        "run": os.path.abspath(parent),
        "steps": {kind: int(info["step"]) for kind, (_, info) in checkpoints.items()},
        "changed": {k: [before[k], cfg[k]] for k in BRANCH_KEYS
                    if k not in RESUMABLE_KEYS and before[k] != cfg[k]}}
    return cfg, args.out, kinds, checkpoints


def _start_branch(cfg: Mapping, run_dir: str, checkpoints: Mapping) -> None:
    """Write the first files of a branch: per model the parent's metrics up to the branch step
    followed by a ``branch`` event, and the parent's checkpoint re-labelled with this run's
    config (so ``--resume`` of the branch starts from it even before its first save)."""
    for kind, (model, info) in checkpoints.items():
        step = int(info["step"])
        model_dir = os.path.join(run_dir, kind)
        os.makedirs(model_dir, exist_ok=True)
        parent_metrics = os.path.join(os.path.dirname(info["path"]), METRICS_NAME)
        branch = {"event": "branch", "step": step, "wall_time": info.get("wall_time", 0.0),
                  "from": cfg["branched_from"]["run"],
                  "changed": cfg["branched_from"]["changed"]}
        _write_metrics(os.path.join(model_dir, METRICS_NAME),
                       [*_history_until(parent_metrics, step), branch])
        with np.load(info["path"], allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        meta = json.loads(str(arrays["meta"][()]))
        meta["run_config"] = dict(cfg)
        # The optimizer entry as the branch's own first save would write it (its rate,
        # schedule and clipping; the moments stay in the arrays).
        optimizer = _resumed_optimizer(model, info, cfg, kind).state_dict()
        meta["optimizer"] = {k: v for k, v in optimizer.items() if k not in ("m", "v")}
        arrays["meta"] = np.array(json.dumps(_json_safe(meta)))
        _atomic_write_bytes(os.path.join(model_dir, CHECKPOINT_NAME),
                            lambda fh: np.savez(fh, **arrays))


# What --evaluate reads from the command line besides its run folder (and --model, --threads).
_EVALUATE_KEYS = ("eval_size", "eval_seed")


def _resolve_evaluate(args: argparse.Namespace) -> tuple[dict, str, dict, int, int]:
    """The run in --evaluate, per model its last iterate, checkpoint info and weight average
    (an :class:`ExponentialMovingAverage`, None when the run keeps none), and the held-out set's
    size and seed (default: the run's own held-out set)."""
    run_dir = args.evaluate
    changed = [_option(k) for k in (*TRAIN_KEYS, *SIZE_KEYS, "preset", "out")
               if k not in _EVALUATE_KEYS and _given(args, k)]
    if args.workers != 1:
        changed.append("--workers")
    if changed:
        raise UsageError(f"--evaluate only reads the run in its folder; it cannot be combined "
                         f"with {', '.join(changed)} (only --eval-size, --eval-seed, --model, "
                         "--threads)")
    cfg = _read_run_config(run_dir, "--evaluate")
    kinds = _run_kinds(args, cfg, run_dir)
    checkpoints = {}
    for kind in kinds:
        # checked against the run like --resume's checkpoints; only the settings may differ
        found = _load_run_checkpoint(run_dir, kind, cfg, "--evaluate", TRAIN_KEYS)
        if found is None:
            continue
        model, info = found
        average = None
        if info.get("ema"):
            average = ExponentialMovingAverage(model, info["ema"]["decay"])
            try:
                average.load_state_dict(info["ema"])
            except (TypeError, ValueError) as exc:
                raise UsageError(f"--evaluate {run_dir}: the weight average in {info['path']} "
                                 f"is unusable: {exc}") from None
        checkpoints[kind] = (model, info, average)
    if not checkpoints:
        raise UsageError(f"--evaluate {run_dir}: no checkpoint of {', '.join(kinds)} there yet")
    size = cfg["eval_size"] if args.eval_size is None else args.eval_size
    seed = cfg["eval_seed"] if args.eval_seed is None else args.eval_seed
    return cfg, run_dir, checkpoints, size, seed


def evaluate_run(cfg: Mapping, run_dir: str, checkpoints: Mapping, size: int, seed: int) -> int:
    """Print the held-out metrics of every checkpoint in ``checkpoints`` (as
    :func:`_resolve_evaluate` returns them: averaged weights first, as training evaluates them,
    then the last iterate) on ``size`` examples of the run's full task drawn with ``seed``;
    writes nothing.  Returns the exit status: 1 if a loss is NaN/Inf, else 0."""
    K, F = cfg["num_objects"], cfg["num_features"]
    same = size == cfg["eval_size"] and seed == cfg["eval_seed"]
    print(f"evaluating {run_dir}: {size} examples of the full {K} x {F} task, held-out seed "
          f"{seed}" + (" (the run's own held-out set)" if same else ""), flush=True)
    eval_set = nf.make_eval_set(seed, size, K, F, dtype=cfg["dtype"])
    header = ("model", "step", "wall time", "weights", "held-out acc", "held-out loss",
              f"acc per n (n = 0 ... {K - 1})")
    rows = []
    finite = True

    def add_row(kind, model, info, weights):
        nonlocal finite
        metrics = evaluate(model, eval_set, K)
        finite = finite and bool(np.isfinite(metrics["heldout_loss"]))
        rows.append((kind, info["step"], _fmt_duration(info.get("wall_time")), weights,
                     _fmt_float(metrics["heldout_acc"]), _fmt_float(metrics["heldout_loss"]),
                     " ".join("-" if a is None else f"{a:.3f}" for a in metrics["acc_per_n"])))

    for kind, (model, info, average) in checkpoints.items():
        if average is not None:
            with average.applied():
                add_row(kind, model, info, "averaged")
        add_row(kind, model, info, "last")
    print(format_table(header, rows, left=1), flush=True)
    if not finite:
        print("nth_farthest.py: a held-out loss is NaN or Inf: those weights are broken",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line of ``nth_farthest.py``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = ["python", "nth_farthest.py", *argv]
    try:
        if args.resume is not None and args.branch_from is not None:
            raise UsageError("--resume and --branch-from exclude each other: resume a branch "
                             "with --resume BRANCH_DIR")
        if args.evaluate is not None:
            if args.resume is not None or args.branch_from is not None:
                raise UsageError("--evaluate reads a run and trains nothing: it excludes "
                                 "--resume and --branch-from")
            return evaluate_run(*_resolve_evaluate(args))
        if args.resume is not None:
            cfg, run_dir, kinds, checkpoints = _resolve_resume(args)
        elif args.branch_from is not None:
            cfg, run_dir, kinds, checkpoints = _resolve_branch(args)
        else:
            cfg, run_dir, kinds = _resolve_new(args)
            checkpoints = {}
        try:
            check_workers(args.workers, cfg["batch_size"])
        except ValueError as exc:
            raise UsageError(f"--{exc}") from None
    except UsageError as exc:
        print(f"nth_farthest.py: error: {exc}", file=sys.stderr)
        return 2

    # -- every check passed: from here on files are written --------------------------------
    cfg["commands"] = list(cfg.get("commands", [])) + [shlex.join(command)]
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, RUN_CONFIG_NAME), cfg)
    if args.branch_from is not None:
        _start_branch(cfg, run_dir, checkpoints)
    K, F = cfg["num_objects"], cfg["num_features"]
    phases = cfg["phases"]
    if len(phases) > 1 and phase_starts(phases)[-1] >= cfg["steps"]:
        print(f"warning: the curriculum reaches its last phase at step "
              f"{phase_starts(phases)[-1]}, after --steps {cfg['steps']}", file=sys.stderr)
    print(f"N-th Farthest: {K} objects x {F} features, models {', '.join(kinds)}, preset "
          f"{cfg['preset']}, {cfg['steps']} steps of batch {cfg['batch_size']}, curriculum "
          f"{cfg['curriculum'] or 'none'}; run folder {run_dir}", flush=True)
    if args.branch_from is not None:
        branch = cfg["branched_from"]
        at = ", ".join(f"{kind} at step {step}" for kind, step in branch["steps"].items())
        print(f"branched from {args.branch_from} ({at}); changed: {_changes(branch)}",
              flush=True)
    eval_set = nf.make_eval_set(cfg["eval_seed"], cfg["eval_size"], K, F, dtype=cfg["dtype"])

    outcomes = []
    interrupted = False
    with StopRequest() as stop:
        try:
            for kind in kinds:
                ckpt = checkpoints.get(kind)
                if ckpt is not None and ckpt[1]["step"] >= cfg["steps"]:
                    print(f"[{kind}] already at step {ckpt[1]['step']}/{cfg['steps']}: skipped",
                          flush=True)
                    continue
                outcome = train_model(kind, cfg, run_dir, eval_set, resume_from=ckpt,
                                      log=lambda msg: print(msg, flush=True),
                                      progress=not args.no_progress, stop=stop,
                                      workers=args.workers)
                outcomes.append(outcome)
                if outcome["status"] == "interrupted":
                    interrupted = True
                    break
        except KeyboardInterrupt:
            print(f"\ninterrupted: the last checkpoints are kept; continue with "
                  f"--resume {run_dir}", file=sys.stderr)
            interrupted = True

    results = write_run_outputs(run_dir, cfg, eval_set=eval_set, command=command,
                                make_plots=not args.no_plots)
    print()
    print(summary_table(results))
    print(f"\noutputs in {run_dir}: {RESULTS_NAME}"
          + (f", {CURVES_NAME}" if "learning_curves" in results else "")
          + (f", {HEATMAP_NAME}" if "attention_heatmap" in results else "")
          + ", <model>/metrics.jsonl, <model>/checkpoint.npz", flush=True)
    if interrupted:
        return 130
    if any(o["status"] == "nan" for o in outcomes):
        return 1
    return 0
