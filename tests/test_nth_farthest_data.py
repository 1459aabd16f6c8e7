"""N-th Farthest task generator: labels against a plain brute force, encoding, shuffling,
reproducibility, distribution, curriculum variant, dtypes and bad arguments."""
import math

import numpy as np
import pytest

import nth_farthest as nf

K, F = 8, 16


def decode_example(x, num_objects, num_features):
    """Decode one example (rows, W) back to ({id: vector}, m, n), checking the encoding.

    Written plainly with loops: every row must carry exact 0/1 one-hots with exactly one 1 per
    block, the same m and n on every row, and every id exactly once.
    """
    vectors, ms, ns = {}, [], []
    for row in x:
        vec = [float(v) for v in row[:num_features]]
        blocks = []
        for j in range(3):
            block = row[num_features + j * num_objects:num_features + (j + 1) * num_objects]
            ones = [i for i, v in enumerate(block) if v == 1]
            zeros = [i for i, v in enumerate(block) if v == 0]
            assert len(ones) == 1 and len(zeros) == num_objects - 1, block
            blocks.append(ones[0])
        obj_id, m, n = blocks
        assert obj_id not in vectors, f"id {obj_id} appears twice"
        vectors[obj_id] = vec
        ms.append(m)
        ns.append(n)
    assert sorted(vectors) == list(range(len(x))), "ids must be 0..rows-1, each once"
    assert len(set(ms)) == 1 and len(set(ns)) == 1, "m and n must repeat on every row"
    return vectors, ms[0], ns[0]


def brute_force_label(vectors, m, n):
    """The object id at position n of the ascending Euclidean distances from object m."""
    dists = []
    for obj_id in sorted(vectors):
        total = 0.0
        for a, b in zip(vectors[obj_id], vectors[m]):
            total += (a - b) ** 2
        dists.append((math.sqrt(total), obj_id))
    dists.sort()
    return dists[n][1]


def farthest(vectors, m):
    best_id, best = None, -1.0
    for obj_id, vec in vectors.items():
        d = math.sqrt(sum((a - b) ** 2 for a, b in zip(vec, vectors[m])))
        if d > best:
            best_id, best = obj_id, d
    return best_id


def test_brute_force_oracle_on_a_hand_made_example():
    # Objects on a line at 0, 3, 1, -2 (ids 0..3); from object 0 the distances are 0, 3, 1, 2.
    x = np.zeros((4, 1 + 12))
    coords = {0: 0.0, 1: 3.0, 2: 1.0, 3: -2.0}
    for row, obj_id in enumerate([2, 0, 3, 1]):             # shuffled rows
        x[row, 0] = coords[obj_id]
        x[row, 1 + obj_id] = 1
        x[row, 1 + 4 + 0] = 1                                # m = 0
        x[row, 1 + 8 + 2] = 1                                # n = 2
    vectors, m, n = decode_example(x, 4, 1)
    assert (m, n) == (0, 2)
    assert [brute_force_label(vectors, 0, r) for r in range(4)] == [0, 2, 3, 1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_labels_match_brute_force(dtype):
    x, labels, n = nf.make_batch(np.random.default_rng(1), 300, K, F, dtype=dtype)
    for b in range(x.shape[0]):
        vectors, m_b, n_b = decode_example(x[b], K, F)
        assert n_b == n[b]
        assert labels[b] == brute_force_label(vectors, m_b, n_b), b


def test_small_reduced_task_labels_match_brute_force():
    x, labels, n = nf.make_batch(np.random.default_rng(2), 500, 4, 4)
    assert x.shape == (500, 4, 4 + 12)
    for b in range(x.shape[0]):
        vectors, m_b, n_b = decode_example(x[b], 4, 4)
        assert labels[b] == brute_force_label(vectors, m_b, n_b)


def test_n_zero_gives_m_and_last_n_gives_the_farthest():
    x, labels, n = nf.make_batch(np.random.default_rng(3), 2000, K, F)
    seen_zero = seen_last = 0
    for b in range(x.shape[0]):
        vectors, m_b, n_b = decode_example(x[b], K, F)
        if n_b == 0:
            assert labels[b] == m_b
            seen_zero += 1
        elif n_b == K - 1:
            assert labels[b] == farthest(vectors, m_b)
            seen_last += 1
    assert seen_zero > 100 and seen_last > 100


def test_layout_shapes_and_dtypes():
    for dtype in (np.float32, np.float64):
        x, labels, n = nf.make_batch(np.random.default_rng(0), 7, K, F, dtype=dtype)
        assert x.shape == (7, K, F + 3 * K) and x.dtype == dtype
        assert labels.shape == (7,) and labels.dtype == np.int64
        assert n.shape == (7,) and n.dtype == np.int64
    assert nf.task_width(K, F) == F + 3 * K == 40
    assert nf.task_width(4, 4) == 16


def test_float32_and_float64_hold_the_same_draws():
    x32, _, n32 = nf.make_batch(np.random.default_rng(5), 50, K, F, dtype=np.float32)
    x64, _, n64 = nf.make_batch(np.random.default_rng(5), 50, K, F, dtype="float64")
    np.testing.assert_array_equal(x32, x64.astype(np.float32))
    np.testing.assert_array_equal(n32, n64)


def test_vectors_lie_in_minus_one_one_and_fill_the_range():
    x, _, _ = nf.make_batch(np.random.default_rng(6), 1000, K, F)
    v = x[:, :, :F]
    assert v.min() >= -1 and v.max() <= 1
    assert v.min() < -0.99 and v.max() > 0.99
    assert abs(float(v.mean())) < 0.01                       # uniform: mean 0, var 1/3
    assert abs(float(v.var()) - 1 / 3) < 0.01


def test_rows_are_shuffled_independently_per_example():
    x, _, _ = nf.make_batch(np.random.default_rng(7), 500, K, F)
    ids = x[:, :, F:F + K].argmax(-1)                          # (B, K) id shown at each row
    in_order = np.all(ids == np.arange(K), axis=1)
    assert in_order.sum() < 5                                  # 1/8! chance per example
    assert len({tuple(r) for r in ids}) > 450                  # not one permutation for all
    # Every id reaches every row position.
    for row in range(K):
        assert set(ids[:, row]) == set(range(K))


def test_reproducible_from_the_seed():
    a = nf.make_batch(np.random.default_rng(11), 64, K, F)
    b = nf.make_batch(np.random.default_rng(11), 64, K, F)
    c = nf.make_batch(np.random.default_rng(12), 64, K, F)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])
    # Consecutive draws from one generator differ (fresh examples every step).
    rng = np.random.default_rng(13)
    assert not np.array_equal(nf.make_batch(rng, 64, K, F)[0], nf.make_batch(rng, 64, K, F)[0])


def test_n_m_and_labels_cover_all_values_roughly_uniformly():
    B = 8000
    x, labels, n = nf.make_batch(np.random.default_rng(14), B, K, F)
    m = x[:, 0, F + K:F + 2 * K].argmax(-1)
    n_enc = x[:, 0, F + 2 * K:].argmax(-1)
    np.testing.assert_array_equal(n_enc, n)
    for values in (m, n, labels):
        counts = np.bincount(values, minlength=K)
        assert counts.shape == (K,)
        assert counts.min() > 0.8 * B / K and counts.max() < 1.2 * B / K, counts
    # m and n are drawn independently: every (m, n) pair occurs.
    assert len(set(zip(m.tolist(), n.tolist()))) == K * K
    # The label is not trivially m except when n = 0.
    assert np.all((labels == m) == (n == 0))


@pytest.mark.parametrize("k,f", [(2, 1), (3, 2), (5, 16), (8, 4), (8, 16)])
def test_curriculum_variant(k, f):
    B = 300
    x, labels, n = nf.make_batch(np.random.default_rng(20 + k), B, K, F,
                                 active_objects=k, active_features=f)
    assert x.shape == (B, k, F + 3 * K)
    assert labels.max() < k and labels.min() >= 0 and n.max() < k
    assert np.all(x[:, :, f:F] == 0)
    for j in range(3):                                         # one-hot slots >= k stay zero
        start = F + j * K
        assert np.all(x[:, :, start + k:start + K] == 0)
    assert np.any(x[:, :, :f] != 0)
    for b in range(B):
        vectors, m_b, n_b = decode_example(x[b], K, F)
        assert set(vectors) == set(range(k)) and m_b < k and n_b == n[b]
        assert labels[b] == brute_force_label(vectors, m_b, n_b)


def test_curriculum_defaults_equal_the_full_task():
    a = nf.make_batch(np.random.default_rng(30), 40, K, F)
    b = nf.make_batch(np.random.default_rng(30), 40, K, F, active_objects=K, active_features=F)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_eval_set_is_fixed_read_only_and_batches():
    e1 = nf.make_eval_set(123, 100, K, F)
    e2 = nf.make_eval_set(123, 100, K, F)
    e3 = nf.make_eval_set(124, 100, K, F)
    assert len(e1) == 100 and e1.inputs.shape == (100, K, F + 3 * K) and e1.seed == 123
    np.testing.assert_array_equal(e1.inputs, e2.inputs)
    np.testing.assert_array_equal(e1.labels, e2.labels)
    assert not np.array_equal(e1.inputs, e3.inputs)
    # Same draws as make_batch on default_rng(seed).
    x, labels, n = nf.make_batch(np.random.default_rng(123), 100, K, F)
    np.testing.assert_array_equal(e1.inputs, x)
    np.testing.assert_array_equal(e1.labels, labels)
    np.testing.assert_array_equal(e1.n, n)
    with pytest.raises(ValueError):
        e1.inputs[0, 0, 0] = 5.0
    with pytest.raises(AttributeError):
        e1.seed = 1
    parts = list(e1.batches(32))
    assert [p[0].shape[0] for p in parts] == [32, 32, 32, 4]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), e1.labels)
    small = nf.make_eval_set(0, 10, K, F, active_objects=3, active_features=2, dtype=np.float64)
    assert small.inputs.shape == (10, 3, F + 3 * K) and small.inputs.dtype == np.float64


RNG = np.random.default_rng


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(rng=0), TypeError, ["rng", "Generator", "int"]),
    (dict(rng=np.random.RandomState(0)), TypeError, ["rng", "Generator", "RandomState"]),
    (dict(batch_size=0), ValueError, ["batch_size", ">= 1", "0"]),
    (dict(batch_size=2.0), TypeError, ["batch_size", "float"]),
    (dict(num_objects=1), ValueError, ["num_objects", ">= 2", "1"]),
    (dict(num_objects=True), TypeError, ["num_objects", "bool"]),
    (dict(num_features=0), ValueError, ["num_features", ">= 1", "0"]),
    (dict(active_objects=1), ValueError, ["active_objects", "[2, 8]", "1"]),
    (dict(active_objects=9), ValueError, ["active_objects", "[2, 8]", "9"]),
    (dict(active_objects=3.0), TypeError, ["active_objects", "float"]),
    (dict(active_features=0), ValueError, ["active_features", "[1, 16]", "0"]),
    (dict(active_features=17), ValueError, ["active_features", "[1, 16]", "17"]),
    (dict(dtype=np.int32), TypeError, ["dtype", "float32", "int32"]),
    (dict(dtype=np.float16), TypeError, ["dtype", "float16"]),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, exc, words):
    args = dict(rng=RNG(0), batch_size=4, num_objects=K, num_features=F)
    args.update(kwargs)
    rng = args.pop("rng")
    with pytest.raises(exc) as info:
        nf.make_batch(rng, **args)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_bad_eval_set_and_width_arguments():
    with pytest.raises(ValueError, match="seed"):
        nf.make_eval_set(-1, 10, K, F)
    with pytest.raises(TypeError, match="seed"):
        nf.make_eval_set("7", 10, K, F)
    with pytest.raises(ValueError, match="size"):
        nf.make_eval_set(0, 0, K, F)
    with pytest.raises(TypeError, match="rng"):
        nf.make_batch(None, 4, K, F)
    with pytest.raises(ValueError, match="num_objects"):
        nf.task_width(1, F)
    with pytest.raises(ValueError, match="num_features"):
        nf.task_width(K, 0)
    with pytest.raises(ValueError, match="batch_size"):
        next(nf.make_eval_set(0, 4, K, F).batches(0))
