"""Profile whole training steps of each model with cProfile: where the time of a step goes.

One step here is the trainer's step (``relational_rnn/trainer.py``): draw a fresh batch of the
N-th Farthest task, clear the gradients, forward, softmax cross-entropy and accuracy, backward,
Adam with global-norm clipping and the run's rate schedule, and the update of the weight
average.  Each case is a model of a training preset (batch 128, float32, the full task):

* ``rmc``      RMC 4 slots x 2 heads x 32, read-out 4 x 256, 4 x 4 task (preset ``curriculum``)
* ``lstm``     LSTM 256, read-out 4 x 256, 4 x 4 task (preset ``curriculum``)
* ``rrnn``     RelationalRNN: LSTM 64 + the same memory, read-out 2 x 128, 4 x 4 task (preset
               ``curriculum``; an LSTM of 128 and a read-out of 4 x 256 before 2026-12-06)
* ``rmc8x16``  RMC 8 slots x 2 heads x 32, 8 x 16 task (preset ``curriculum8x16``)

``--steps`` steps run under cProfile after ``--warmup`` unprofiled ones.  Printed per case:

1. the top functions by own time, with every NumPy builtin (matmul, ufuncs, reductions, and
   NumPy's own Python wrappers such as ``np.mean``) folded into the Python function of the
   library that called it.  pstats records, for each function, the own time spent under each
   of its callers; those per-caller times are what is added to the callers (no guessing);
2. the breakdown by part: attention, LayerNorm, gates/memory (the RMC's gates, memory update,
   input projection and time loop), MLP (the attention block's MLP), LSTM, read-out (the
   classifier's MLP and the RelationalRNN's read-out, combination and output layers), loss,
   Adam (the update, schedule and ``zero_grad``), clipping (the global norm and the scaling),
   EMA, data, other (argument checks, the profiled loop).  A function shared by several parts
   (``linear_forward``, ``MLP.forward``, ``sigmoid`` ...) passes its time on to its callers,
   in proportion to the time it spent under each (pstats' per-caller times again).  The parts
   add up to the profiled total.

cProfile charges a cost to every Python-level call, so profiled steps are slower than plain
ones, and Python-heavy parts are inflated most: the unprofiled median step time is printed next
to the profiled one.  ``--clock cpu`` (the default) counts this process's CPU time, which
ignores the time other processes hold the cores (meaningful with one BLAS thread).

Usage::

    python benchmarks/profile_step.py                              # the four cases
    python benchmarks/profile_step.py --cases rmc8x16 --steps 40 --top 30
    python benchmarks/profile_step.py --quick-run --json prof.json # tiny: a smoke test
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import fnmatch
import gc
import inspect
import json
import os
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import bench_step  # noqa: E402  (the FLOP count and the matmul peak)
import layers  # noqa: E402
import nth_farthest as nf  # noqa: E402
from relational_rnn.optimization import make_average, make_optimizer  # noqa: E402
from relational_rnn.presets import PRESETS  # noqa: E402
from relational_rnn.registry import build_model  # noqa: E402
from relational_rnn.threads import limit_blas_threads  # noqa: E402

# case -> (preset, model kind, description)
CASES = {
    "rmc": ("curriculum", "rmc", "RMC 4 x 4 (4 slots x 2 heads x 32, read-out 4 x 256)"),
    "lstm": ("curriculum", "lstm", "LSTM 256, 4 x 4 (read-out 4 x 256)"),
    "rrnn": ("curriculum", "rrnn", "RelationalRNN 64 + memory 4 x 2 x 32, read-out 2 x 128, "
                                   "4 x 4"),
    "rmc8x16": ("curriculum8x16", "rmc", "RMC 8 x 16 (8 slots x 2 heads x 32, read-out "
                                         "4 x 256)"),
}
# --quick-run: every case at these sizes (3 objects x 2 features, batch 8).
TINY_SIZES = dict(mem_slots=2, head_size=4, num_heads=2, hidden_size=8, mlp_hidden=(16,))
TINY_TASK = dict(num_objects=3, num_features=2, batch_size=8)

PARTS = ("attention", "layernorm", "gates/memory", "mlp", "lstm", "read-out", "loss", "adam",
         "clipping", "ema", "data", "other")

# Where a function's own time goes: the first matching "module:qualified name" pattern
# decides; None passes the time on to the function's callers (shared helpers).  Functions of
# no module of the library (NumPy's Python wrappers, the standard library) pass it on too.
RULES = (
    ("attention:*", "attention"),
    ("layers:softmax", "attention"),
    ("layers:softmax_backward", "attention"),
    ("layers:layernorm_*", "layernorm"),
    ("layers:_row_blocks", "layernorm"),
    ("layers:LayerNorm.*", "layernorm"),
    ("layers:softmax_cross_entropy", "loss"),
    ("layers:check_*", "other"),
    ("layers:Module.zero_grad", "adam"),
    ("layers:*", None),
    ("relational_memory:RMCClassifier.*", "read-out"),
    ("relational_memory:*", "gates/memory"),
    ("lstm_baseline:LSTMClassifier.*", "read-out"),
    ("lstm_baseline:*", "lstm"),
    ("relational_rnn_cell:RelationalRNNClassifier.*", "read-out"),
    ("relational_rnn_cell:RelationalRNN._lstm_*", "lstm"),
    ("relational_rnn_cell:RelationalRNN._memory_*", "gates/memory"),
    ("relational_rnn_cell:RelationalRNN._readout_*", "read-out"),
    ("relational_rnn_cell:*", "other"),
    ("optimizer:_global_norm", "clipping"),
    ("optimizer:_sum_squares", "clipping"),
    ("optimizer:_norm_buffer", "clipping"),
    ("optimizer:clip_global_norm", "clipping"),
    ("optimizer:*._clip*", "clipping"),
    ("optimizer:*._scale*", "clipping"),
    ("optimizer:ExponentialMovingAverage.*", "ema"),
    ("optimizer:*", "adam"),
    ("nth_farthest:*", "data"),
    ("profile_step:loss_and_accuracy", "loss"),
    ("profile_step:*", "other"),
)
# A shared function whose part depends on its caller: (caller, callee) -> part.
EDGE_RULES = {
    ("relational_memory:RelationalMemory.step", "layers:MLP.forward"): "mlp",
    ("relational_memory:RelationalMemory.step_backward", "layers:MLP.backward"): "mlp",
}
LIBRARY_MODULES = ("layers", "attention", "relational_memory", "lstm_baseline",
                   "relational_rnn_cell", "optimizer", "nth_farthest", "profile_step")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES),
                   help="models to profile (default: all four)")
    p.add_argument("--steps", type=int, default=20, help="profiled steps per case (default 20)")
    p.add_argument("--warmup", type=int, default=3,
                   help="unprofiled steps first (default 3)")
    p.add_argument("--timed", type=int, default=20,
                   help="unprofiled steps timed for the plain step time (default 20)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="cpu: this process's CPU time (default; ignores the time other "
                        "processes hold the cores); wall: elapsed time")
    p.add_argument("--top", type=int, default=20, help="rows of the top-functions table")
    p.add_argument("--quick-run", action="store_true",
                   help="tiny models, 2 profiled steps: finishes in seconds")
    p.add_argument("--json", metavar="PATH", help="also write the figures to a JSON file")
    args = p.parse_args(argv)
    if args.quick_run:
        args.steps, args.warmup, args.timed = min(args.steps, 2), min(args.warmup, 1), 2
    if args.steps < 1 or args.warmup < 0 or args.timed < 1 or args.threads < 1 or args.top < 1:
        p.error("--steps, --timed, --threads and --top must be >= 1, --warmup >= 0")
    return args


# --------------------------------------------------------------------------------------------
# The training step
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """A model with its optimizer, weight average, data stream and task."""

    name: str
    kind: str
    title: str
    sizes: object
    model: object
    optimizer: object
    average: object
    rng: np.random.Generator
    batch_size: int
    num_objects: int
    num_features: int
    dtype: np.dtype


def build_case(name: str, quick: bool = False, seed: int = 0) -> Case:
    """The model of ``name`` (see CASES) with the preset's optimizer and average."""
    preset_name, kind, title = CASES[name]
    preset = PRESETS[preset_name]
    train, sizes = preset.train, preset.models[kind]
    if quick:
        sizes = dataclasses.replace(sizes, **{k: v for k, v in TINY_SIZES.items()
                                              if getattr(sizes, k) not in (None, ())})
        train = train.replace(**TINY_TASK)
        title += " [tiny]"
    dtype = np.dtype(train.dtype)
    model = build_model(kind, sizes, train.num_objects, train.num_features, dtype=dtype,
                        rng=np.random.default_rng(seed))
    return Case(name=name, kind=kind, title=title, sizes=sizes, model=model,
                optimizer=make_optimizer(model, train, kind), average=make_average(model, train),
                rng=np.random.default_rng(seed + 1), batch_size=train.batch_size,
                num_objects=train.num_objects, num_features=train.num_features, dtype=dtype)


def flop_config(case: Case) -> dict:
    """The case in the vocabulary of ``bench_step.count_flops``."""
    s = case.sizes
    return dict(objects=case.num_objects, features=case.num_features, batch=case.batch_size,
                mem_slots=s.mem_slots, num_heads=s.num_heads, head_size=s.head_size,
                num_blocks=s.num_blocks, mlp_layers=s.attention_mlp_layers,
                readout=tuple(s.mlp_hidden), lstm_hidden=s.hidden_size, rrnn_hidden=s.hidden_size)


def loss_and_accuracy(logits: np.ndarray, labels: np.ndarray):
    """The mean cross-entropy, its gradient and the count of correct answers."""
    loss, dlogits, _ = layers.softmax_cross_entropy(logits, labels)
    return loss, dlogits, int(np.count_nonzero(np.argmax(logits, axis=1) == labels))


def train_step(case: Case) -> float:
    """One training step, as the trainer does it (one process); returns the loss."""
    x, y, _ = nf.make_batch(case.rng, case.batch_size, case.num_objects, case.num_features,
                            dtype=case.dtype)
    model = case.model
    model.zero_grad()
    logits, cache = model.forward(x)
    loss, dlogits, _ = loss_and_accuracy(logits, y)
    model.backward(dlogits, cache)
    del cache
    case.optimizer.step()                 # clipping, then Adam
    if case.average is not None:
        case.average.update()
    return loss


def clock_of(name: str):
    return time.process_time if name == "cpu" else time.perf_counter


def plain_step_ms(case: Case, steps: int, clock) -> float:
    """Median milliseconds of ``steps`` unprofiled steps."""
    times = []
    for _ in range(steps):
        t0 = clock()
        train_step(case)
        times.append(clock() - t0)
    return float(np.median(times)) * 1e3


def profile_steps(case: Case, steps: int, clock) -> pstats.Stats:
    """cProfile ``steps`` training steps with ``clock`` as its timer."""
    prof = cProfile.Profile(clock)
    for _ in range(steps):
        prof.enable()
        train_step(case)
        prof.disable()
    return pstats.Stats(prof)


# --------------------------------------------------------------------------------------------
# Names: cProfile's (file, first line, code name) -> "module:Class.method"
# --------------------------------------------------------------------------------------------


def _code_objects(module):
    """(qualified name, code) of every function and method defined in ``module``."""
    for name, obj in vars(module).items():
        if inspect.isclass(obj) and obj.__module__ == module.__name__:
            for attr, member in vars(obj).items():
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                member = inspect.unwrap(member) if callable(member) else member
                if inspect.isfunction(member):
                    yield f"{obj.__qualname__}.{attr}", member.__code__
        elif inspect.isfunction(obj) and obj.__module__ == module.__name__:
            yield name, inspect.unwrap(obj).__code__


def qualified_names() -> dict:
    """(file, first line) -> 'module:qualname' for the library's loaded modules."""
    index = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None) or ""
        short = Path(path).stem
        if short not in LIBRARY_MODULES or module.__name__ not in (short, "__main__"):
            continue
        for qual, code in _code_objects(module):
            index[(code.co_filename, code.co_firstlineno)] = f"{short}:{qual}"
    return index


class CallGraph:
    """The profile as a graph: own times, per-caller times, and how time passes to callers."""

    def __init__(self, stats: pstats.Stats, steps: int):
        self.steps = steps
        self.names = qualified_names()
        # every function except the profiler's own 'disable' call
        self.funcs = {f: v for f, v in stats.stats.items() if "_lsprof.Profiler" not in f[2]}
        self.total = sum(v[2] for v in self.funcs.values())

    def name(self, f) -> str:
        path, line, code = f
        if path == "~":
            return code
        return self.names.get((path, line), f"{Path(path).name}:{line}({code})")

    def is_library(self, f) -> bool:
        return ":" in self.name(f) and self.name(f).split(":")[0] in LIBRARY_MODULES

    def part_rule(self, f, child=None):
        """The part of ``f`` (of the edge f -> child when given), or None: its callers'."""
        if not self.is_library(f):
            return None
        name = self.name(f)
        if child is not None and (name, self.name(child)) in EDGE_RULES:
            return EDGE_RULES[(name, self.name(child))]
        for pattern, part in RULES:
            if fnmatch.fnmatchcase(name, pattern):
                return part
        return None

    def callers(self, f, own: bool):
        """(caller, fraction) of ``f``'s time: own time (own) or cumulative time per caller."""
        entries = self.funcs[f][4]
        pairs = [(c, v[2 if own else 3]) for c, v in entries.items() if c != f and c in self.funcs]
        total = sum(w for _, w in pairs)
        if total <= 0:                      # no time recorded per caller: split by calls
            pairs = [(c, v[1]) for c, v in entries.items() if c != f and c in self.funcs]
            total = sum(w for _, w in pairs)
        return [(c, w / total) for c, w in pairs] if total > 0 else []

    def shares(self, f, label, own: bool, memo: dict, depth: int = 0) -> dict:
        """How a unit of time at ``f`` splits over labels: ``label(f, child)`` names a
        terminal function (or edge), None passes the time on to ``f``'s callers."""
        mine = label(f, None)
        if mine is not None:
            return {mine: 1.0}
        if (f, own) in memo:
            return memo[(f, own)]
        out: dict = {}
        callers = self.callers(f, own) if depth < 40 else []
        if not callers:
            out = {label(f, "root"): 1.0}
        for c, w in callers:
            edge = label(c, f)
            sub = {edge: 1.0} if edge is not None else self.shares(c, label, False, memo,
                                                                   depth + 1)
            for key, v in sub.items():
                out[key] = out.get(key, 0.0) + w * v
        memo[(f, own)] = out
        return out

    def spread(self, label) -> dict:
        """Every function's own time spread over labels (per step, seconds)."""
        memo, out = {}, {}
        for f, v in self.funcs.items():
            for key, share in self.shares(f, label, True, memo).items():
                out[key] = out.get(key, 0.0) + v[2] * share / self.steps
        return out

    def breakdown(self) -> dict:
        """Seconds per step of each part (every part of PARTS, in order)."""
        def label(f, child):
            return "other" if child == "root" else self.part_rule(f, child)
        spread = self.spread(label)
        return {p: spread.get(p, 0.0) for p in PARTS}

    def folded(self) -> dict:
        """Seconds per step of each library function: its own time plus the own time of the
        builtins and NumPy wrappers it called (per-caller times)."""
        def label(f, child):
            if child == "root" or self.is_library(f):
                return f
            return None
        return self.spread(label)

    def builtin_times(self) -> dict:
        """Seconds per step of each builtin (C function), summed over callers."""
        return {self.name(f): v[2] / self.steps for f, v in self.funcs.items() if f[0] == "~"}

    def calls(self, f) -> float:
        return self.funcs[f][1] / self.steps if f in self.funcs else 0.0


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def top_rows(graph: CallGraph, top: int) -> list[dict]:
    """The ``top`` library functions by own time with builtins folded in."""
    folded = graph.folded()
    rows = []
    for f, sec in sorted(folded.items(), key=lambda kv: -kv[1])[:top]:
        builtins = {}
        for g, v in graph.funcs.items():
            if g[0] == "~" and f in v[4]:
                builtins[graph.name(g)] = v[4][f][2] / graph.steps
        main = max(builtins.items(), key=lambda kv: kv[1]) if builtins else None
        part = graph.part_rule(f) if graph.is_library(f) else None
        rows.append(dict(function=graph.name(f), ms=sec * 1e3, calls=graph.calls(f),
                         part=part or "(callers')", main_builtin=main))
    return rows


def short_builtin(name: str) -> str:
    """'<method 'reduce' of 'numpy.ufunc' objects>' -> 'ufunc.reduce' and the like."""
    name = name.replace("<built-in method ", "").replace("<method ", "").strip("<>")
    name = name.replace("numpy._core._multiarray_umath.", "np.")
    if " of " in name:
        meth, _, owner = name.partition(" of ")
        name = owner.strip("'").replace(" objects", "").replace("'", "") + "." + meth.strip("'")
    return name


def print_case(result: dict, top: int) -> None:
    print(f"\n== {result['title']}: profiled {result['profiled_ms']:.2f} ms/step "
          f"(unprofiled median {result['plain_ms']:.2f} ms/step), {result['steps']} steps, "
          f"{result['calls_per_step']:.0f} function calls per step")
    print(f"\n  top {top} functions by own time, NumPy builtins folded into their caller")
    print(f"  {'ms/step':>8} {'%':>5} {'calls':>6}  {'part':<13} {'function':<44} main builtin")
    total = result["profiled_ms"]
    for r in result["top"]:
        mb = r["main_builtin"]
        main = f"{short_builtin(mb[0])} {mb[1] * 1e3:.2f}" if mb else ""
        print(f"  {r['ms']:>8.3f} {100 * r['ms'] / total:>5.1f} {r['calls']:>6.0f}  "
              f"{r['part']:<13} {r['function'][:44]:<44} {main}")
    print("\n  breakdown by part (ms/step, % of the profiled step)")
    for part, ms in result["parts_ms"].items():
        print(f"  {part:<13} {ms:>8.3f} {100 * ms / total:>5.1f}%")
    print(f"  {'total':<13} {sum(result['parts_ms'].values()):>8.3f} "
          f"{100 * sum(result['parts_ms'].values()) / total:>5.1f}%")
    b = result["builtins"]
    print(f"\n  builtins called as functions or methods: {b['all_ms']:.2f} ms/step "
          f"({100 * b['all_ms'] / total:.0f}%); largest: "
          + "; ".join(f"{short_builtin(n)} {ms:.2f}" for n, ms in b["largest"]))
    print("  (operators and ufunc calls, @ * += np.exp(...), are not separate events for "
          "cProfile: their time is their caller's own time)")
    g = result["gemm"]
    print(f"  matrix products: {g['gflop']:.3f} GFLOP/step; at the one-thread matmul peak "
          f"measured here ({g['peak_gflops']:.0f} GFLOP/s) they would take {g['floor_ms']:.2f} "
          f"ms, {100 * g['floor_ms'] / result['plain_ms']:.0f}% of the unprofiled step")


def profile_case(name: str, args, peak: float) -> dict:
    """Profile one case; the figures as a dict (milliseconds per step)."""
    clock = clock_of(args.clock)
    case = build_case(name, quick=args.quick_run)
    for _ in range(args.warmup):
        train_step(case)
    gc.collect()
    plain = plain_step_ms(case, args.timed, clock)
    stats = profile_steps(case, args.steps, clock)
    graph = CallGraph(stats, args.steps)
    builtins = graph.builtin_times()
    largest = sorted(builtins.items(), key=lambda kv: -kv[1])[:5]
    gflop = bench_step.count_flops(case.kind, flop_config(case))["step"] / 1e9
    return dict(case=name, title=case.title, steps=args.steps, plain_ms=plain,
                profiled_ms=graph.total / args.steps * 1e3,
                calls_per_step=sum(v[1] for v in graph.funcs.values()) / args.steps,
                parts_ms={p: s * 1e3 for p, s in graph.breakdown().items()},
                top=top_rows(graph, args.top),
                builtins=dict(all_ms=sum(builtins.values()) * 1e3,
                              largest=[(n, ms * 1e3) for n, ms in largest]),
                gemm=dict(gflop=gflop, peak_gflops=peak, floor_ms=gflop / peak * 1e3))


def print_summary(results: list[dict]) -> None:
    """One line per case: each part's share of the profiled step."""
    print("\nbreakdown by part, % of the profiled step")
    heads = [p.replace("gates/memory", "gates") for p in PARTS]
    print(f"  {'case':<9} {'ms':>7} " + " ".join(f"{h[:8]:>8}" for h in heads))
    for r in results:
        total = r["profiled_ms"]
        print(f"  {r['case']:<9} {total:>7.2f} "
              + " ".join(f"{100 * r['parts_ms'][p] / total:>8.1f}" for p in PARTS))


def main(args) -> int:
    limit_blas_threads(args.threads)
    gc.collect()
    gc.freeze()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"profile of whole training steps; NumPy {np.__version__}, {args.threads} BLAS "
          f"thread(s), clock: {'process CPU time' if args.clock == 'cpu' else 'wall time'}"
          + (f"; load average {load:.2f}" if load is not None else ""))
    # bench_step's matmul peak, timed with this script's clock
    bench_step.ARGS = argparse.Namespace(clock=args.clock, threads=args.threads)
    peak = bench_step.matmul_peak(np.float32, (128, 256) if args.quick_run else (512, 1024))
    print(f"matmul peak float32 (square products): {peak:.1f} GFLOP/s")
    results = []
    for name in args.cases:
        result = profile_case(name, args, peak)
        print_case(result, args.top)
        results.append(result)
        gc.collect()
    print_summary(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "load_average": load, "cases": results}, f,
                      indent=1, default=str)
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
