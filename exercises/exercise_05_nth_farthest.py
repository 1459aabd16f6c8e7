"""Exercise 5: the N-th Farthest task, the relational question the RMC was built for.

One example holds K objects, vectors of F features drawn uniform in [-1, 1], a reference object
m and a rank n, both uniform in [0, K).  The question: "which object is the n-th farthest from
object m?"  The answer is the object id at position n of the *ascending* order of the Euclidean
distances from object m, ties broken by the smaller id (a stable sort): n = 0 answers m itself
(distance 0), n = K - 1 the farthest object.  Squared distances give the same order without a
square root; compute them in float64 from the vectors as they are stored.

The model sees the objects one per time step, in an order shuffled per example.  Row r shows
the object perm[b, r] (perm[b] is a permutation of 0 .. K-1) as a row of width W = F + 3K:

    [ its vector (F) | one-hot of its id (K) | one-hot of m (K) | one-hot of n (K) ]

The m and n one-hots repeat on every row.  Since the rows are shuffled, an object is known only
by its id one-hot, and the label is an id (K classes), not a row position.

Shape letters: B batch, K objects (= time steps T), F features, W row width.

Grade your work:   python exercises/exercise_05_nth_farthest.py
The solution:      python exercises/exercise_05_nth_farthest.py --solution
"""
from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:     # run from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from exercises import grading  # noqa: E402

# ============================================================================================
# Your code
# ============================================================================================


def nth_farthest_labels(vectors, m, n):
    """vectors (B, K, F), m (B,), n (B,) integers -> labels (B,) int64.

    labels[b] = the id at position n[b] of the ascending, stable argsort of the squared
    distances from object m[b] (``np.argsort(..., kind="stable")``).  Vectorised: no loop.
    """
    raise NotImplementedError


def encode_rows(vectors, m, n, perm, dtype=np.float32):
    """vectors (B, K, F), m (B,), n (B,), perm (B, K) -> inputs (B, K, F + 3K) of ``dtype``.

    Row r of example b: vectors[b, perm[b, r]], then the one-hots of perm[b, r], m[b], n[b].
    Fancy indexing (``np.take_along_axis``, index arrays) does it without a loop.
    """
    raise NotImplementedError


def make_nth_farthest_batch(rng, batch_size, num_objects, num_features, dtype=np.float32):
    """A fresh batch: inputs (B, K, F + 3K) of ``dtype``, labels (B,) int64, n (B,) int64.

    Draw from ``rng`` in exactly this order, so that a seed gives the batch that
    ``nth_farthest.make_batch`` gives:

        vectors = rng.uniform(-1.0, 1.0, size=(B, K, F)), then cast to dtype
        m       = rng.integers(0, K, size=B)
        n       = rng.integers(0, K, size=B)
        perm    = np.argsort(rng.random((B, K)), axis=1)

    and label the vectors as stored (after the cast).
    """
    raise NotImplementedError


# ============================================================================================
# Grader (do not edit): brute force, and the library's nth_farthest.make_batch
# ============================================================================================

SIZES = ((3, 1), (5, 4), (8, 16))     # (K, F): a curriculum phase, a middle size, the paper


def _brute_force_label(vectors, m, n):
    """One example, by plain loops: sort (squared distance, id) pairs and take the n-th."""
    reference = [float(a) for a in vectors[m]]
    pairs = []
    for obj, vector in enumerate(vectors):
        pairs.append((sum((float(a) - r) ** 2 for a, r in zip(vector, reference)), obj))
    pairs.sort()
    return pairs[n][1]


def _draw(seed, B, K, F):
    rng = np.random.default_rng(seed)
    vectors = rng.uniform(-1.0, 1.0, size=(B, K, F))
    m, n = rng.integers(0, K, size=B), rng.integers(0, K, size=B)
    perm = np.argsort(rng.random((B, K)), axis=1)
    return vectors, m, n, perm


def _decode(example, K, F, measure):
    """One example's rows -> (vectors by id (K, F), m, n, ids in row order), checking that
    every row is well formed."""
    ids = []
    vectors = np.zeros((K, F))
    for row in example:
        onehots = [row[F + j * K:F + (j + 1) * K] for j in range(3)]
        for name, part in zip(("id", "m", "n"), onehots):
            measure.require(np.sort(part).tolist() == [0.0] * (K - 1) + [1.0],
                            f"a row's {name} block is not a one-hot: {part.tolist()}")
        ids.append(int(np.argmax(onehots[0])))
        vectors[ids[-1]] = row[:F]
        mn = (int(np.argmax(onehots[1])), int(np.argmax(onehots[2])))
        measure.require(mn == (int(np.argmax(example[0][F + K:F + 2 * K])),
                               int(np.argmax(example[0][F + 2 * K:]))),
                        "the m and n one-hots differ from one row to the next")
    measure.require(sorted(ids) == list(range(K)), f"the rows' ids {ids} are not 0 .. K-1 once")
    return vectors, mn[0], mn[1], ids


def check_labels(m, measure):
    for k, (K, F) in enumerate(SIZES):
        vectors, ms, ns, _ = _draw(k, 300, K, F)
        labels = m.nth_farthest_labels(vectors, ms, ns)
        measure.require(isinstance(labels, np.ndarray) and labels.shape == (300,)
                        and labels.dtype.kind in "iu",
                        f"labels must be an integer array of shape (300,), got "
                        f"{getattr(labels, 'dtype', type(labels))} {np.shape(labels)}")
        wrong = [b for b in range(300)
                 if labels[b] != _brute_force_label(vectors[b], ms[b], ns[b])]
        measure.error(f"share of wrong labels (K={K}, F={F})", len(wrong) / 300)
        first = np.flatnonzero(ns == 0)
        measure.require(np.array_equal(labels[first], ms[first]), "n = 0 must answer m itself")


def check_encoding(m, measure):
    for k, (K, F) in enumerate(SIZES):
        vectors, ms, ns, perm = _draw(10 + k, 20, K, F)
        expected = np.zeros((20, K, F + 3 * K))
        for b in range(20):
            for r in range(K):
                expected[b, r, :F] = vectors[b, perm[b, r]]
                for j, value in enumerate((perm[b, r], ms[b], ns[b])):
                    expected[b, r, F + j * K + value] = 1.0
        inputs = m.encode_rows(vectors, ms, ns, perm, dtype=np.float64)
        measure.close(f"inputs (K={K}, F={F})", inputs, expected)


def check_batch(m, measure):
    for k, (K, F) in enumerate(SIZES):
        inputs, labels, ns = m.make_nth_farthest_batch(np.random.default_rng(20 + k), 200, K, F)
        measure.require(inputs.shape == (200, K, F + 3 * K) and inputs.dtype == np.float32,
                        f"inputs must be float32 of shape {(200, K, F + 3 * K)}, got "
                        f"{inputs.dtype} {inputs.shape}")
        measure.require(labels.shape == (200,) and ns.shape == (200,),
                        "labels and n must have shape (B,)")
        wrong, in_order = 0, 0
        for b in range(200):
            vectors, mb, nb, ids = _decode(inputs[b], K, F, measure)
            measure.require(nb == ns[b], "the returned n differs from the n one-hot")
            measure.require(np.abs(vectors).max() <= 1.0, "a vector lies outside [-1, 1]")
            wrong += labels[b] != _brute_force_label(vectors, mb, nb)
            in_order += ids == sorted(ids)
        measure.error(f"share of wrong labels (K={K}, F={F})", wrong / 200)
        measure.require(K == 3 or in_order < 20,
                        f"{in_order} of 200 examples show their objects in id order: "
                        "shuffle the rows")


def check_against_library(m, measure):
    import nth_farthest
    for k, (K, F) in enumerate(SIZES):
        for dtype in (np.float32, np.float64):
            mine = m.make_nth_farthest_batch(np.random.default_rng(30 + k), 64, K, F, dtype)
            ref = nth_farthest.make_batch(np.random.default_rng(30 + k), 64, K, F, dtype=dtype)
            for name, got, expected in zip(("inputs", "labels", "n"), mine, ref):
                measure.require(np.shape(got) == expected.shape,
                                f"{name} has shape {np.shape(got)}, expected {expected.shape}")
                same = np.array_equal(got, expected)
                measure.error(f"{name} (K={K}, F={F}, {np.dtype(dtype).name})", 0.0 if same
                              else float(np.mean(np.asarray(got) != expected)))


PARTS = [
    grading.Part("nth_farthest_labels: vs brute-force sorting", check_labels, 0.0,
                 "ascending distances from object m, stable argsort; take position n."),
    grading.Part("encode_rows: vs a row-by-row encoder", check_encoding, 0.0,
                 "row r shows object perm[b, r]: its vector, then one-hots at F + id, "
                 "F + K + m, F + 2K + n."),
    grading.Part("make_nth_farthest_batch: decoded and relabelled by brute force",
                 check_batch, 0.0,
                 "the label is an object id (not a row position), of the vectors as stored."),
    grading.Part("make_nth_farthest_batch: vs nth_farthest.make_batch, same seed",
                 check_against_library, 0.0,
                 "draw vectors, m, n, then the row order, from rng in that order; "
                 "cast the vectors before labelling."),
]


grade = grading.grader(PARTS)


if __name__ == "__main__":
    grading.run("Exercise 5 (the N-th Farthest task)", __name__)
