"""Data-parallel gradients: one training batch's gradient computed by several processes.

Each step cuts the batch of B examples into W shards along its first axis.  The calling process
computes shard 0 with the model itself; W - 1 worker processes (started once, each holding a
replica of the model) compute the others at the same time.  The parameters reach the workers,
and their gradients come back, through shared memory; only the shards and short replies travel
through pipes.

The maths is that of one process.  The loss is the mean over the whole batch,
``L = sum_i (n_i / B) L_i`` with ``L_i`` the mean over shard i of ``n_i`` examples, so each shard's
gradient is weighted by ``n_i / B`` and their sum is the batch gradient.  Only the float rounding
differs (the sums run in another order): a run with W processes repeats bit-exactly with W
processes; W = 1 is exactly the single-process step.

How a batch is cut (:func:`batch_shards`) and how a shard's gradient is weighted
(:func:`shard_gradient`) is written once, here: ``--workers`` (:class:`DataParallel`) and the
MPI ranks (:mod:`relational_rnn.mpi`) both use it, so W workers and W ranks compute the same
shards with the same weights.

Why processes and not BLAS threads: the RMC's matrices are small (rows B x N, a few hundred
columns), so a second BLAS thread gains little, and the element-wise passes (LayerNorm, gates,
softmax) run on one core whatever the BLAS does.  A shard per core parallelises all of it.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

import layers
from relational_rnn.registry import build_model
from relational_rnn.threads import blas_threads, limit_blas_threads

# A reply from a worker that has not come within this many seconds means it hangs.
_REPLY_TIMEOUT = 600.0


def batch_gradient(model, x: np.ndarray, y: np.ndarray, weight: float = 1.0):
    """Forward and backward of ``model`` on one batch, accumulated into ``model.grads``.

    x: (B, T, W_in) inputs; y: (B,) integer labels.  Adds ``weight * dL/dparams`` to the
    gradients, L the batch's mean cross-entropy (call ``zero_grad`` first for a fresh gradient).
    The backward is skipped when L is not finite (the caller stops on it).

    Returns ``(L, correct)``: the mean loss and the number of argmax predictions equal to y.
    """
    logits, cache = model.forward(x)
    loss, dlogits, _ = layers.softmax_cross_entropy(logits, y)
    if math.isfinite(loss):
        if weight != 1.0:
            dlogits *= weight             # d(weight * L)/dlogits
        model.backward(dlogits, cache)
    correct = int(np.count_nonzero(np.argmax(logits, axis=1) == y))
    return loss, correct


@dataclass(frozen=True)
class Shard:
    """Examples ``start:stop`` of a batch of ``batch_size``: its share of the batch gradient has
    the weight ``n_i / B`` (n_i its examples)."""

    start: int
    stop: int
    batch_size: int

    @property
    def weight(self) -> float:
        return (self.stop - self.start) / self.batch_size

    def take(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This shard's examples of the batch ``(x, y)``."""
        return x[self.start:self.stop], y[self.start:self.stop]


def batch_shards(batch_size: int, parts: int) -> list[Shard]:
    """The ``parts`` contiguous shards of a batch of ``batch_size``, their sizes differing by
    one at most.  The one place a batch is cut: ``--workers`` and the MPI ranks alike."""
    parts = check_workers(parts, batch_size)
    bounds = np.linspace(0, batch_size, parts + 1).round().astype(int)
    return [Shard(int(a), int(b), batch_size) for a, b in zip(bounds[:-1], bounds[1:])]


def shard_gradient(model, x: np.ndarray, y: np.ndarray, weight: float) -> tuple[float, int]:
    """The share of one shard ``(x, y)`` in the batch gradient: adds ``weight * dL_i/dparams``
    to ``model.grads`` and returns ``(weight * L_i, correct_i)``, whose sums over the shards are
    the batch's mean loss and its correct count.  ``weight`` is the shard's ``n_i / B``."""
    loss, correct = batch_gradient(model, x, y, weight)
    return loss * weight, correct


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                # not on Linux
        return os.cpu_count() or 1


def check_workers(workers, batch_size: int) -> int:
    """Return ``workers`` as an int, or raise if it is not in [1, batch_size] (every process
    needs one example of the batch at least)."""
    workers = layers.check_positive_int("workers", workers)
    if workers > batch_size:
        raise ValueError(f"workers={workers} exceeds the batch size {batch_size}: every process "
                         "needs one example at least")
    return workers


def _layout(named: Mapping[str, np.ndarray]):
    """``(name, start, stop, shape)`` of each array in one flat buffer, and the total size."""
    entries, start = [], 0
    for name, a in named.items():
        entries.append((name, start, start + a.size, a.shape))
        start += a.size
    return entries, start


def _views(buffer, dtype, layout) -> dict[str, np.ndarray]:
    """Arrays by name over the shared ``buffer`` (no copies)."""
    flat = np.frombuffer(buffer, dtype=dtype)
    return {name: flat[start:stop].reshape(shape) for name, start, stop, shape in layout}


def _worker_main(conn, kind: str, sizes, num_objects: int, num_features: int,
                 dtype: str, params_buffer, grads_buffer, layout, threads: int | None) -> None:
    """A worker process: rebuild the model, then answer gradient requests until told to stop."""
    # Ctrl-C reaches the whole process group: the parent finishes its step, saves and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        limit_blas_threads(threads)       # as many BLAS threads as the parent
        model = build_model(kind, sizes, num_objects, num_features, dtype=dtype)
        named = list(model.named_parameters())
        got = [(name, p.shape) for name, p, _ in named]
        want = [(name, shape) for name, _, _, shape in layout]
        if got != want:
            diff = [f"{g} here, {w} in the parent" for g, w in zip(got, want) if g != w][:3]
            raise ValueError(f"the {kind} model built from sizes {sizes} does not match "
                             f"the parent's model ({len(got)} against {len(want)} parameters; "
                             f"first differences: {'; '.join(diff)})")
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready",))
    shared_params = _views(params_buffer, dtype, layout)
    shared_grads = _views(grads_buffer, dtype, layout)
    while True:
        request = conn.recv()
        if request is None:
            break
        x, y, weight = request
        try:
            for name, p, _ in named:
                np.copyto(p, shared_params[name])
            model.zero_grad()
            loss, correct = shard_gradient(model, x, y, weight)
            for name, _, g in named:
                np.copyto(shared_grads[name], g)
            conn.send(("ok", loss, correct))
        except Exception:                 # report it to the parent, which raises it
            conn.send(("error", traceback.format_exc()))
    conn.close()


class DataParallel:
    """The gradient of a batch for ``model``, computed by ``workers`` processes.

    ``kind``, ``sizes``, ``num_objects`` and ``num_features`` are those ``model`` was built from
    with :func:`relational_rnn.registry.build_model` (each worker builds a replica; its
    parameters are copied from ``model`` at every step).  ``workers = 1`` starts no process.

    The workers are fresh interpreters ("spawn"): each imports the main script again, so a
    script that uses ``workers > 1`` must keep its work under ``if __name__ == "__main__":``.
    Use as a context manager (or call :meth:`close`) so the worker processes end::

        with DataParallel(model, "rmc", sizes, K, F, workers=2) as parallel:
            loss, correct = parallel.gradient(x, y)    # model.grads now hold dL/dparams
    """

    def __init__(self, model, kind: str, sizes, num_objects: int, num_features: int,
                 *, workers: int = 1):
        self.model = model
        self.workers = layers.check_positive_int("workers", workers)
        self.root = True                  # this process writes the run (MPI: rank 0 alone)
        self._votes = None
        self._named = list(model.named_parameters())
        self._conns, self._procs, self._shared_grads = [], [], []
        if workers == 1:
            return
        dtype = np.dtype(model.dtype)
        layout, size = _layout({name: p for name, p, _ in self._named})
        ctx = mp.get_context("spawn")         # a clean interpreter: no inherited BLAS threads
        params_buffer = ctx.RawArray("b", size * dtype.itemsize)
        self._shared_params = _views(params_buffer, dtype, layout)
        try:
            for _ in range(workers - 1):
                grads_buffer = ctx.RawArray("b", size * dtype.itemsize)
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(target=_worker_main, daemon=True,
                                   args=(child_end, kind, sizes, num_objects,
                                         num_features, dtype.name, params_buffer, grads_buffer,
                                         layout, blas_threads()))
                proc.start()
                child_end.close()
                self._conns.append(parent_end)
                self._procs.append(proc)
                self._shared_grads.append(_views(grads_buffer, dtype, layout))
            for i, conn in enumerate(self._conns):        # each has built its replica
                self._receive(i, conn)
        except BaseException:
            self.close()
            raise

    def gradient(self, x: np.ndarray, y: np.ndarray, votes: Callable | None = None):
        """Set ``model.grads`` to dL/dparams of the batch (x (B, T, W_in), y (B,)), L its mean
        cross-entropy; returns ``(L, correct)`` as :func:`batch_gradient` does.

        ``votes`` (optional) is this process's ``() -> (out_of_time, interrupted)``: one process
        decides alone, so :meth:`agreed_stop` asks it when the step is done."""
        self._votes = votes
        B = len(y)
        check_workers(self.workers, B)
        self.model.zero_grad()
        if self.workers == 1:
            return batch_gradient(self.model, x, y)
        shards = batch_shards(B, self.workers)
        for name, p, _ in self._named:
            np.copyto(self._shared_params[name], p)
        for i, (conn, shard) in enumerate(zip(self._conns, shards[1:])):
            try:
                conn.send((*shard.take(x, y), shard.weight))
            except OSError:
                raise RuntimeError(self._ended(i)) from None
        loss, correct = shard_gradient(self.model, *shards[0].take(x, y), shards[0].weight)
        for i, conn in enumerate(self._conns):
            reply = self._receive(i, conn)
            loss += reply[1]
            correct += reply[2]
            shared = self._shared_grads[i]
            for name, _, g in self._named:
                g += shared[name]
        return loss, correct

    def agreed_stop(self) -> tuple[bool, bool]:
        """``(out_of_time, interrupted)`` by the ``votes`` of the last :meth:`gradient`, asked
        now (no votes: ``(False, False)``)."""
        return self._votes() if self._votes is not None else (False, False)

    def _receive(self, i: int, conn):
        if not conn.poll(_REPLY_TIMEOUT):
            raise RuntimeError(f"data-parallel worker {i + 1} sent no gradient within "
                               f"{_REPLY_TIMEOUT:g} s")
        try:
            reply = conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(self._ended(i)) from None
        if reply[0] == "error":
            raise RuntimeError(f"data-parallel worker {i + 1} failed:\n{reply[1]}")
        return reply

    def _ended(self, i: int) -> str:
        self._procs[i].join(timeout=1)
        return (f"data-parallel worker {i + 1} ended unexpectedly (exit code "
                f"{self._procs[i].exitcode}); a script that starts workers needs the "
                "'if __name__ == \"__main__\":' guard, because each worker imports it")

    def close(self) -> None:
        """Stop the worker processes (safe to call twice)."""
        for conn in self._conns:
            try:
                conn.send(None)
                conn.close()
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        self._conns, self._procs, self._shared_grads = [], [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
