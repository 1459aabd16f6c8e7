"""Multi-head attention: gradients, forward against a plain per-head loop, bad input."""
import numpy as np
import pytest

import autograd_checks as ac
from attention import MultiHeadAttention


def test_attention_gradients():
    results = ac.CASES["attention.MultiHeadAttention"]()
    assert results
    bad = [(r.case, r.tensor, r.error) for r in results if not r.passed]
    assert not bad, bad


def naive_attention(attn, x):
    """The RMC attention written with explicit loops over batch and heads."""
    p = attn.params
    ks, hs = attn.key_size, attn.head_size
    out = np.zeros((x.shape[0], x.shape[1], attn.num_heads * hs))
    weights = np.zeros((x.shape[0], attn.num_heads, x.shape[1], x.shape[1]))
    for b in range(x.shape[0]):
        qkv = x[b] @ p["W_qkv"] + p["b_qkv"]
        qkv = (qkv - qkv.mean(1, keepdims=True)) / np.sqrt(qkv.var(1, keepdims=True) + 1e-5)
        qkv = qkv * p["ln_g"] + p["ln_b"]
        for h in range(attn.num_heads):
            chunk = qkv[:, h * attn.qkv_size:(h + 1) * attn.qkv_size]
            q, k, v = chunk[:, :ks], chunk[:, ks:2 * ks], chunk[:, 2 * ks:]
            logits = q @ k.T / np.sqrt(ks)
            w = np.exp(logits - logits.max(1, keepdims=True))
            w /= w.sum(1, keepdims=True)
            weights[b, h] = w
            out[b, :, h * hs:(h + 1) * hs] = w @ v
    return out, weights


@pytest.mark.parametrize("H, head, key", [(1, 4, None), (3, 2, 5), (4, 8, 8)])
def test_forward_matches_naive_loops(H, head, key):
    rng = np.random.default_rng(0)
    attn = MultiHeadAttention(6, H, head, key, rng=rng)
    attn.params["ln_g"][...] = rng.uniform(0.5, 2, attn.params["ln_g"].shape)
    x = rng.standard_normal((3, 7, 6))
    out, cache = attn.forward(x)
    ref_out, ref_w = naive_attention(attn, x)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache["weights"], ref_w, rtol=1e-10, atol=1e-12)
    assert out.shape == (3, 7, H * head)


def test_weights_are_rows_summing_to_one():
    rng = np.random.default_rng(1)
    attn = MultiHeadAttention(5, 2, 3, rng=rng)
    _, cache = attn.forward(rng.standard_normal((4, 6, 5)) * 10)
    w = cache["weights"]
    assert w.shape == (4, 2, 6, 6)
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(-1), 1)


def test_float32_stays_float32():
    rng = np.random.default_rng(2)
    attn = MultiHeadAttention(5, 2, 3, rng=rng, dtype=np.float32)
    out, cache = attn.forward(rng.standard_normal((2, 3, 5)).astype(np.float32))
    assert out.dtype == np.float32
    dx = attn.backward(np.ones_like(out), cache)
    assert dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in attn.gradients().values())


def test_bad_input_raises_before_any_change():
    attn = MultiHeadAttention(5, 2, 3, rng=np.random.default_rng(0))
    before = attn.state_dict()
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        attn.forward(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="x must have last dimension 5"):
        attn.forward(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        attn.forward(np.full((2, 3, 5), np.nan))
    for name, value in attn.parameters().items():
        np.testing.assert_array_equal(value, before[name])
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(5, 0, 3)
    with pytest.raises(TypeError, match="key_size"):
        MultiHeadAttention(5, 2, 3, key_size=1.5)
