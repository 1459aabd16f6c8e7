"""The N-th Farthest task (Santoro et al., 2018): a batched, vectorised data generator.

One example holds ``num_objects`` (K) vectors of ``num_features`` (F) dimensions, drawn uniform in
[-1, 1], a reference object ``m`` and a rank ``n``, both uniform in [0, K).  The question is:
"which object is the n-th farthest from object m?"  The answer is the object id at position ``n``
of the ascending (stable) argsort of the Euclidean distances from object ``m``, so ``n = 0``
answers ``m`` itself and ``n = K - 1`` the farthest object.

Every object becomes one input row (one time step) of width ``F + 3 K``::

    [ vector (F) | one-hot object id (K) | one-hot m (K) | one-hot n (K) ]

The ``m`` and ``n`` one-hots repeat on every row, and the rows of each example are shuffled with
their own permutation (the id one-hot follows its row), so the id of an object is only known
through its one-hot.  The label (an object id, K classes) is predicted after the last row.

Curriculum: ``active_objects = k`` and ``active_features = f`` keep the *layout* of the full task
(width ``F + 3 K``, one-hots K wide) but use only k rows, ids/m/n/labels in [0, k), and zero
feature columns beyond the first f (distances use the f active features).  A model built for the
full task therefore consumes every curriculum level unchanged.

Shape letters: B batch, K objects (= time steps), F features, W = F + 3 K row width.

Run as a script, ``python nth_farthest.py`` trains the models of this library on the task (the
command line of :mod:`relational_rnn.cli`; ``--help`` documents it).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from layers import check_dtype, check_positive_int

# ============================================================================================
# N-th Farthest task generator
# ============================================================================================


def task_width(num_objects: int, num_features: int) -> int:
    """Width W of one input row: ``num_features + 3 * num_objects``."""
    K = _check_num_objects(num_objects)
    F = check_positive_int("num_features", num_features)
    return F + 3 * K


def _check_num_objects(num_objects) -> int:
    if isinstance(num_objects, bool) or not isinstance(num_objects, numbers.Integral):
        raise TypeError(f"num_objects must be an integer >= 2, got {num_objects!r} "
                        f"({type(num_objects).__name__})")
    if num_objects < 2:
        raise ValueError(f"num_objects must be an integer >= 2, got {num_objects}")
    return int(num_objects)


def _check_int_in_range(name: str, value, low: int, high: int) -> int:
    """Return ``value`` as an int in [low, high] (inclusive), or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer in [{low}, {high}] or None, got {value!r} "
                        f"({type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value}")
    return int(value)


def _check_sizes(num_objects, num_features, active_objects, active_features):
    """Validate the task sizes; return ``(K, F, k, f)`` with the active sizes filled in."""
    K = _check_num_objects(num_objects)
    F = check_positive_int("num_features", num_features)
    k = K if active_objects is None else _check_int_in_range("active_objects", active_objects, 2, K)
    f = F if active_features is None else _check_int_in_range("active_features", active_features,
                                                              1, F)
    return K, F, k, f


def make_batch(rng: np.random.Generator, batch_size: int, num_objects: int, num_features: int, *,
               active_objects: int | None = None, active_features: int | None = None,
               dtype=np.float32):
    """Draw a fresh batch of N-th Farthest examples, vectorised over the batch.

    Args:
        rng: the only source of randomness (``np.random.Generator``).
        batch_size: B >= 1.
        num_objects: K >= 2, fixes the layout (one-hot widths).
        num_features: F >= 1, fixes the layout (vector width).
        active_objects: k in [2, K] (default K): rows, ids, m, n and labels all lie in [0, k).
        active_features: f in [1, F] (default F): feature columns f..F-1 are zero.
        dtype: float32 or float64 for ``inputs``.

    Returns:
        inputs: (B, k, W) with W = F + 3 K, rows ``[vector | id one-hot | m one-hot | n one-hot]``,
            shuffled per example.
        labels: (B,) int64, the object id at position n of the ascending stable argsort of the
            distances from object m.
        n: (B,) int64, the rank asked for (useful to break accuracy down by n).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    B = check_positive_int("batch_size", batch_size)
    K, F, k, f = _check_sizes(num_objects, num_features, active_objects, active_features)
    dt = check_dtype(dtype)

    # Draws, in a fixed order so that a seed fixes the batch.  Vectors are drawn in float64 and
    # rounded once to dtype; the same seed gives the same (rounded) vectors for both dtypes.
    vectors = rng.uniform(-1.0, 1.0, size=(B, k, f)).astype(dt, copy=False)     # (B, k, f)
    m = rng.integers(0, k, size=B, dtype=np.int64)                              # (B,)
    n = rng.integers(0, k, size=B, dtype=np.int64)                              # (B,)
    perm = np.argsort(rng.random((B, k)), axis=1)        # perm[b, r] = object id shown at row r

    # Label from the vectors exactly as encoded (after rounding to dtype), with distances in
    # float64.  Squared distances order the objects like Euclidean ones without the sqrt that
    # could merge two nearby values; the stable sort breaks (measure-zero) ties by object id.
    v = vectors.astype(np.float64, copy=False)
    batch = np.arange(B)
    diff = v - v[batch, m][:, None, :]                                          # (B, k, f)
    sq_dist = np.einsum("bkf,bkf->bk", diff, diff)                              # (B, k)
    order = np.argsort(sq_dist, axis=1, kind="stable")                          # (B, k) ids
    labels = order[batch, n].astype(np.int64, copy=False)

    # Encode: row r of example b shows object perm[b, r].
    W = F + 3 * K
    inputs = np.zeros((B, k, W), dtype=dt)
    inputs[:, :, :f] = np.take_along_axis(vectors, perm[:, :, None], axis=1)
    inputs[batch[:, None], np.arange(k)[None, :], F + perm] = 1                 # id one-hots
    inputs[batch, :, F + K + m] = 1                                             # m on every row
    inputs[batch, :, F + 2 * K + n] = 1                                         # n on every row
    return inputs, labels, n


@dataclass(frozen=True)
class EvalSet:
    """A fixed held-out set: read-only ``inputs`` (S, k, W), ``labels`` (S,), ``n`` (S,)."""

    inputs: np.ndarray
    labels: np.ndarray
    n: np.ndarray
    seed: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(inputs, labels, n)`` slices of at most ``batch_size`` examples, in order."""
        size = check_positive_int("batch_size", batch_size)
        for start in range(0, len(self), size):
            stop = start + size
            yield self.inputs[start:stop], self.labels[start:stop], self.n[start:stop]


def make_eval_set(seed: int, size: int, num_objects: int, num_features: int, *,
                  active_objects: int | None = None, active_features: int | None = None,
                  dtype=np.float32) -> EvalSet:
    """A held-out set of ``size`` examples drawn from its own ``np.random.default_rng(seed)``.

    The same arguments always give the same arrays (returned read-only).  Use a seed that no
    training generator uses.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer >= 0, got {seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed}")
    size = check_positive_int("size", size)
    inputs, labels, n = make_batch(np.random.default_rng(int(seed)), size, num_objects,
                                   num_features, active_objects=active_objects,
                                   active_features=active_features, dtype=dtype)
    for a in (inputs, labels, n):
        a.flags.writeable = False
    return EvalSet(inputs=inputs, labels=labels, n=n, seed=int(seed))


if __name__ == "__main__":
    # Run as a script, this file is the training command line, which lives in the application
    # package: it imports this module, never the other way (models <- application <- command
    # line), so the script hands over to it as ``python -m relational_rnn`` would.
    import runpy
    runpy.run_module("relational_rnn", run_name="__main__", alter_sys=True)
