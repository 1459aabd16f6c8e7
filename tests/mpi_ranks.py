"""The rank side of tests/test_mpi.py, started there under ``mpiexec -n 2``.

    python tests/mpi_ranks.py step FOLDER
        one step of each model kind: every rank writes FOLDER/rank<r>.json, per kind the
        differences of its MPI step from the one-process step and a digest of its parameters.
    python tests/mpi_ranks.py fault MODE CALL -- ARGS...
        the command line with ARGS, rank 1 failing at its CALL-th gradient: MODE ``kill``
        (SIGKILL), ``hang`` (SIGSTOP), ``raise`` (an exception) or ``nan`` (a NaN loss on its
        shard of the batch).
"""
import dataclasses
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import nth_farthest as nf  # noqa: E402
from optimizer import Adam  # noqa: E402
from relational_rnn import cli, mpi  # noqa: E402
from relational_rnn.parallel import batch_gradient  # noqa: E402
from relational_rnn.presets import PRESETS  # noqa: E402
from relational_rnn.registry import KINDS, MODEL_KINDS, build_model  # noqa: E402

K, F = 4, 4
LR, EPS = 1e-2, 1e-8            # Adam's rate and its default epsilon
TINY = dict(mem_slots=2, head_size=4, hidden_size=8, mlp_hidden=(16,))


def tiny_sizes(kind: str):
    fields = KINDS[kind].size_fields
    return dataclasses.replace(PRESETS["curriculum"].models[kind],
                               **{k: v for k, v in TINY.items() if k in fields})


def one_step(kind: str, cluster) -> dict:
    """Adam's first step from the same model and batch (7 examples: shards of 4 and 3), by
    this process alone and by the MPI ranks; the largest differences."""
    x, y, _ = nf.make_batch(np.random.default_rng(1), 7, K, F, dtype=np.float64)
    models, losses, grads = [], [], []
    for use_mpi in (False, True):
        model = build_model(kind, tiny_sizes(kind), K, F, dtype=np.float64,
                            rng=np.random.default_rng(3))
        optimizer = Adam(model, lr=LR, clip_norm=5.0)
        if use_mpi:
            loss, correct = cluster.data_parallel(model).gradient(x, y)
        else:
            model.zero_grad()
            loss, correct = batch_gradient(model, x, y)
        grads.append({n: g.copy() for n, g in model.gradients().items()})
        optimizer.step()
        models.append(model.parameters())
        losses.append((loss, correct))
    one, many = models
    params = b"".join(many[n].tobytes() for n in sorted(many))
    return {"kind": kind, "rank": cluster.rank, "lr": LR, "eps": EPS,
            "loss": abs(losses[0][0] - losses[1][0]), "correct": losses[0][1] == losses[1][1],
            "grad": max(float(np.abs(grads[0][n] - grads[1][n]).max()) for n in grads[0]),
            "param": max(float(np.abs(one[n] - many[n]).max()) for n in one),
            "moved": max(float(np.abs(one[n] - before).max()) for n, before in
                         build_model(kind, tiny_sizes(kind), K, F, dtype=np.float64,
                                     rng=np.random.default_rng(3)).parameters().items()),
            "digest": hashlib.sha256(params).hexdigest()}


def inject(mode: str, call: int) -> None:
    """Make rank 1 fail at its ``call``-th gradient."""
    original = mpi.MPIParallel.gradient
    calls = [0]

    def gradient(self, x, y, votes=None):
        calls[0] += 1
        if self.cluster.rank == 1 and calls[0] == call:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif mode == "hang":
                os.kill(os.getpid(), signal.SIGSTOP)
            elif mode == "raise":
                raise RuntimeError("a fault injected on rank 1")
            elif mode == "nan":                 # rank 1's shard gives a NaN loss
                real = mpi.shard_gradient
                mpi.shard_gradient = lambda *args: (float("nan"), real(*args)[1])
                try:
                    return original(self, x, y, votes)
                finally:
                    mpi.shard_gradient = real
        return original(self, x, y, votes)

    mpi.MPIParallel.gradient = gradient


def check_steps(cluster, folder: str) -> int:
    results = [one_step(kind, cluster) for kind in MODEL_KINDS]
    Path(folder, f"rank{cluster.rank}.json").write_text(json.dumps(results))
    return 0


def main(argv) -> int:
    if argv[0] == "step":
        cluster = mpi.connect()
        return cluster.run(lambda: check_steps(cluster, argv[1]))
    if argv[0] == "fault":
        inject(argv[1], int(argv[2]))
        return cli.main(argv[argv.index("--") + 1:])
    raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
