"""Exercise 1: multi-head dot-product attention over the memory rows plus the input row.

The RMC lets every memory slot look at every other slot, and at the new input, through
attention.  One step works on a set of R = N + 1 rows: the N memory rows and the projected input
as one extra row.  Per head h (H heads, each with queries and keys of width key_size and values
of width head_size):

    QKV = LayerNorm(L W_qkv + b_qkv)               (B, R, H * (2 * key_size + head_size))
    [q_h | k_h | v_h] = head h's chunk of QKV       q_h, k_h (B, R, key_size), v_h (B, R, head_size)
    A_h = softmax(q_h k_h^T / sqrt(key_size)) v_h   softmax over the R key rows
    out = concat_h A_h                              (B, R, H * head_size), no output projection

Write the functions below, forward and backward, in the style of the library (``layers.py``):
a forward returns ``out, cache``; its backward takes ``dout, cache`` and returns the gradient of
every input (and a dict of parameter gradients where the function has parameters).  You may use
the library's ``layers.linear_forward/backward`` and ``layers.layernorm_forward/backward``; the
softmax and the attention are yours.  Batch and heads are leading axes of every product: use
``@`` (``np.matmul``) on (B, H, R, .) arrays, no Python loop over B or H.

Shape letters: B batch, N memory slots, R = N + 1 rows, H heads, d memory row width,
D input row width.

Grade your work:   python exercises/exercise_01_attention.py
The solution:      python exercises/exercise_01_attention.py --solution
Exercise 4 reuses these functions to build a whole RMC step.
"""
from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:     # run from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import layers  # noqa: E402,F401  (for your code: linear_forward, layernorm_forward, ...)
from exercises import grading  # noqa: E402

# ============================================================================================
# Your code
# ============================================================================================


def concat_rows_forward(memory, xp):
    """Append the projected input as one extra row below the memory.

    memory (B, N, d), xp (B, d) -> L (B, N+1, d) with L[:, :N] = memory, L[:, N] = xp;
    and a cache for the backward.
    """
    raise NotImplementedError


def concat_rows_backward(dL, cache):
    """dL (B, N+1, d) -> dmemory (B, N, d), dxp (B, d).  Return new arrays, not views of dL."""
    raise NotImplementedError


def softmax_forward(x):
    """y = softmax(x) over the last axis: y_j = exp(x_j) / sum_i exp(x_i).

    x (..., R) -> y (..., R), cache.  Subtract each row's maximum before ``np.exp`` (it changes
    nothing mathematically and keeps exp from overflowing on logits like 1000).
    """
    raise NotImplementedError


def softmax_backward(dy, cache):
    """dy (..., R) -> dx (..., R).

    The Jacobian of one row is dy_j/dx_i = y_j (delta_ij - y_i), so
    dx = y * (dy - sum(dy * y)), the sum over the last axis (keepdims).
    """
    raise NotImplementedError


def attention_forward(q, k, v):
    """Scaled dot-product attention of every head, all heads and batches at once.

    q (B, H, R, key_size), k (B, H, R, key_size), v (B, H, R, head_size):

        logits  = q k^T / sqrt(key_size)                (B, H, R, R)
        weights = softmax(logits)                       over the last axis (the key rows)
        heads   = weights v                             (B, H, R, head_size)

    Returns heads and a cache: a dict that holds ``"weights"`` (B, H, R, R) (query row i
    attends to key row j at [..., i, j]) and whatever your backward needs.
    """
    raise NotImplementedError


def attention_backward(dheads, cache):
    """dheads (B, H, R, head_size) -> dq, dk (B, H, R, key_size), dv (B, H, R, head_size).

    Go through the forward lines in reverse: heads = weights v, then the softmax (your
    softmax_backward), then logits = q k^T / sqrt(key_size).
    """
    raise NotImplementedError


def multihead_attention_forward(L, params, num_heads, key_size):
    """The RMC's multi-head attention, as ``attention.MultiHeadAttention`` computes it.

    L (B, R, D); params: ``W_qkv`` (D, H*(2*key_size+head_size)), ``b_qkv``, ``ln_g``,
    ``ln_b`` (each (H*(2*key_size+head_size),)); head_size follows from W_qkv's width.

        qkv = LayerNorm(L W_qkv + b_qkv)       one LayerNorm over the whole qkv vector of a row
        qkv -> (B, R, H, 2*key_size+head_size) -> (B, H, R, .): per head [q | k | v]
        heads = attention(q, k, v)             (B, H, R, head_size)
        out = heads -> (B, R, H, head_size) -> (B, R, H*head_size)

    Returns out and a cache that holds ``"weights"`` (B, H, R, R).
    """
    raise NotImplementedError


def multihead_attention_backward(dout, cache):
    """dout (B, R, H*head_size) -> dL (B, R, D), grads.

    ``grads`` is a dict with the keys of ``params``: W_qkv, b_qkv, ln_g, ln_b, each of the
    shape of its parameter.  Undo the reshapes and the head split, then the LayerNorm and the
    Linear (``layers.layernorm_backward``, ``layers.linear_backward``).
    """
    raise NotImplementedError


# ============================================================================================
# Grader (do not edit): the library's functions and modules are the answer key
# ============================================================================================


def _library_attention(H, head_size, key_size, seed, R=5, D=4):
    """A randomised library MultiHeadAttention, an input L and its output and cache."""
    from attention import MultiHeadAttention
    rng = np.random.default_rng(seed)
    attn = MultiHeadAttention(D, H, head_size, key_size, rng=rng)
    grading.randomise(attn, rng)
    L = rng.standard_normal((2, R, D))
    out, cache = attn.forward(L)
    params = {name: p.copy() for name, p in attn.params.items()}
    return attn, params, L, out, cache


CONFIGS = ((1, 3, 3), (2, 3, 2))          # (H, head_size, key_size); key_size != head_size


def check_concat_forward(m, measure):
    rng = np.random.default_rng(0)
    memory, xp = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4))
    L, _ = m.concat_rows_forward(memory, xp)
    measure.close("L", L, np.concatenate([memory, xp[:, None, :]], axis=1))


def check_concat_backward(m, measure):
    rng = np.random.default_rng(1)
    measure.gradients(
        "concat_rows", lambda inp: m.concat_rows_forward(inp["memory"], inp["xp"]),
        lambda d, c: dict(zip(("memory", "xp"), m.concat_rows_backward(d, c))),
        {"memory": rng.standard_normal((2, 3, 4)), "xp": rng.standard_normal((2, 4))})


def check_softmax_forward(m, measure):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5))
    x[0] += 1000.0                                    # large logits: exp would overflow
    x[1] -= 1000.0
    y, _ = m.softmax_forward(x)
    measure.close("softmax(x)", y, layers.softmax(x))


def check_softmax_backward(m, measure):
    rng = np.random.default_rng(3)
    measure.gradients("softmax", lambda inp: m.softmax_forward(inp["x"]),
                      lambda d, c: {"x": m.softmax_backward(d, c)},
                      {"x": rng.standard_normal((3, 4, 5))})


def check_attention_forward(m, measure):
    for H, hs, ks in CONFIGS:
        _, _, _, out, cache = _library_attention(H, hs, ks, seed=4 + H)
        heads, mine = m.attention_forward(cache["q"].copy(), cache["k"].copy(),
                                          cache["v"].copy())
        B, R, _ = out.shape
        measure.close(f"heads (H={H})", heads,
                      out.reshape(B, R, H, hs).transpose(0, 2, 1, 3))
        measure.require(isinstance(mine, dict) and "weights" in mine,
                        'the cache of attention_forward must be a dict with "weights"')
        measure.close(f'cache["weights"] (H={H})', mine["weights"], cache["weights"])


def check_attention_backward(m, measure):
    rng = np.random.default_rng(6)
    H, R, ks, hs = 2, 4, 2, 3
    inputs = {"q": rng.standard_normal((2, H, R, ks)), "k": rng.standard_normal((2, H, R, ks)),
              "v": rng.standard_normal((2, H, R, hs))}
    measure.gradients("attention", lambda inp: m.attention_forward(inp["q"], inp["k"], inp["v"]),
                      lambda d, c: dict(zip("qkv", m.attention_backward(d, c))), inputs)


def check_multihead_forward(m, measure):
    for H, hs, ks in CONFIGS:
        _, params, L, out, cache = _library_attention(H, hs, ks, seed=7 + H)
        mine, my_cache = m.multihead_attention_forward(L.copy(), params, H, ks)
        measure.close(f"out (H={H})", mine, out)
        measure.require(isinstance(my_cache, dict) and "weights" in my_cache,
                        'the cache of multihead_attention_forward must be a dict with "weights"')
        measure.close(f'cache["weights"] (H={H})', my_cache["weights"], cache["weights"])


def check_multihead_backward(m, measure):
    for H, hs, ks in CONFIGS:
        _, params, L, _, _ = _library_attention(H, hs, ks, seed=9 + H)
        names = list(params)

        def forward(inp, H=H, ks=ks):
            return m.multihead_attention_forward(inp["L"], {n: inp[n] for n in names}, H, ks)

        def backward(d, c):
            dL, grads = m.multihead_attention_backward(d, c)
            return {"L": dL, **grads}

        measure.gradients(f"multihead H={H}", forward, backward, {"L": L, **params})


PARTS = [
    grading.Part("concat_rows_forward: L vs np.concatenate", check_concat_forward,
                 grading.FORWARD_TOL, "L[:, :N] is the memory and L[:, N] the input row."),
    grading.Part("concat_rows_backward: gradients vs finite differences",
                 check_concat_backward, grading.LAYER_TOL,
                 "split dL the way the forward joined the rows: dL[:, :N] and dL[:, N]."),
    grading.Part("softmax_forward: vs layers.softmax (logits near +-1000 too)",
                 check_softmax_forward, grading.FORWARD_TOL,
                 "subtract the row max (keepdims=True) before np.exp; normalise over axis -1."),
    grading.Part("softmax_backward: gradient vs finite differences", check_softmax_backward,
                 grading.LAYER_TOL, "dx = y * (dy - (dy * y).sum(axis=-1, keepdims=True))."),
    grading.Part("attention_forward: heads, weights vs MultiHeadAttention",
                 check_attention_forward, grading.FORWARD_TOL,
                 "logits = q @ k.swapaxes(-1, -2) / sqrt(key_size): the key width, q.shape[-1]."),
    grading.Part("attention_backward: dq, dk, dv vs finite differences",
                 check_attention_backward, grading.LAYER_TOL,
                 "dq = dlogits @ k and dk = dlogits^T @ q, both times the scale; "
                 "dv = weights^T @ dheads."),
    grading.Part("multihead_attention_forward: vs MultiHeadAttention", check_multihead_forward,
                 grading.FORWARD_TOL,
                 "one LayerNorm over the whole qkv row, then reshape (B, R, H, .) and "
                 "transpose to (B, H, R, .) before splitting q | k | v."),
    grading.Part("multihead_attention_backward: all gradients vs finite diff.",
                 check_multihead_backward, grading.LAYER_TOL,
                 "join dq | dk | dv on the last axis, transpose back to (B, R, H, .), reshape, "
                 "then layernorm_backward and linear_backward."),
]


grade = grading.grader(PARTS)


if __name__ == "__main__":
    grading.run("Exercise 1 (multi-head attention)", __name__)
