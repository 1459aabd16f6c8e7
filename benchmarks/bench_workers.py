"""Time a whole training step (gradient + Adam update) with 1, 2, ... data-parallel processes.

This is the step ``python nth_farthest.py --workers N`` takes: the batch is split into N shards,
this process computes one and N - 1 worker processes the others
(``relational_rnn.parallel.DataParallel``).  Each figure is the median over ``--repeats`` steps
after ``--warmup`` steps, on one fixed batch of the N-th Farthest task, with one BLAS thread per
process (set with ``relational_rnn.threads.limit_blas_threads``; the workers take the parent's
count).  The default model is the one of the 8 x 16 runs in IMPLEMENTATION_SUMMARY.md section 5
(the ``curriculum`` preset's RMC with 8 memory slots, batch 128).  Speed-ups need N free cores:
other work on the machine lowers them.

Usage::

    python benchmarks/bench_workers.py                        # RMC of the 8 x 16 runs, 1 and 2
    python benchmarks/bench_workers.py --model lstm --num-objects 4 --num-features 4 --mem-slots 4
    python benchmarks/bench_workers.py --num-heads 4 --head-size 16   # row 9 of the 8 x 16 table
    python benchmarks/bench_workers.py --quick-run            # a few seconds: smoke test
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nth_farthest  # noqa: E402
from optimizer import Adam  # noqa: E402
from relational_rnn.config import ModelSizes  # noqa: E402
from relational_rnn.parallel import DataParallel  # noqa: E402
from relational_rnn.presets import PRESETS  # noqa: E402
from relational_rnn.registry import KINDS, MODEL_KINDS, build_model  # noqa: E402
from relational_rnn.threads import limit_blas_threads  # noqa: E402

BLAS_THREADS = 1          # per process: --workers is the way to use more cores


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODEL_KINDS, default="rmc")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N",
                   help="process counts to time (default 1 2)")
    p.add_argument("--num-objects", type=int, default=8, help="K (default 8)")
    p.add_argument("--num-features", type=int, default=16, help="F (default 16)")
    p.add_argument("--mem-slots", type=int, default=8,
                   help="memory slots of rmc/rrnn (default 8; the preset's other sizes)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads of rmc/rrnn (default: the preset's, 2)")
    p.add_argument("--head-size", type=int, default=None,
                   help="value width per head of rmc/rrnn (default: the preset's, 32)")
    p.add_argument("--batch-size", type=int, default=128, help="B (default 128)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--repeats", type=int, default=30, help="timed steps (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--quick-run", action="store_true",
                   help="a tiny model and few steps: checks that the script runs")
    args = p.parse_args(argv)
    if args.quick_run:
        args.num_objects, args.num_features, args.mem_slots = 3, 2, 2
        args.batch_size, args.repeats, args.warmup = 8, 3, 1
    if args.model == "lstm" and (args.num_heads is not None or args.head_size is not None):
        p.error("--num-heads and --head-size apply to rmc and rrnn, not to lstm")
    for name in ("num_heads", "head_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.workers) < 1 or max(args.workers) > args.batch_size:
        p.error(f"--workers must lie in [1, batch size {args.batch_size}], got {args.workers}")
    return args


def model_sizes(args) -> ModelSizes:
    """The ``curriculum`` preset's sizes of the model, with the memory asked for."""
    fields = KINDS[args.model].size_fields
    change = {}
    if "mem_slots" in fields:
        change["mem_slots"] = args.mem_slots
        for key in ("num_heads", "head_size"):
            if getattr(args, key) is not None:
                change[key] = getattr(args, key)
    if args.quick_run:
        change.update({k: v for k, v in dict(head_size=4, hidden_size=8, mlp_hidden=(16,)).items()
                       if k in fields})
    return dataclasses.replace(PRESETS["curriculum"].models[args.model], **change)


def time_steps(args, sizes: ModelSizes, workers: int) -> float:
    """Median milliseconds of one training step with ``workers`` processes."""
    K, F = args.num_objects, args.num_features
    model = build_model(args.model, sizes, K, F, dtype=args.dtype,
                        rng=np.random.default_rng(0))
    optimizer = Adam(model, lr=1e-4, clip_norm=5.0)
    x, y, _ = nth_farthest.make_batch(np.random.default_rng(1), args.batch_size, K, F,
                                      dtype=args.dtype)
    times = []
    with DataParallel(model, args.model, sizes, K, F, workers=workers) as parallel:
        for i in range(args.warmup + args.repeats):
            t0 = time.perf_counter()
            parallel.gradient(x, y)
            optimizer.step()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main(argv=None) -> int:
    args = parse_args(argv)
    limit_blas_threads(BLAS_THREADS)
    sizes = model_sizes(args)
    print(f"{KINDS[args.model].title}, N-th Farthest {args.num_objects} x "
          f"{args.num_features}, batch {args.batch_size}, {args.dtype}, one BLAS thread per "
          f"process, {os.cpu_count()} CPUs; median of {args.repeats} steps")
    print(f"sizes: {sizes.to_json(KINDS[args.model].size_fields)}")
    print(f"{'workers':>7}  {'ms/step':>8}  {'examples/s':>10}  {'speed-up':>8}")
    base = None
    for workers in args.workers:
        ms = time_steps(args, sizes, workers)
        base = ms if base is None else base
        print(f"{workers:>7}  {ms:>8.2f}  {args.batch_size / ms * 1e3:>10.0f}  "
              f"{base / ms:>7.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
