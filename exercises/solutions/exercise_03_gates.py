"""Solution of exercise 3: the RMC's gated memory update.

The equations and shapes are in the exercise's docstrings (``exercises/exercise_03_gates.py``).
"""
from __future__ import annotations

import numpy as np

import layers


def gates_forward(xp, memory, params, input_bias=0.0, forget_bias=1.0):
    """xp (B, d), memory (B, N, d) -> (i, f), each (B, N, G), and the cache."""
    G = params["W_gx"].shape[1] // 2
    gx, gx_cache = layers.linear_forward(xp, params["W_gx"], params["b_g"])       # (B, 2G)
    tanh_mem = np.tanh(memory)
    gm, gm_cache = layers.linear_forward(tanh_mem, params["W_gm"], None)          # (B, N, 2G)
    gates = gm + gx[:, None, :]
    i = layers.sigmoid(gates[..., :G] + input_bias)
    f = layers.sigmoid(gates[..., G:] + forget_bias)
    cache = {"gx": gx_cache, "gm": gm_cache, "tanh_mem": tanh_mem, "i": i, "f": f}
    return (i, f), cache


def gates_backward(di, df, cache):
    """di, df (B, N, G) -> dxp (B, d), dmemory (B, N, d), grads {W_gx, W_gm, b_g}."""
    # i = sigmoid(gates[..., :G] + input_bias);  f = sigmoid(gates[..., G:] + forget_bias)
    dgates = np.concatenate([layers.sigmoid_backward(di, cache["i"]),
                             layers.sigmoid_backward(df, cache["f"])], axis=-1)
    # gates = gm + gx[:, None, :]
    dgx = dgates.sum(axis=1)
    # gm = tanh_mem @ W_gm
    dtanh_mem, dW_gm, _ = layers.linear_backward(dgates, cache["gm"])
    # tanh_mem = tanh(memory)
    dmemory = layers.tanh_backward(dtanh_mem, cache["tanh_mem"])
    # gx = xp @ W_gx + b_g
    dxp, dW_gx, db_g = layers.linear_backward(dgx, cache["gx"])
    return dxp, dmemory, {"W_gx": dW_gx, "W_gm": dW_gm, "b_g": db_g}


def gated_update_forward(m_tilde, memory, i, f):
    """m_tilde, memory (B, N, d), i, f (B, N, G) -> new memory (B, N, d), cache."""
    tanh_mt = np.tanh(m_tilde)
    new_memory = i * tanh_mt + f * memory
    return new_memory, (tanh_mt, memory, i, f)


def _sum_to(grad, shape):
    """Undo a broadcast over the last axis: sum ``grad`` (B, N, d) down to ``shape`` (B, N, G)."""
    return grad if grad.shape == shape else grad.sum(axis=-1, keepdims=True)


def gated_update_backward(dnew, cache):
    """dnew (B, N, d) -> dm_tilde, dmemory (B, N, d), di, df (B, N, G)."""
    tanh_mt, memory, i, f = cache
    # new_memory = i * tanh_mt + f * memory   (i, f broadcast over d when G = 1)
    di = _sum_to(dnew * tanh_mt, i.shape)
    df = _sum_to(dnew * memory, f.shape)
    dmemory = dnew * f
    dtanh_mt = dnew * i
    # tanh_mt = tanh(m_tilde)
    dm_tilde = layers.tanh_backward(dtanh_mt, tanh_mt)
    return dm_tilde, dmemory, di, df


def memory_update_forward(m_tilde, memory, xp, params, input_bias=0.0, forget_bias=1.0):
    """The whole gated update: M = i * tanh(m_tilde) + f * memory, with the gates of xp and
    memory.  Returns the new memory (B, N, d) and the cache."""
    (i, f), gates_cache = gates_forward(xp, memory, params, input_bias, forget_bias)
    new_memory, update_cache = gated_update_forward(m_tilde, memory, i, f)
    return new_memory, (gates_cache, update_cache)


def memory_update_backward(dnew, cache):
    """dnew (B, N, d) -> dm_tilde (B, N, d), dmemory (B, N, d), dxp (B, d), grads."""
    gates_cache, update_cache = cache
    # new_memory = i * tanh(m_tilde) + f * memory
    dm_tilde, dmemory, di, df = gated_update_backward(dnew, update_cache)
    # (i, f) = gates(xp, memory): the memory's second path
    dxp, dmemory_gates, grads = gates_backward(di, df, gates_cache)
    dmemory += dmemory_gates
    return dm_tilde, dmemory, dxp, grads
