"""The command line's vocabulary: option types, the help text, and the parser of
``python nth_farthest.py`` (also installed as ``nth-farthest``), declared as data: one list of
options per group."""
from __future__ import annotations

import argparse
import math
import textwrap

from relational_rnn.config import DTYPES, LR_SCHEDULES
from relational_rnn.curriculum import GATE_WINDOW
from relational_rnn.presets import PRESETS
from relational_rnn.registry import MODEL_KINDS, SIZE_FIELDS_BY_KIND
from relational_rnn_cell import MEMORY_INPUTS, MEMORY_READOUTS


def _opt(flag: str, **kwargs) -> tuple[str, dict]:
    """One option: its flag and the keyword arguments of ``add_argument``."""
    return flag, kwargs


def _preset_values(key: str, kind: str | None = None, none: str = "none") -> str:
    """'quick X, curriculum Y, sonnet Z, paper W' for --help (``none`` shown for None)."""
    parts = []
    for name, preset in PRESETS.items():
        if kind is None:
            value = getattr(preset.train, key)
        else:
            value = getattr(preset.models[kind], key) if kind in preset.models else None
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        elif value is None:
            value = none
        parts.append(f"{name} {value}")
    return "; ".join(parts)


def _size_help(key: str, none: str = "none") -> str:
    kinds = [k for k in MODEL_KINDS if key in SIZE_FIELDS_BY_KIND[k]]
    return f"[{'/'.join(kinds)}] presets: " + " | ".join(
        f"{k}: {_preset_values(key, k, none)}" for k in kinds)


def int_at_least(low: int):
    """An argparse type: an integer >= ``low`` (``1_000`` allowed)."""
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") \
                from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


_positive_int = int_at_least(1)
_nonneg_int = int_at_least(0)


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


def _by_model(text: str, parse_value, example: str) -> dict:
    """'rrnn=3e-4,lstm=1e-3' -> {'rrnn': parse_value('3e-4'), 'lstm': parse_value('1e-3')}."""
    values = {}
    for item in text.split(","):
        kind, sep, value = item.strip().partition("=")
        kind = kind.strip().lower()
        if not sep or kind not in MODEL_KINDS:
            raise argparse.ArgumentTypeError(
                f"expected KIND=VALUE pairs with KIND one of {', '.join(MODEL_KINDS)}, such as "
                f"{example}, got {text!r}")
        values[kind] = parse_value(value)
    return values


def _lr_by_model(text: str) -> dict:
    """'rrnn=3e-4,lstm=1e-3' -> {'rrnn': 3e-4, 'lstm': 1e-3}."""
    return _by_model(text, _positive_float, "rrnn=3e-4,lstm=1e-3")


def _decay_steps_by_model(text: str) -> dict:
    """'rrnn=60000' -> {'rrnn': 60000}."""
    return _by_model(text, _positive_int, "rrnn=60000")


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
        lines.append(textwrap.fill(f"{name}: {preset.summary}.", width=92,
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
        "threads: small matrices run fastest on one BLAS thread: --threads N (default 1; 0 = the",
        "  BLAS library's own default) sets the BLAS threads of this process and of its workers",
        "  (through threadpoolctl, after NumPy has loaded).  An OPENBLAS_NUM_THREADS or",
        "  OMP_NUM_THREADS already set is kept unless --threads is given.",
        "",
        "workers: --workers N splits each training batch into N shards computed by N processes",
        "  at once (this one and N - 1 workers), then sums their gradients: the same update as",
        "  one process up to float rounding, faster while N cores are free (2 workers: 1.4 to",
        "  1.7 times on a 2-core machine; a tiny model is slower).  It may change on --resume;",
        "  the eval lines of metrics.jsonl record it.",
        "",
        "mpi: mpiexec -n N python nth_farthest.py ... (or mpiexec -n N nth-farthest ...) shares",
        "  each batch among N MPI ranks, on one machine or several (a hostfile), cut and",
        "  weighted as --workers N does; rank 0 alone writes the run folder, which resumes with",
        "  or without mpiexec.  Needs pip install -e \".[mpi]\" (mpi4py and MPICH); without an",
        "  MPI launcher mpi4py is never imported (RELATIONAL_RNN_MPI=0/1 forces it off/on).",
        "",
        "faults: a crash costs at most the steps since the last checkpoint; --resume continues",
        "  exactly (a torn last line of metrics.jsonl is dropped with a notice).  A damaged",
        "  history, a lost checkpoint or an unfinished branch is refused with one line and the",
        "  folder untouched; a branch is renamed into place only when complete.",
        "",
        "exit status: 0 success (including a stop at the time budget), 1 a model stopped on a",
        "  NaN/Inf loss or a file could not be written (full disk, read-only folder), 2 bad",
        "  arguments or run folder, 130 interrupted.",
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
        "  python -c \"from relational_rnn import load_checkpoint; m, i = load_checkpoint('runs/quick/rmc')\"",
    ]
    return "\n".join(lines)


def _run_options() -> list:
    """The options of the group 'run'."""
    return [
        _opt("--model", type=_models_arg, metavar="{rmc,lstm,rrnn,all}",
             help="model(s) to train: rmc, lstm, rrnn, all, or a comma-separated "
                  "list such as rmc,lstm (default: all" + "".join(
                      f"; preset {name}: {','.join(preset.default_models)}"
                      for name, preset in PRESETS.items()
                      if preset.default_models != MODEL_KINDS) + ")"),
        _opt("--preset", choices=list(PRESETS),
             help="starting configuration (default quick); see 'presets' below"),
        _opt("--out", metavar="DIR",
             help="run folder to create (default runs/<preset>); refused if it already "
                  "holds a run"),
        _opt("--resume", metavar="DIR", help="continue the run in DIR from its checkpoints"),
        _opt("--branch-from", metavar="DIR",
             help="start a new run (--out) from the checkpoints of the run in DIR and "
                  "go on with other optimisation settings; see 'branch' below"),
        _opt("--evaluate", metavar="DIR",
             help="train nothing: print the held-out accuracy, loss and accuracy per n "
                  "of the checkpoints in DIR (averaged weights and last iterate) on "
                  "--eval-size examples drawn with --eval-seed (default: the run's own "
                  "held-out set); writes nothing"),
        _opt("--time-budget", type=_optional(_nonneg_float), metavar="SECONDS",
             help="wall-clock limit per model and per invocation, then stop cleanly "
                  "with a checkpoint; 0 or none = no limit (presets: "
                  f"{_preset_values('time_budget')})"),
        _opt("--threads", type=_nonneg_int, metavar="N",
             help="BLAS threads per process (default 1; 0 = library default)"),
        _opt("--workers", type=_positive_int, default=1, metavar="N",
             help="processes that share each step's batch (default 1; up to the "
                  "number of free cores); see 'workers' below"),
        _opt("--no-progress", action="store_true", default=False,
             help="no progress line on stderr"),
        _opt("--no-plots", action="store_true", default=False,
             help="skip learning_curves.png and attention_heatmap.png (results.json "
                  "and the summary table are still written)"),
    ]


def _task_options() -> list:
    """The options of the group 'task'."""
    return [
        _opt("--num-objects", type=int_at_least(2), metavar="K",
             help=f"objects per example, >= 2 (presets: {_preset_values('num_objects')})"),
        _opt("--num-features", type=_positive_int, metavar="F",
             help=f"features per object (presets: {_preset_values('num_features')})"),
        _opt("--curriculum", metavar="SPEC",
             help="phases 'KxF:STEPS[@ACC],...,KxF' or 'none'; see "
                  "'curriculum' below (presets: "
                  f"{_preset_values('curriculum')})"),
    ]


def _full_task_rates() -> str:
    """The presets' full-task rates, for the help."""
    return "; ".join(f"{name} " + (",".join(f"{kind}={lr:g}" for kind, lr in rates.items())
                                   if rates else "none")
                     for name, preset in PRESETS.items()
                     for rates in [preset.train.full_task_lr_by_model])


def _decay_steps_by_preset() -> str:
    """The presets' per-model decay steps, for the help."""
    return "; ".join(f"{name} " + ",".join(f"{kind}={n}" for kind, n in steps.items())
                     for name, preset in PRESETS.items()
                     for steps in [preset.train.lr_decay_steps_by_model] if steps) or "none"


def _optimisation_options() -> list:
    """The options of the group 'optimisation'."""
    lr_presets = "; ".join(
        f"{name} {preset.train.lr:g}" + "".join(
            f" ({kind} {lr:g})" for kind, lr in (preset.train.lr_by_model or {}).items())
        for name, preset in PRESETS.items())
    return [
        _opt("--steps", type=_positive_int, metavar="N",
             help=f"training steps per model (presets: {_preset_values('steps')})"),
        _opt("--batch-size", type=_positive_int, metavar="B",
             help=f"examples per step (presets: {_preset_values('batch_size')})"),
        _opt("--lr", type=_positive_float,
             help="initial Adam learning rate of every model (a preset may start one "
                  f"kind at another rate, in brackets) (presets: {lr_presets})"),
        _opt("--lr-by-model", type=_optional(_lr_by_model), metavar="KIND=LR,...",
             help="initial rates of some models, e.g. rrnn=3e-4,lstm=1e-3; the others "
                  "start at --lr; none = every model at --lr (replaces a preset's "
                  "per-model rates)"),
        _opt("--full-task-lr-by-model", type=_optional(_lr_by_model), metavar="KIND=LR,...",
             help="rates of some models from the step the curriculum reaches the full task "
                  "(its last phase) on, e.g. rrnn=6e-4: the schedule's line restarted from "
                  "that rate at the same step count; the others keep theirs; none = no "
                  f"change at the full task (presets: {_full_task_rates()})"),
        _opt("--lr-schedule", choices=LR_SCHEDULES,
             help="exponential: lr x RATE every --lr-decay-steps (smoothly) down to "
                  "--min-lr; linear: a straight line from the initial lr to --min-lr over "
                  "--lr-decay-steps, then constant (--lr-decay-rate unused) "
                  f"(presets: {_preset_values('lr_schedule')})"),
        _opt("--lr-decay-rate", type=_positive_float, metavar="RATE",
             help="exponential schedule: lr multiplied by RATE every --lr-decay-steps "
                  f"(smoothly), in (0, 1] (presets: {_preset_values('lr_decay_rate')})"),
        _opt("--lr-decay-steps", type=_positive_int, metavar="N",
             help="exponential: steps per factor RATE; linear: steps to reach --min-lr "
                  f"(presets: {_preset_values('lr_decay_steps')})"),
        _opt("--lr-decay-steps-by-model", type=_optional(_decay_steps_by_model),
             metavar="KIND=N,...",
             help="--lr-decay-steps of some models, e.g. rrnn=60000; the others use "
                  "--lr-decay-steps; none = every model the same (replaces a preset's "
                  f"per-model values) (presets: {_decay_steps_by_preset()})"),
        _opt("--min-lr", type=_nonneg_float, metavar="LR",
             help=f"floor of the decaying lr (presets: {_preset_values('min_lr')})"),
        _opt("--clip-norm", type=_optional(_positive_float), metavar="NORM",
             help="clip the global gradient norm to NORM; none = no clipping "
                  f"(presets: {_preset_values('clip_norm')})"),
        _opt("--ema-decay", type=_optional(_positive_float), metavar="DECAY",
             help="evaluate (and save for load_checkpoint) a moving average of the "
                  "weights with this decay per step, in (0, 1), e.g. 0.999 (about the "
                  "last 1000 steps); none = the last iterate "
                  f"(presets: {_preset_values('ema_decay')})"),
        _opt("--seed", type=_nonneg_int,
             help=f"seed of the initial parameters and the training data "
                  f"(presets: {_preset_values('seed')})"),
        _opt("--dtype", choices=DTYPES,
             help=f"floating-point type (presets: {_preset_values('dtype')})"),
    ]


def _evaluation_options() -> list:
    """The options of the group 'evaluation and checkpoints'."""
    return [
        _opt("--eval-size", type=_positive_int, metavar="N",
             help=f"held-out examples (presets: {_preset_values('eval_size')})"),
        _opt("--eval-seed", type=_nonneg_int, metavar="SEED",
             help=f"seed of the held-out set (presets: {_preset_values('eval_seed')})"),
        _opt("--eval-every", type=_positive_int, metavar="N",
             help=f"steps between evaluations (presets: {_preset_values('eval_every')})"),
        _opt("--checkpoint-every", type=_positive_int, metavar="N",
             help=f"steps between checkpoints (presets: "
                  f"{_preset_values('checkpoint_every')})"),
    ]


def _size_options() -> list:
    """The options of the group 'model sizes'."""
    return [
        _opt("--mem-slots", type=_positive_int, metavar="N", help=_size_help("mem_slots")),
        _opt("--head-size", type=_positive_int, metavar="N",
             help="value width per head; memory row width = heads x head size; "
                  + _size_help("head_size")),
        _opt("--num-heads", type=_positive_int, metavar="N", help=_size_help("num_heads")),
        _opt("--num-blocks", type=_positive_int, metavar="N",
             help=_size_help("num_blocks")),
        _opt("--key-size", type=_optional(_positive_int), metavar="N",
             help="query/key width per head; none = head size; "
                  + _size_help("key_size")),
        _opt("--attention-mlp-layers", type=_positive_int, metavar="N",
             help=_size_help("attention_mlp_layers")),
        _opt("--gate-style", choices=("unit", "memory", "none"),
             help=_size_help("gate_style")),
        _opt("--hidden-size", type=_positive_int, metavar="N",
             help="LSTM width; " + _size_help("hidden_size")),
        _opt("--mlp-hidden", type=_mlp_hidden, metavar="W1,W2,...",
             help="read-out MLP hidden widths (ReLU), then a linear layer to the "
                  "logits; 'none' = linear read-out; " + _size_help("mlp_hidden")),
        _opt("--memory-input", choices=MEMORY_INPUTS,
             help="what the RelationalRNN's memory reads each step: hidden = the LSTM's "
                  "h_t (the model's default), input_and_hidden = the step's input beside "
                  "h_t; " + _size_help("memory_input", none="hidden")),
        _opt("--memory-readout", choices=MEMORY_READOUTS,
             help="how the RelationalRNN reads its memory: mean = the mean of its slots "
                  "(the model's default), slots = all slots side by side; "
                  + _size_help("memory_readout", none="mean")),
    ]


OPTION_GROUPS = (("run", _run_options), ("task", _task_options),
                 ("optimisation", _optimisation_options),
                 ("evaluation and checkpoints", _evaluation_options),
                 ("model sizes (each applies to the models named in brackets; values per preset)",
                  _size_options))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python nth_farthest.py`` (every default None = from preset)."""
    p = argparse.ArgumentParser(
        prog="nth_farthest.py", description=DESCRIPTION, epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=None)
    for title, options in OPTION_GROUPS:
        group = p.add_argument_group(title)
        for flag, kwargs in options():
            group.add_argument(flag, **kwargs)
    return p
