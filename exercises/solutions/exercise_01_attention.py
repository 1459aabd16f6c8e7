"""Solution of exercise 1: multi-head dot-product attention over the memory rows and the input.

The equations and shapes are in the exercise's docstrings (``exercises/exercise_01_attention.py``).
"""
from __future__ import annotations

import numpy as np

import layers


def concat_rows_forward(memory, xp):
    """memory (B, N, d), xp (B, d) -> L (B, N+1, d): the input becomes the last row."""
    L = np.concatenate([memory, xp[:, None, :]], axis=1)
    return L, memory.shape[1]


def concat_rows_backward(dL, cache):
    """dL (B, N+1, d) -> dmemory (B, N, d), dxp (B, d)."""
    N = cache
    # L = concatenate([memory, xp[:, None, :]], axis=1)
    dmemory = dL[:, :N].copy()
    dxp = dL[:, N].copy()
    return dmemory, dxp


def softmax_forward(x):
    """Softmax over the last axis: x (..., R) -> y (..., R); the cache is y."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    y = e / e.sum(axis=-1, keepdims=True)
    return y, y


def softmax_backward(dy, cache):
    """dy (..., R) -> dx (..., R)."""
    y = cache
    # y = exp(x - max) / sum(exp(x - max))
    dx = y * (dy - np.sum(dy * y, axis=-1, keepdims=True))
    return dx


def attention_forward(q, k, v):
    """q, k (B, H, R, key_size), v (B, H, R, head_size) -> heads (B, H, R, head_size), cache."""
    scale = q.shape[-1] ** -0.5
    logits = (q @ k.swapaxes(-1, -2)) * scale                      # (B, H, R, R)
    weights, softmax_cache = softmax_forward(logits)
    heads = weights @ v
    cache = {"q": q, "k": k, "v": v, "scale": scale, "weights": weights,
             "softmax": softmax_cache}
    return heads, cache


def attention_backward(dheads, cache):
    """dheads (B, H, R, head_size) -> dq, dk, dv."""
    q, k, v, scale, weights = cache["q"], cache["k"], cache["v"], cache["scale"], cache["weights"]
    # heads = weights @ v
    dweights = dheads @ v.swapaxes(-1, -2)
    dv = weights.swapaxes(-1, -2) @ dheads
    # weights = softmax(logits)
    dlogits = softmax_backward(dweights, cache["softmax"])
    # logits = (q @ k^T) * scale
    dlogits = dlogits * scale
    dq = dlogits @ k
    dk = dlogits.swapaxes(-1, -2) @ q
    return dq, dk, dv


def multihead_attention_forward(L, params, num_heads, key_size):
    """L (B, R, D) -> out (B, R, H*head_size), cache (``cache["weights"]`` (B, H, R, R))."""
    B, R, _ = L.shape
    H, ks = num_heads, key_size
    qkv_size = params["W_qkv"].shape[1] // H
    hs = qkv_size - 2 * ks
    qkv_lin, lin_cache = layers.linear_forward(L, params["W_qkv"], params["b_qkv"])
    qkv, ln_cache = layers.layernorm_forward(qkv_lin, params["ln_g"], params["ln_b"])
    qkv = qkv.reshape(B, R, H, qkv_size).transpose(0, 2, 1, 3)     # (B, H, R, qkv_size)
    q, k, v = qkv[..., :ks], qkv[..., ks:2 * ks], qkv[..., 2 * ks:]
    heads, attn_cache = attention_forward(q, k, v)
    out = heads.transpose(0, 2, 1, 3).reshape(B, R, H * hs)
    cache = {"lin": lin_cache, "ln": ln_cache, "attn": attn_cache, "heads": heads.shape,
             "weights": attn_cache["weights"], "sizes": (H, ks, hs)}
    return out, cache


def multihead_attention_backward(dout, cache):
    """dout (B, R, H*head_size) -> dL (B, R, D), grads {W_qkv, b_qkv, ln_g, ln_b}."""
    H, ks, hs = cache["sizes"]
    B, R, _ = dout.shape
    # out = heads.transpose(0, 2, 1, 3).reshape(B, R, H * hs)
    dheads = dout.reshape(B, R, H, hs).transpose(0, 2, 1, 3)
    # heads = attention(q, k, v)
    dq, dk, dv = attention_backward(dheads, cache["attn"])
    # q, k, v = qkv[..., :ks], qkv[..., ks:2ks], qkv[..., 2ks:], after the head split
    dqkv = np.concatenate([dq, dk, dv], axis=-1).transpose(0, 2, 1, 3).reshape(B, R, -1)
    # qkv = LayerNorm(qkv_lin)
    dqkv_lin, dln_g, dln_b = layers.layernorm_backward(dqkv, cache["ln"])
    # qkv_lin = L @ W_qkv + b_qkv
    dL, dW_qkv, db_qkv = layers.linear_backward(dqkv_lin, cache["lin"])
    grads = {"W_qkv": dW_qkv, "b_qkv": db_qkv, "ln_g": dln_g, "ln_b": dln_b}
    return dL, grads
