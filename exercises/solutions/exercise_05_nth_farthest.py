"""Solution of exercise 5: the N-th Farthest task generator.

The task and the row layout are in the exercise's docstrings
(``exercises/exercise_05_nth_farthest.py``).
"""
from __future__ import annotations

import numpy as np


def nth_farthest_labels(vectors, m, n):
    """vectors (B, K, F), m (B,), n (B,) -> labels (B,) int64: the object at position n of the
    ascending stable argsort of the squared distances (in float64) from object m."""
    batch = np.arange(vectors.shape[0])
    v = vectors.astype(np.float64)
    diff = v - v[batch, m][:, None, :]                                   # (B, K, F)
    sq_dist = np.einsum("bkf,bkf->bk", diff, diff)                       # (B, K)
    order = np.argsort(sq_dist, axis=1, kind="stable")                   # ids, nearest first
    return order[batch, n].astype(np.int64)


def encode_rows(vectors, m, n, perm, dtype=np.float32):
    """-> inputs (B, K, F + 3K): row r of example b shows object perm[b, r] as
    [vector | one-hot id | one-hot m | one-hot n]."""
    B, K, F = vectors.shape
    batch = np.arange(B)
    inputs = np.zeros((B, K, F + 3 * K), dtype=dtype)
    inputs[:, :, :F] = np.take_along_axis(vectors, perm[:, :, None], axis=1)
    inputs[batch[:, None], np.arange(K)[None, :], F + perm] = 1              # the row's id
    inputs[batch, :, F + K + m] = 1                                          # m, every row
    inputs[batch, :, F + 2 * K + n] = 1                                      # n, every row
    return inputs


def make_nth_farthest_batch(rng, batch_size, num_objects, num_features, dtype=np.float32):
    """A batch of the task: inputs (B, K, F + 3K), labels (B,), n (B,), drawn in the order
    vectors, m, n, row order (so a seed gives the batch of ``nth_farthest.make_batch``)."""
    B, K, F = batch_size, num_objects, num_features
    vectors = rng.uniform(-1.0, 1.0, size=(B, K, F)).astype(dtype)
    m = rng.integers(0, K, size=B)
    n = rng.integers(0, K, size=B)
    perm = np.argsort(rng.random((B, K)), axis=1)
    labels = nth_farthest_labels(vectors, m, n)
    return encode_rows(vectors, m, n, perm, dtype), labels, n
