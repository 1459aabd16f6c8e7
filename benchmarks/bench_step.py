"""Time one training step of every model, side by side with PyTorch.

For each model (LSTM, RMC, RelationalRNN), size (quick, sonnet, run8x16, paper) and dtype, one training
step on the N-th Farthest task is split into three parts, each the median over ``--repeats``
steps after ``--warmup`` steps:

* forward: the model's forward pass plus the softmax cross-entropy (and its gradient);
* backward: backpropagation through the whole model (every parameter gradient);
* optimizer: one Adam update plus clearing the gradients.

The table reports, per implementation: milliseconds per part and per step (the median of the
whole-step times), the matrix-product FLOPs of a step (counted analytically, see
:func:`count_flops`), the achieved GFLOP/s, that as a share of the matrix-multiply peak measured
in this same run (same dtype and thread count), the size of the activations kept for the
backward pass (``cache MB``: the NumPy cache, or the tensors PyTorch saves for backward; weights
excluded) and, for NumPy, the peak memory allocated during one step as seen by ``tracemalloc``
(``peak MB``).  When PyTorch is installed the same architectures (``tests/torch_reference.py``)
run in the same process with the same weights, data and thread count, and the NumPy/PyTorch
ratio of the step times is printed (below 1: NumPy is faster).

``--scaling`` adds RMC figures (sonnet configuration) for the sequence length T, the number of
memory slots N and the batch size B.

The thread count (``--threads``, default 2) is applied to the BLAS NumPy has loaded through
``relational_rnn.threads.limit_blas_threads`` (threadpoolctl) and passed to
``torch.set_num_threads``.  The models are those of the application's model-kind registry
(``relational_rnn.registry``), built from the sizes below.

Usage::

    python benchmarks/bench_step.py                       # all models, sizes, dtypes
    python benchmarks/bench_step.py --models rmc --sizes sonnet --dtypes float32 --threads 1
    python benchmarks/bench_step.py --scaling --models rmc --sizes sonnet
    python benchmarks/bench_step.py --quick-run           # a few seconds: smoke test
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import layers  # noqa: E402
import nth_farthest  # noqa: E402
from optimizer import Adam  # noqa: E402
from relational_rnn.config import ModelSizes  # noqa: E402
from relational_rnn.registry import KINDS, MODEL_KINDS, build_model  # noqa: E402
from relational_rnn.threads import limit_blas_threads  # noqa: E402

# The registry's kinds, the LSTM baseline first (the order of the table).
MODELS = ("lstm",) + tuple(k for k in MODEL_KINDS if k != "lstm")
SIZE_NAMES = ("quick", "sonnet", "run8x16", "paper")
DTYPE_NAMES = ("float32", "float64")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                   help="models to time (default: all)")
    p.add_argument("--sizes", nargs="+", choices=SIZE_NAMES, default=list(SIZE_NAMES),
                   help="sizes to time (default: all)")
    p.add_argument("--dtypes", nargs="+", choices=DTYPE_NAMES, default=list(DTYPE_NAMES),
                   help="dtypes to time (default: both)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed steps per measurement; medians are reported (default 7, and "
                        "3 for the paper size)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first (default 2, and 1 for the paper size)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS / OpenMP / torch threads (default 2, or 1 with --quick-run; 1 "
                        "is far more robust when other processes compete for the cores)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time (default); cpu: this process's CPU time, which "
                        "ignores the time other processes hold the cores (meaningful with "
                        "--threads 1 only: with more threads it adds up every thread's time, "
                        "spinning included)")
    p.add_argument("--tune-malloc", action="store_true",
                   help="glibc only: serve every allocation from the heap and never trim it "
                        "(mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=SIZE_MAX), so large temporaries "
                        "reuse memory instead of page-faulting fresh memory on every step; "
                        "applies to NumPy and PyTorch alike")
    p.add_argument("--scaling", action="store_true",
                   help="also time the RMC against T, N and B (sonnet configuration)")
    p.add_argument("--scaling-only", action="store_true",
                   help="only the scaling figures (implies --scaling)")
    p.add_argument("--quick-run", action="store_true",
                   help="tiny configuration, one or two steps: finishes in seconds")
    p.add_argument("--json", metavar="PATH", help="also write every figure to a JSON file")
    p.add_argument("--plot", metavar="PATH", help="with --scaling: save the scaling figures "
                   "as an image (needs matplotlib)")
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = 1 if args.quick_run else 2
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if (args.repeats is not None and args.repeats < 1) or (args.warmup is not None
                                                            and args.warmup < 0):
        p.error("--repeats must be >= 1 and --warmup >= 0")
    args.scaling = args.scaling or args.scaling_only
    if args.quick_run:
        args.repeats, args.warmup = min(args.repeats or 2, 2), min(args.warmup or 1, 1)
    return args


def repeats_for(args, size: str) -> tuple[int, int]:
    """(repeats, warm-up steps) for a size: the defaults are smaller for the paper size."""
    big = size == "paper"
    return (args.repeats if args.repeats is not None else (3 if big else 7),
            args.warmup if args.warmup is not None else (1 if big else 2))


# The parsed command line when run as a script (None when imported, e.g. by the tests).
ARGS: argparse.Namespace | None = None
LEARNING_RATE = 1e-4

# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------

# objects/features: the N-th Farthest task (T = objects steps of width features + 3 * objects).
# RMC: mem_slots, num_heads, head_size, num_blocks, attention_mlp_layers (the memory of the
# RelationalRNN uses the same; its slot size is num_heads * head_size).  readout: hidden widths
# of the read-out MLP of every model.  lstm_hidden: width of the LSTM baseline; rrnn_hidden:
# LSTM width of the RelationalRNN.
SIZES = {
    "quick": dict(objects=4, features=4, batch=32, mem_slots=2, num_heads=2, head_size=16,
                  num_blocks=1, mlp_layers=2, readout=(64, 64), lstm_hidden=64,
                  rrnn_hidden=32),
    "sonnet": dict(objects=4, features=4, batch=128, mem_slots=4, num_heads=2, head_size=32,
                   num_blocks=1, mlp_layers=2, readout=(256,) * 4, lstm_hidden=256,
                   rrnn_hidden=64),
    # The 8 x 16 training runs of IMPLEMENTATION_SUMMARY.md section 5: the paper's task with
    # the small memory and the CLI's batch.
    "run8x16": dict(objects=8, features=16, batch=128, mem_slots=8, num_heads=2, head_size=32,
                    num_blocks=1, mlp_layers=2, readout=(256,) * 4, lstm_hidden=256,
                    rrnn_hidden=128),
    "paper": dict(objects=8, features=16, batch=1600, mem_slots=8, num_heads=8, head_size=32,
                  num_blocks=1, mlp_layers=2, readout=(256,) * 4, lstm_hidden=512,
                  rrnn_hidden=256),
}
# --quick-run replaces every size by this one.
TINY = dict(objects=3, features=2, batch=8, mem_slots=2, num_heads=2, head_size=4, num_blocks=1,
            mlp_layers=2, readout=(16,), lstm_hidden=8, rrnn_hidden=8)

SCALING_T = (8, 16, 32, 64, 128, 256, 512)
SCALING_N = (1, 2, 4, 8, 16, 32)
SCALING_B = (16, 32, 64, 128, 256, 512, 1024, 2048)
SCALING_BASE = dict(T=8, N=4, B=128)       # the other two variables while one is varied
TINY_SCALING = dict(T=(2, 4), N=(1, 2), B=(4, 8), base=dict(T=2, N=2, B=4))


def input_width(cfg: dict) -> int:
    return cfg["features"] + 3 * cfg["objects"]


def model_sizes(model: str, cfg: dict) -> ModelSizes:
    """The registry's sizes of ``model`` at size ``cfg`` (the fields the kind does not use are
    left out; key size = head size, 'unit' gates)."""
    if model not in KINDS:
        raise ValueError(f"unknown model {model!r}")
    every = ModelSizes(mem_slots=cfg["mem_slots"], head_size=cfg["head_size"],
                       num_heads=cfg["num_heads"], num_blocks=cfg["num_blocks"], key_size=None,
                       attention_mlp_layers=cfg["mlp_layers"], gate_style="unit",
                       hidden_size=cfg["rrnn_hidden"] if model == "rrnn" else cfg["lstm_hidden"],
                       mlp_hidden=tuple(cfg["readout"]))
    return ModelSizes(**{name: getattr(every, name) for name in KINDS[model].size_fields})


def build_numpy(model: str, cfg: dict, dtype, seed: int = 0):
    """The NumPy classifier of ``model`` at size ``cfg`` (built by the registry)."""
    return build_model(model, model_sizes(model, cfg), cfg["objects"], cfg["features"],
                       dtype=dtype, rng=np.random.default_rng(seed))


def make_data(cfg: dict, dtype, T: int | None = None, seed: int = 1):
    """A fixed batch (x (B, T, I), labels (B,)).  T defaults to the task's (objects)."""
    rng = np.random.default_rng(seed)
    if T is None or T == cfg["objects"]:
        x, y, _ = nth_farthest.make_batch(rng, cfg["batch"], cfg["objects"], cfg["features"],
                                          dtype=dtype)
        return x, y
    # Scaling runs: a sequence of any length with rows of the task's width.
    x = rng.uniform(-1, 1, (cfg["batch"], T, input_width(cfg))).astype(dtype)
    return x, rng.integers(0, cfg["objects"], cfg["batch"])


# --------------------------------------------------------------------------------------------
# FLOP counting (matrix products only)
# --------------------------------------------------------------------------------------------


def _mlp_flops(B: int, sizes) -> int:
    return sum(2 * B * a * b for a, b in zip(sizes[:-1], sizes[1:]))


def _rmc_core_flops(B: int, T: int, I: int, cfg: dict) -> int:
    """Forward matrix-product FLOPs of the RMC core over T steps (gate_style 'unit')."""
    N, H, hs = cfg["mem_slots"], cfg["num_heads"], cfg["head_size"]
    ks, d, R = hs, H * hs, cfg["mem_slots"] + 1
    per_step = cfg["num_blocks"] * (
        2 * B * R * d * H * (2 * ks + hs)          # qkv projection
        + 2 * B * H * R * R * ks                   # q k^T
        + 2 * B * H * R * R * hs                   # weights @ v
        + cfg["mlp_layers"] * 2 * B * R * d * d)   # shared MLP
    per_step += 2 * B * N * d * 2 * d              # tanh(M) W_gm
    return (2 * B * T * I * d                      # input projection
            + 2 * B * T * d * 2 * d                # x~ W_gx
            + T * per_step)


def count_flops(model: str, cfg: dict, T: int | None = None) -> dict:
    """Matrix-product FLOPs (2 m k n per product) of one training step.

    Forward: every GEMM and batched product of the model, counted from the shapes.  Backward:
    twice the forward (each product C = A B needs dA = dC B^T and dB = A^T dC).  The element-wise
    work (activations, LayerNorm, softmax, Adam) is not counted.
    """
    B, I, C = cfg["batch"], input_width(cfg), cfg["objects"]
    T = cfg["objects"] if T is None else T
    if model == "lstm":
        Hh = cfg["lstm_hidden"]
        fwd = 2 * B * T * I * 4 * Hh + 2 * B * T * Hh * 4 * Hh
        fwd += _mlp_flops(B, [Hh, *cfg["readout"], C])
    elif model == "rmc":
        fwd = _rmc_core_flops(B, T, I, cfg)
        d = cfg["num_heads"] * cfg["head_size"]
        fwd += _mlp_flops(B, [cfg["mem_slots"] * d, *cfg["readout"], C])
    elif model == "rrnn":
        Hh = cfg["rrnn_hidden"]
        d = cfg["num_heads"] * cfg["head_size"]
        fwd = 2 * B * T * I * 4 * Hh + 2 * B * T * Hh * 4 * Hh        # LSTM
        fwd += _rmc_core_flops(B, T, Hh, cfg)                           # memory on h_t
        # last step only (return_sequences=False): read-out d->H, combine 2H->H, output H->H
        fwd += 2 * B * d * Hh + 2 * B * 2 * Hh * Hh + 2 * B * Hh * Hh
        fwd += _mlp_flops(B, [Hh, *cfg["readout"], C])
    else:
        raise ValueError(f"unknown model {model!r}")
    return {"forward": fwd, "backward": 2 * fwd, "step": 3 * fwd}


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def matmul_peak(dtype, n_sizes=(512, 1024, 2048), repeats: int = 3, use_torch: bool = False):
    """Best GFLOP/s of square matrix products (NumPy, or torch when ``use_torch``)."""
    best = 0.0
    rng = np.random.default_rng(0)
    for n in n_sizes:
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        if use_torch:
            import torch
            a, b = torch.from_numpy(a), torch.from_numpy(b)
        c = a @ b                                          # warm-up (and thread start)
        for _ in range(repeats):
            t0 = clock()
            c = a @ b
            dt = clock() - t0
            best = max(best, 2 * n ** 3 / dt / 1e9)
        del c
    return best


def _owner(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def cache_nbytes(obj, exclude_ids=frozenset()) -> int:
    """Bytes of the distinct arrays reachable from a cache (nested dict/list/tuple), counting
    each underlying buffer once and skipping the arrays whose owner id is in ``exclude_ids``."""
    seen, total, stack = set(), 0, [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, np.ndarray):
            own = _owner(o)
            if id(own) not in seen and id(own) not in exclude_ids:
                seen.add(id(own))
                total += own.nbytes
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return total


def cache_float_dtypes(obj) -> set:
    """Float dtypes of every array reachable from a cache (to catch silent upcasts)."""
    found, stack = set(), [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, np.ndarray):
            if o.dtype.kind == "f":
                found.add(o.dtype.name)
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return found


class NumpyRunner:
    """One NumPy model, its Adam optimizer and a fixed batch."""

    impl = "numpy"

    def __init__(self, model, x, y):
        self.model, self.x, self.y = model, x, y
        self.opt = Adam(model, lr=LEARNING_RATE)
        self.param_ids = frozenset(id(_owner(p)) for p in model.parameters().values())

    def step(self):
        """One training step; returns (forward, backward, optimizer) seconds."""
        t0 = clock()
        logits, cache = self.model.forward(self.x)
        _, dlogits, _ = layers.softmax_cross_entropy(logits, self.y)
        t1 = clock()
        self.model.backward(dlogits, cache)
        t2 = clock()
        self.opt.step()
        self.opt.zero_grad()
        t3 = clock()
        return t1 - t0, t2 - t1, t3 - t2

    def logits(self):
        return self.model.forward(self.x)[0]

    def memory(self) -> dict:
        """Cache bytes and tracemalloc peak bytes of one step; float dtypes seen."""
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            logits, cache = self.model.forward(self.x)
            _, dlogits, _ = layers.softmax_cross_entropy(logits, self.y)
            cache_bytes = cache_nbytes(cache, self.param_ids)
            dtypes = cache_float_dtypes(cache) | {logits.dtype.name}
            self.model.backward(dlogits, cache)
            del cache
            self.opt.step()
            self.opt.zero_grad()
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        dtypes |= {g.dtype.name for g in self.model.gradients().values()}
        return {"cache_bytes": cache_bytes, "peak_bytes": peak, "dtypes": sorted(dtypes)}


class TorchRunner:
    """The PyTorch twin of a NumPy model (same weights), torch Adam and the same batch."""

    impl = "torch"

    def __init__(self, model_name: str, np_model, x, y):
        import torch
        import torch_reference as tr
        self.torch = torch
        self.model = build_torch(model_name, np_model, tr)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in self.model.parameters()}

    def step(self):
        F = self.torch.nn.functional
        t0 = clock()
        loss = F.cross_entropy(self.model(self.x), self.y)
        t1 = clock()
        loss.backward()
        t2 = clock()
        self.opt.step()
        self.opt.zero_grad()
        t3 = clock()
        return t1 - t0, t2 - t1, t3 - t2

    def logits(self):
        with self.torch.no_grad():
            return self.model(self.x).numpy()

    def memory(self) -> dict:
        """Bytes of the distinct storages PyTorch saves for backward (weights excluded)."""
        torch = self.torch
        saved = {}

        def pack(t):
            st = t.untyped_storage()
            if st.data_ptr() not in self.param_ptrs:
                saved[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.zero_grad()
        return {"cache_bytes": sum(saved.values()), "peak_bytes": None, "dtypes": []}


def build_torch(model_name: str, np_model, tr):
    """The torch twin of ``np_model`` from tests/torch_reference.py."""
    if model_name == "lstm":
        return tr.torch_lstm_classifier_from_numpy(np_model)
    if model_name == "rmc":
        return tr.torch_rmc_classifier_from_numpy(np_model)
    if model_name == "rrnn":
        return tr.torch_relational_rnn_classifier_from_numpy(np_model)
    raise ValueError(f"unknown model {model_name!r}")


def clock() -> float:
    """Seconds of the clock chosen by --clock (wall time unless told otherwise)."""
    if ARGS is not None and ARGS.clock == "cpu":
        return time.process_time()
    return time.perf_counter()


def tune_malloc() -> bool:
    """glibc: no mmap-served allocations and no heap trimming (see --tune-malloc)."""
    try:
        import ctypes
        import ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        # -1 becomes SIZE_MAX inside glibc: the heap is never trimmed
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))
    except (OSError, AttributeError):
        return False


def time_runner(runner, repeats: int, warmup: int) -> dict:
    """Median forward/backward/optimizer/step milliseconds over ``repeats`` steps."""
    for _ in range(warmup):
        runner.step()
    gc.collect()
    parts = np.array([runner.step() for _ in range(repeats)]) * 1e3      # (repeats, 3) ms
    return {"forward_ms": float(np.median(parts[:, 0])),
            "backward_ms": float(np.median(parts[:, 1])),
            "optimizer_ms": float(np.median(parts[:, 2])),
            "step_ms": float(np.median(parts.sum(axis=1))),
            "step_ms_min": float(parts.sum(axis=1).min())}


def pause_between_pools():
    """Let the other library's idle worker threads stop spinning before timing the next
    (single-threaded runs have no worker threads)."""
    if ARGS is not None and ARGS.threads > 1:
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


HEADER = (f"{'model':<13} {'size':<6} {'dtype':<7} {'impl':<5} {'fwd ms':>8} {'bwd ms':>8} "
          f"{'opt ms':>7} {'step ms':>8} {'GFLOP':>7} {'GFLOP/s':>8} {'%peak':>6} "
          f"{'cache MB':>8} {'peak MB':>8} {'np/torch':>8}")


def format_row(r: dict) -> str:
    return (f"{KINDS[r['model']].label:<13} {r['size']:<6} {r['dtype']:<7} {r['impl']:<5} "
            f"{r['forward_ms']:>8.2f} {r['backward_ms']:>8.2f} {r['optimizer_ms']:>7.2f} "
            f"{r['step_ms']:>8.2f} {r['gflop']:>7.3f} {r['gflops']:>8.1f} "
            f"{r['peak_share'] * 100:>5.1f}% {r['cache_bytes'] / 2**20:>8.2f} "
            f"{_fmt(None if r['peak_bytes'] is None else r['peak_bytes'] / 2**20, '8.2f'):>8} "
            f"{_fmt(r.get('ratio'), '8.2f'):>8}")


def machine_info(threads: int, torch_mod) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = "unknown BLAS"
    try:
        cfg = np.__config__.CONFIG["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name', '?')} {cfg.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older NumPy without CONFIG
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "numpy": np.__version__, "blas": blas,
            "torch": None if torch_mod is None else torch_mod.__version__}
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = round(os.getloadavg()[0], 2)
    return info


def run_table(args, torch_mod, peaks: dict) -> list[dict]:
    rows = []
    sizes = ["tiny"] if args.quick_run else args.sizes
    print(HEADER)
    print("-" * len(HEADER))
    for size in sizes:
        cfg = TINY if args.quick_run else SIZES[size]
        for model_name in args.models:
            for dtype_name in args.dtypes:
                dtype = np.dtype(dtype_name)
                x, y = make_data(cfg, dtype)
                flops = count_flops(model_name, cfg)
                np_model = build_numpy(model_name, cfg, dtype)
                runners = [NumpyRunner(np_model, x, y)]
                if torch_mod is not None:
                    runners.append(TorchRunner(model_name, np_model, x, y))
                    # Same weights and data: the logits must agree (checks the architectures).
                    diff = float(np.max(np.abs(runners[0].logits() - runners[1].logits())))
                else:
                    diff = None
                group = []
                repeats, warmup = repeats_for(args, size)
                for runner in runners:
                    pause_between_pools()
                    t = time_runner(runner, repeats, warmup)
                    mem = runner.memory()
                    gflops = flops["step"] / (t["step_ms"] / 1e3) / 1e9
                    group.append(dict(model=model_name, size=size, dtype=dtype_name,
                                      impl=runner.impl, **t, **mem, flops=flops,
                                      gflop=flops["step"] / 1e9, gflops=gflops,
                                      peak_share=gflops / peaks[dtype_name]["machine"],
                                      logit_diff=diff))
                if len(group) == 2:
                    group[0]["ratio"] = group[0]["step_ms"] / group[1]["step_ms"]
                for r in group:
                    print(format_row(r), flush=True)
                    if r["impl"] == "numpy" and dtype_name == "float32" \
                            and r["dtypes"] != ["float32"]:
                        print(f"  WARNING: float32 run holds arrays of dtypes {r['dtypes']}")
                rows.extend(group)
                del runners, np_model
                gc.collect()
    return rows


def print_ratios(rows: list[dict]) -> None:
    ratios = [r for r in rows if r.get("ratio") is not None]
    if not ratios:
        return
    print("\nNumPy / PyTorch step time (below 1: NumPy faster)")
    sizes = list(dict.fromkeys(r["size"] for r in ratios))
    for dtype_name in dict.fromkeys(r["dtype"] for r in ratios):
        print(f"  {dtype_name:<13}" + "".join(f"{s:>9}" for s in sizes))
        for model_name in dict.fromkeys(r["model"] for r in ratios):
            cells = []
            for s in sizes:
                m = [r for r in ratios if (r["model"], r["size"], r["dtype"])
                     == (model_name, s, dtype_name)]
                cells.append(f"{m[0]['ratio']:>9.2f}" if m else f"{'-':>9}")
            print(f"  {KINDS[model_name].label:<13}" + "".join(cells))
    diffs = [r["logit_diff"] for r in rows if r.get("logit_diff") is not None]
    if diffs:
        print(f"  (same weights and data: largest |NumPy - PyTorch| logit difference "
              f"{max(diffs):.1e})")


# --------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------


def run_scaling(args, torch_mod, dtype_name: str) -> list[dict]:
    """RMC step time and memory against T, N and B (the others fixed at SCALING_BASE)."""
    dtype = np.dtype(dtype_name)
    if args.quick_run:
        base_cfg, grid, base = TINY, {k: TINY_SCALING[k] for k in "TNB"}, TINY_SCALING["base"]
    else:
        base_cfg, grid, base = SIZES["sonnet"], {"T": SCALING_T, "N": SCALING_N,
                                                  "B": SCALING_B}, SCALING_BASE
    repeats, warmup = repeats_for(args, "sonnet")
    repeats, warmup = min(repeats, 3), min(warmup, 1)
    rows = []
    head = (f"{'vary':<4} {'T':>4} {'N':>3} {'B':>5} {'numpy ms':>9} {'torch ms':>9} "
            f"{'np/torch':>8} {'GFLOP/s':>8} {'cache MB':>9} {'torch cache':>11} "
            f"{'peak MB':>8}")
    print(f"\nRMC scaling ({dtype_name}, {args.threads} thread(s); "
          f"{'tiny' if args.quick_run else 'sonnet'} sizes otherwise: "
          f"{base_cfg['num_heads']} heads x {base_cfg['head_size']}, "
          f"read-out {' x '.join(map(str, base_cfg['readout']))}; median of {repeats})")
    print(head)
    print("-" * len(head))
    for vary in "TNB":
        for value in grid[vary]:
            point = dict(base, **{vary: value})
            cfg = dict(base_cfg, mem_slots=point["N"], batch=point["B"])
            x, y = make_data(cfg, dtype, T=point["T"])
            np_model = build_numpy("rmc", cfg, dtype)
            runners = [NumpyRunner(np_model, x, y)]
            if torch_mod is not None:
                runners.append(TorchRunner("rmc", np_model, x, y))
            res = []
            for runner in runners:
                pause_between_pools()
                res.append({**time_runner(runner, repeats, warmup), **runner.memory()})
            flops = count_flops("rmc", cfg, T=point["T"])["step"]
            row = dict(vary=vary, dtype=dtype_name, **point, numpy=res[0],
                       torch=res[1] if len(res) > 1 else None,
                       gflops=flops / (res[0]["step_ms"] / 1e3) / 1e9)
            tms = row["torch"]["step_ms"] if row["torch"] else None
            tcache = row["torch"]["cache_bytes"] / 2**20 if row["torch"] else None
            print(f"{vary:<4} {point['T']:>4} {point['N']:>3} {point['B']:>5} "
                  f"{res[0]['step_ms']:>9.1f} {_fmt(tms, '9.1f'):>9} "
                  f"{_fmt(None if tms is None else res[0]['step_ms'] / tms, '8.2f'):>8} "
                  f"{row['gflops']:>8.1f} {res[0]['cache_bytes'] / 2**20:>9.1f} "
                  f"{_fmt(tcache, '11.1f'):>11} {res[0]['peak_bytes'] / 2**20:>8.1f}",
                  flush=True)
            rows.append(row)
            del runners, np_model
            gc.collect()
    return rows


def plot_scaling(rows: list[dict], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), constrained_layout=True)
    for col, vary in enumerate("TNB"):
        pts = [r for r in rows if r["vary"] == vary]
        xs = [r[vary] for r in pts]
        ax = axes[0, col]
        ax.plot(xs, [r["numpy"]["step_ms"] for r in pts], "o-", label="NumPy")
        if pts and pts[0]["torch"]:
            ax.plot(xs, [r["torch"]["step_ms"] for r in pts], "s--", label="PyTorch")
        ax.set(xscale="log", yscale="log", xlabel=vary, ylabel="ms per training step")
        ax.legend()
        ax = axes[1, col]
        ax.plot(xs, [r["numpy"]["cache_bytes"] / 2**20 for r in pts], "o-",
                label="NumPy cache")
        ax.plot(xs, [r["numpy"]["peak_bytes"] / 2**20 for r in pts], "^:",
                label="NumPy peak (tracemalloc)")
        if pts and pts[0]["torch"]:
            ax.plot(xs, [r["torch"]["cache_bytes"] / 2**20 for r in pts], "s--",
                    label="PyTorch saved tensors")
        ax.set(xscale="log", yscale="log", xlabel=vary, ylabel="MB")
        ax.legend(fontsize=8)
    fig.suptitle(f"RMC training step vs T, N, B ({rows[0]['dtype']})")
    fig.savefig(path, dpi=110)
    print(f"scaling figure written to {path}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(args) -> int:
    torch_mod = None
    if not args.no_torch:
        try:
            import torch
            import torch_reference  # noqa: F401 - fails without torch too
            torch.set_num_threads(args.threads)
            torch.optim.Adam([torch.zeros(1, requires_grad=True)])   # its lazy imports
            torch_mod = torch
        except ImportError as exc:
            print(f"PyTorch comparison skipped: {exc}")
    else:
        print("PyTorch comparison skipped (--no-torch)")
    malloc = "default glibc malloc"
    if args.tune_malloc:
        malloc = ("malloc tuned (no mmap, no trim)" if tune_malloc()
                  else "malloc tuning unavailable (not glibc)")
    # Move the imported modules' objects out of the collector's sight: gc.collect() between
    # measurements then takes milliseconds instead of a large share of a second.
    gc.collect()
    gc.freeze()
    info = machine_info(args.threads, torch_mod)
    print(f"machine: {info['cpu']}, {info['cores']} logical cores; threads {args.threads}; "
          f"Python {info['python']}, NumPy {info['numpy']} ({info['blas']})"
          + (f", PyTorch {info['torch']}" if torch_mod is not None else "")
          + (f"; load average {info['load_average_start']}" if "load_average_start" in info
             else ""))
    print(f"clock: {'process CPU time' if args.clock == 'cpu' else 'wall time'}; {malloc}")
    info.update(clock=args.clock, malloc=malloc)
    load = info.get("load_average_start")
    if args.threads > 1 and load is not None and load + args.threads > (info["cores"] or 1) + 0.5:
        print(f"WARNING: load average {load} with {args.threads} threads on {info['cores']} "
              "cores: other processes compete for the cores, and multi-threaded BLAS/OpenMP "
              "can then be many times slower (spinning threads wait for descheduled ones). "
              "Figures are unreliable; --threads 1 is robust.")
    sizes_n = (128, 256) if args.quick_run else (512, 1024, 2048)
    dtypes = list(dict.fromkeys(args.dtypes + (["float32"] if args.scaling else [])))
    peaks = {}
    for dtype_name in dtypes:
        dtype = np.dtype(dtype_name)
        pk = {"numpy": matmul_peak(dtype, sizes_n)}
        if torch_mod is not None:
            pause_between_pools()
            pk["torch"] = matmul_peak(dtype, sizes_n, use_torch=True)
        pk["machine"] = max(pk.values())
        peaks[dtype_name] = pk
        print(f"matmul peak {dtype_name}, {args.threads} thread(s): NumPy {pk['numpy']:.1f} "
              f"GFLOP/s" + (f", PyTorch {pk['torch']:.1f} GFLOP/s" if "torch" in pk else "")
              + f"  (square products n = {', '.join(map(str, sizes_n))}, best run)")
    reps = {sz: repeats_for(args, sz) for sz in (["tiny"] if args.quick_run else args.sizes)}
    print("median of " + "; ".join(f"{sz}: {r} steps after {w} warm-up step(s)"
                                   for sz, (r, w) in reps.items()) + "; "
          "GFLOP = matrix-product FLOPs of one step (backward counted as 2x forward); "
          "%peak = GFLOP/s / the best matmul peak above; cache MB = activations kept for "
          "backward (NumPy cache / PyTorch saved tensors, weights excluded); peak MB = NumPy "
          "tracemalloc peak of one step\n")
    result = {"machine": info, "peaks": peaks, "args": vars(args), "rows": [], "scaling": []}
    if not args.scaling_only:
        result["rows"] = run_table(args, torch_mod, peaks)
        if torch_mod is None:
            print("\nPyTorch comparison skipped (torch not available)")
        else:
            print_ratios(result["rows"])
    if args.scaling:
        result["scaling"] = run_scaling(args, torch_mod, "float32")
        if args.plot:
            plot_scaling(result["scaling"], args.plot)
    if hasattr(os, "getloadavg"):
        info["load_average_end"] = round(os.getloadavg()[0], 2)
        print(f"\nload average at the end: {info['load_average_end']} "
              f"(other processes on the machine make the figures noisier)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    ARGS = parse_args()
    limit_blas_threads(ARGS.threads)
    sys.exit(main(ARGS))
