"""Data-parallel training over MPI: measured on this machine, projected to a cluster.

**Measured** (one BLAS thread per process, float32, batch 128; each figure the fastest of
``--repeats`` steps after ``--warmup`` in each of ``--rounds`` rounds, which take turns between
one process, ``--workers 2`` and ``mpiexec -n 2``: the closest to a quiet machine when other
work shares the cores; the medians go to ``--json``): for the RMC on 4 x 4 and on 8 x 16 (the
``curriculum`` and ``curriculum8x16`` presets' RMCs), the LSTM and the RelationalRNN (the
``curriculum`` preset's), the training step (draw the batch, gradient, Adam) of one process, of ``--workers 2`` and of
``mpiexec -n 2`` side by side; and under ``mpiexec -n 2`` its parts: the shard's forward and
backward, the one Allreduce of the flat gradient buffer (polled, as training does it, and
blocking), a broadcast of the parameters (what "Adam on rank 0, then broadcast" would add) and
Adam's update.

**Projected** for the RMC of 8 x 16 on P ranks, one core each, with this model (every term
but the Allreduce measured here)::

    step(P) = draw(B) + grad(B / P) + copy + allreduce(P) + adam
    grad(b) = g0 + g1 * b                  (fitted to the shard times for b = 1 ... 128)
    draw(B) = d0 + d1 * B                  (every rank draws the whole batch: the one data stream)
    allreduce(P) = 2 (P - 1) / P * bytes / bandwidth + 2 (P - 1) * latency   (ring, alpha-beta)

with the interconnect InfiniBand HDR: 200 Gb/s per port (NVIDIA ConnectX-6 adapter manual,
docs.nvidia.com/networking/display/ConnectX6EN/Introduction: "up to two ports of 200Gb/s ...
sub-600ns latency") and an MPI latency of 1.2 us (Azure HBv3, HDR InfiniBand, OSU latency
benchmark: learn.microsoft.com/azure/virtual-machines/hbv3-performance).  Strong scaling keeps
the global batch at 128 (at most 128 ranks: one example each); weak scaling gives each rank 64
examples, global batch 64 P.  Efficiency = step(1) / (P step(P)) for strong scaling and
step_1(64) / step(P) for weak scaling.

Usage::

    python benchmarks/bench_mpi.py                  # about 3 minutes; writes the figure
    python benchmarks/bench_mpi.py --repeats 40 --quiet-step-ms 58.5   # as in the summary
    python benchmarks/bench_mpi.py --quick-run      # tiny models, a few steps: a smoke test

``--quiet-step-ms 58.5``: one process's step of the 8 x 16 RMC on a quiet core of this machine
(IMPLEMENTATION_SUMMARY.md section 5); the projection's compute terms are then scaled to it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nth_farthest  # noqa: E402
from optimizer import Adam  # noqa: E402
from relational_rnn.parallel import DataParallel, batch_gradient  # noqa: E402
from relational_rnn.presets import PRESETS  # noqa: E402
from relational_rnn.registry import KINDS, build_model  # noqa: E402
from relational_rnn.threads import limit_blas_threads  # noqa: E402

# label: (model kind, preset it comes from); the preset fixes the task (K x F) and the sizes.
CONFIGS = {"RMC 4x4": ("rmc", "curriculum"), "RMC 8x16": ("rmc", "curriculum8x16"),
           "LSTM 4x4": ("lstm", "curriculum"), "RelationalRNN 4x4": ("rrnn", "curriculum")}
PROJECTED = "RMC 8x16"
SHARDS = (1, 2, 4, 8, 16, 32, 64, 128)      # shard sizes timed for grad(b)
DRAWS = (64, 128, 512, 2048)                # batch sizes timed for draw(B)
BANDWIDTH_GBPS = 200.0                      # InfiniBand HDR, one port
LATENCY_US = 1.2                            # MPI latency over HDR (Azure HBv3, OSU)
RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LR_8X16 = PRESETS["curriculum8x16"].train.lr
FIGURE = ROOT / "docs" / "figures" / "mpi_scaling.png"
DTYPE = "float32"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30, help="timed steps (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of all the measurements, the fastest kept (default 3)")
    p.add_argument("--batch-size", type=int, default=128, help="B (default 128)")
    p.add_argument("--figure", default=str(FIGURE), help=f"the PNG (default {FIGURE})")
    p.add_argument("--json", help="also write every figure measured and projected here")
    p.add_argument("--bandwidth-gbps", type=float, default=BANDWIDTH_GBPS)
    p.add_argument("--latency-us", type=float, default=LATENCY_US)
    p.add_argument("--quiet-step-ms", type=float, default=None, metavar="MS",
                   help="also project with the compute terms scaled so that one process's "
                        f"{PROJECTED} step takes MS (a quiet core's; the figure then shows "
                        "that projection)")
    p.add_argument("--quick-run", action="store_true",
                   help="tiny models and few steps: checks that the script runs")
    p.add_argument("--rank-side", metavar="JSON", help=argparse.SUPPRESS)   # under mpiexec
    args = p.parse_args(argv)
    if args.quick_run:
        args.repeats, args.warmup, args.batch_size, args.rounds = 3, 1, 8, 1
    if args.repeats < 1 or args.warmup < 0 or args.batch_size < 2 or args.rounds < 1:
        p.error("--repeats >= 1, --warmup >= 0, --batch-size >= 2 and --rounds >= 1 please")
    return args


def config(label: str, quick: bool):
    """``(kind, sizes, K, F)`` of a configuration (tiny with --quick-run)."""
    kind, preset = CONFIGS[label]
    train, sizes = PRESETS[preset].train, PRESETS[preset].models[kind]
    if quick:
        small = dict(mem_slots=2, head_size=4, hidden_size=8, mlp_hidden=(16,))
        sizes = dataclasses.replace(sizes, **{k: v for k, v in small.items()
                                              if k in KINDS[kind].size_fields})
    return kind, sizes, train.num_objects, train.num_features


def model_of(label: str, quick: bool):
    kind, sizes, K, F = config(label, quick)
    return build_model(kind, sizes, K, F, dtype=DTYPE, rng=np.random.default_rng(0))


MEDIANS: dict[str, float] = {}       # every timing's median, by name, for --json


def best_ms(fn, repeats: int, warmup: int, name: str = "") -> float:
    """Milliseconds of ``fn``: the fastest of ``repeats`` calls after ``warmup`` (its median is
    kept in MEDIANS under ``name``)."""
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if name:
        MEDIANS[name] = float(np.median(times)) * 1e3
    return float(np.min(times)) * 1e3


def draw(label: str, batch: int, rng, quick: bool):
    _, _, K, F = config(label, quick)
    return nth_farthest.make_batch(rng, batch, K, F, dtype=DTYPE)[:2]


# -- this process and --workers 2 ---------------------------------------------------------------

def local_steps(label: str, args) -> dict:
    """One process's and --workers 2's step, and the pieces of the projection."""
    kind, sizes, K, F = config(label, args.quick_run)
    model = model_of(label, args.quick_run)
    optimizer = Adam(model, lr=1e-4, clip_norm=5.0)
    rng = np.random.default_rng(1)
    out = {"params": model.num_parameters()}
    with DataParallel(model, kind, sizes, K, F, workers=2) as two:
        for name, parallel in (("one", None), ("workers2", two)):
            def step():
                x, y = draw(label, args.batch_size, rng, args.quick_run)
                if parallel is None:
                    model.zero_grad()
                    batch_gradient(model, x, y)
                else:
                    parallel.gradient(x, y)
                optimizer.step()
            out[f"{name}_ms"] = best_ms(step, args.repeats, args.warmup, f"{label} {name}")
    out["adam_ms"] = best_ms(optimizer.step, args.repeats, args.warmup, f"{label} adam")
    if label == PROJECTED:
        out["grad_ms"], out["draw_ms"] = {}, {}
        for b in (s for s in SHARDS if s <= args.batch_size):
            x, y = draw(label, b, rng, args.quick_run)
            out["grad_ms"][b] = best_ms(lambda: (model.zero_grad(), batch_gradient(model, x, y)),
                                          args.repeats, args.warmup)
        for B in DRAWS:
            out["draw_ms"][B] = best_ms(lambda: draw(label, B, rng, args.quick_run),
                                        args.repeats, args.warmup)
        out["copy_ms"] = best_ms(lambda: copy_through_flat(model), args.repeats, args.warmup)
    return out


def copy_through_flat(model) -> None:
    """What an MPI step adds to the compute besides the Allreduce: the gradients copied into
    the flat buffer and back (as MPIParallel does)."""
    named = list(model.named_parameters())
    flat = np.empty(sum(g.size for _, _, g in named) + 4, dtype=DTYPE)
    start = 0
    for _, _, g in named:
        view = flat[start:start + g.size].reshape(g.shape)
        np.copyto(view, g)
        np.copyto(g, view)
        start += g.size


# -- mpiexec -n 2 -------------------------------------------------------------------------------

def rank_side(args) -> int:
    """Under mpiexec: time the MPI step and its parts; rank 0 writes them to --rank-side."""
    from relational_rnn import mpi
    cluster = mpi.connect({**os.environ, mpi.SWITCH: "1"})
    if cluster is None:
        raise SystemExit("--rank-side runs under mpiexec -n 2 or more")
    return cluster.run(lambda: _rank_measure(cluster, args))


def _rank_measure(cluster, args) -> int:
    results = {}
    for label in CONFIGS:
        model = model_of(label, args.quick_run)
        optimizer = Adam(model, lr=1e-4, clip_norm=5.0)
        parallel = cluster.data_parallel(model)
        rng = np.random.default_rng(1)             # every rank draws the same batches

        def step():
            x, y = draw(label, args.batch_size, rng, args.quick_run)
            parallel.gradient(x, y)
            optimizer.step()
        r = {"mpi2_ms": best_ms(step, args.repeats, args.warmup, f"{label} mpi2")}
        x, y = draw(label, args.batch_size, rng, args.quick_run)
        shard = x[: args.batch_size // 2], y[: args.batch_size // 2]
        r["shard_ms"] = best_ms(lambda: (model.zero_grad(), batch_gradient(model, *shard)),
                                  args.repeats, args.warmup)
        flat = np.zeros(model.num_parameters() + 4, dtype=DTYPE)
        r["bytes"] = flat.nbytes
        for name, fn in (("allreduce_ms", lambda: cluster.allreduce_sum(flat)),
                         ("allreduce_blocking_ms",
                          lambda: cluster.comm.Allreduce(cluster.MPI.IN_PLACE, flat)),
                         ("bcast_ms", lambda: cluster.comm.Bcast(flat[:-4], root=0))):
            cluster.comm.Barrier()
            r[name] = best_ms(fn, args.repeats, args.warmup, f"{label} {name}")
        results[label] = r
    results["medians"] = MEDIANS
    if cluster.root:
        Path(args.rank_side).write_text(json.dumps(results))
    return 0


def mpi_steps(args) -> dict | None:
    """mpiexec -n 2 of this script's rank side, or None (and why) without mpi4py/mpiexec."""
    beside = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(beside) if beside.exists() else shutil.which("mpiexec")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = None
    if mpiexec is None:
        print("mpiexec -n 2 skipped: needs mpi4py and mpiexec (pip install -e \".[mpi]\")")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mpi.json"
        cmd = [mpiexec, "-n", "2", sys.executable, __file__, "--rank-side", str(out),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        cmd += ["--quick-run"] if args.quick_run else ["--batch-size", str(args.batch_size)]
        subprocess.run(cmd, check=True, timeout=1800)
        return json.loads(out.read_text())


def fastest(old, new):
    """``new`` with each number replaced by the smaller of it and ``old``'s (nested dicts)."""
    if old is None or new is None:
        return new
    if isinstance(new, dict):
        return {k: fastest(old.get(k), v) if k != "medians" else v for k, v in new.items()}
    return min(old, new) if isinstance(new, float) else new


# -- the projection --------------------------------------------------------------------------

def fit_line(points: dict) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` through ``{x: y}``, both >= 0 (a time)."""
    xs = np.array([float(k) for k in points])
    ys = np.array(list(points.values()), dtype=float)
    slope, intercept = np.polyfit(xs, ys, 1)
    if slope < 0:                               # noise: a constant
        return float(ys.mean()), 0.0
    if intercept < 0:                           # through the origin
        return 0.0, float(xs @ ys / (xs @ xs))
    return float(intercept), float(slope)


def allreduce_ms(P: int, nbytes: int, bandwidth_gbps: float, latency_us: float) -> float:
    """Ring allreduce by the alpha-beta model: 2 (P - 1) / P * bytes / bandwidth +
    2 (P - 1) * latency (reduce-scatter, then allgather)."""
    if P == 1:
        return 0.0
    return (2 * (P - 1) / P * nbytes / (bandwidth_gbps * 1e9 / 8)
            + 2 * (P - 1) * latency_us * 1e-6) * 1e3


def project(local: dict, args, quiet_step_ms: float | None = None) -> dict:
    """Step time and efficiency of the projected model for each rank count.  With
    ``quiet_step_ms`` every measured compute term is scaled by one factor, so that one
    process's step takes that long (a quiet core's step, for timings taken on a busy one)."""
    g0, g1 = fit_line(local["grad_ms"])
    d0, d1 = fit_line(local["draw_ms"])
    adam = local["adam_ms"]
    copy = local["copy_ms"]                  # into the flat buffer and back
    scale = 1.0 if quiet_step_ms is None else quiet_step_ms / (d0 + d1 * 128 + g0 + g1 * 128
                                                                + adam)
    g0, g1, d0, d1, adam, copy = (v * scale for v in (g0, g1, d0, d1, adam, copy))
    nbytes = (local["params"] + 4) * np.dtype(DTYPE).itemsize

    def step(P, batch, local_batch, draw_batch):
        comm = allreduce_ms(P, nbytes, args.bandwidth_gbps, args.latency_us)
        return (d0 + d1 * draw_batch + g0 + g1 * local_batch + (copy if P > 1 else 0.0)
                + comm + adam), comm

    B = 128
    one_strong, _ = step(1, B, B, B)
    one_weak, _ = step(1, 64, 64, 64)
    rows = []
    for P in RANKS:
        row = {"P": P}
        if P <= B:
            t, comm = step(P, B, B / P, B)
            row.update(strong_ms=t, strong_comm_ms=comm, strong_eff=one_strong / (P * t))
        t, comm = step(P, 64 * P, 64, 64 * P)
        t_own, _ = step(P, 64 * P, 64, 64)              # if each rank drew only its own shard
        row.update(weak_ms=t, weak_comm_ms=comm, weak_eff=one_weak / t,
                   weak_own_data_eff=one_weak / t_own, global_batch=64 * P,
                   lr_sqrt=LR_8X16 * float(np.sqrt(64 * P / B)))
        rows.append(row)
    model = {"grad_ms": [g0, g1], "draw_ms": [d0, d1], "adam_ms": adam, "copy_ms": copy,
             "compute_scale": scale, "bytes": nbytes, "bandwidth_gbps": args.bandwidth_gbps,
             "latency_us": args.latency_us}
    return {"model": model, "rows": rows}


# -- output ------------------------------------------------------------------------------------

def print_measured(local: dict, mpi_results: dict | None) -> None:
    print("\nMeasured on this machine (ms, fastest of the repeats; the parts under "
          "mpiexec -n 2):")
    head = (f"{'model':<18} {'params':>9} {'MB':>5} {'1 proc':>7} {'workers 2':>9} "
            f"{'mpiexec 2':>9} {'shard':>6} {'Allred.':>7} {'(block)':>7} {'Bcast':>6} "
            f"{'Adam':>6}")
    print(head)
    print("-" * len(head))
    for label, r in local.items():
        m = (mpi_results or {}).get(label)
        cells = (f"{m['mpi2_ms']:>9.2f} {m['shard_ms']:>6.2f} {m['allreduce_ms']:>7.3f} "
                 f"{m['allreduce_blocking_ms']:>7.3f} {m['bcast_ms']:>6.3f}") if m else \
            f"{'-':>9} {'-':>6} {'-':>7} {'-':>7} {'-':>6}"
        mb = (r["params"] + 4) * np.dtype(DTYPE).itemsize / 1e6
        print(f"{label:<18} {r['params']:>9,} {mb:>5.2f} {r['one_ms']:>7.2f} "
              f"{r['workers2_ms']:>9.2f} {cells} {r['adam_ms']:>6.2f}")


def print_projection(proj: dict) -> None:
    m = proj["model"]
    if m["compute_scale"] != 1.0:
        print(f"\nThe same, the compute terms scaled by {m['compute_scale']:.3f} (one process's "
              "step as on a quiet core):")
    print(f"\nProjection, {PROJECTED}: grad(b) = {m['grad_ms'][0]:.2f} + {m['grad_ms'][1]:.3f} b "
          f"ms, draw(B) = {m['draw_ms'][0]:.3f} + {m['draw_ms'][1]:.4f} B ms, Adam "
          f"{m['adam_ms']:.2f} ms, copies {m['copy_ms']:.2f} ms, Allreduce of "
          f"{m['bytes'] / 1e6:.2f} MB over InfiniBand HDR ({m['bandwidth_gbps']:g} Gb/s, "
          f"{m['latency_us']:g} us, ring); strong: global batch 128, weak: 64 per rank, lr by "
          f"the square-root rule from {LR_8X16:g} at 128")
    head = (f"{'ranks':>5} | {'strong ms':>9} {'Allred.':>7} {'eff.':>5} | {'weak ms':>8} "
            f"{'Allred.':>7} {'eff.':>5} {'own-data eff.':>13} {'batch':>6} {'lr (sqrt)':>9}")
    print(head)
    print("-" * len(head))
    for r in proj["rows"]:
        strong = (f"{r['strong_ms']:>9.2f} {r['strong_comm_ms']:>7.3f} {r['strong_eff']:>5.0%}"
                  if "strong_ms" in r else f"{'(P > B)':>9} {'-':>7} {'-':>5}")
        print(f"{r['P']:>5} | {strong} | {r['weak_ms']:>8.2f} {r['weak_comm_ms']:>7.3f} "
              f"{r['weak_eff']:>5.0%} {r['weak_own_data_eff']:>13.0%} {r['global_batch']:>6} "
              f"{r['lr_sqrt']:>9.2e}")


def draw_figure(proj: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = proj["rows"]
    strong = [r for r in rows if "strong_ms" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot([r["P"] for r in strong], [r["strong_ms"] for r in strong], "o-",
             label="strong: global batch 128")
    ax1.plot([r["P"] for r in rows], [r["weak_ms"] for r in rows], "s-",
             label="weak: 64 examples per rank")
    ax1.plot([r["P"] for r in rows], [r["weak_comm_ms"] for r in rows], ":", color="grey",
             label="of which Allreduce (ring, HDR)")
    ax1.set(xscale="log", yscale="log", xlabel="MPI ranks P", ylabel="ms per step",
            title=f"{PROJECTED}: projected step time"
            + (", compute as on a quiet core" if proj["model"]["compute_scale"] != 1.0 else ""))
    ax2.plot([r["P"] for r in strong], [r["strong_eff"] for r in strong], "o-", label="strong")
    ax2.plot([r["P"] for r in rows], [r["weak_eff"] for r in rows], "s-", label="weak")
    ax2.plot([r["P"] for r in rows], [r["weak_own_data_eff"] for r in rows], "^--",
             label="weak, if each rank drew only its shard")
    ax2.set(xscale="log", ylim=(0, 1.05), xlabel="MPI ranks P", ylabel="parallel efficiency",
            title="projected parallel efficiency")
    for ax in (ax1, ax2):
        ax.set_xticks(RANKS, [str(p) for p in RANKS])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    limit_blas_threads(1)
    if args.rank_side:
        return rank_side(args)
    print(f"batch {args.batch_size}, {DTYPE}, one BLAS thread per process, {os.cpu_count()} "
          f"CPUs; the fastest of {args.repeats} steps (timings are noisy when other work "
          "shares the cores)", flush=True)
    local, mpi_results = None, None
    for _ in range(args.rounds):          # turns: a change of the machine's load hits all modes
        local = fastest(local, {label: local_steps(label, args) for label in CONFIGS})
        mpi_results = fastest(mpi_results, mpi_steps(args))
    print_measured(local, mpi_results)
    proj = project(local[PROJECTED], args)
    print_projection(proj)
    if args.quiet_step_ms:
        proj = {"measured": proj,
                **project(local[PROJECTED], args, quiet_step_ms=args.quiet_step_ms)}
        print_projection(proj)
    draw_figure(proj, args.figure)
    print(f"\nfigure: {args.figure}")
    if args.json:
        Path(args.json).write_text(json.dumps({"local": local, "local_medians": MEDIANS,
                                               "mpi": mpi_results, "projection": proj},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
