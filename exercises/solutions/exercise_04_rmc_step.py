"""Solution of exercise 4: one RMC step from its parts, and backprop through time.

The equations and shapes are in the exercise's docstrings (``exercises/exercise_04_rmc_step.py``).
"""
from __future__ import annotations

import numpy as np

import layers
from exercises.solutions.exercise_01_attention import (concat_rows_backward, concat_rows_forward,
                                                       multihead_attention_backward,
                                                       multihead_attention_forward)
from exercises.solutions.exercise_02_initialisation import initial_memory
from exercises.solutions.exercise_03_gates import memory_update_backward, memory_update_forward

ATTENTION_PARAMS = ("W_qkv", "b_qkv", "ln_g", "ln_b")
GATE_PARAMS = ("W_gx", "W_gm", "b_g")


def rmc_block_forward(L, params, block, config):
    """L (B, R, d) -> L (B, R, d): LayerNorm_1(L + attention(L)), then LayerNorm_2(L + MLP(L))."""
    attn = {k: params[f"attn{block}.{k}"] for k in ATTENTION_PARAMS}
    a, attn_cache = multihead_attention_forward(L, attn, config["num_heads"], config["key_size"])
    L1, ln1_cache = layers.layernorm_forward(L + a, params[f"norm_attn{block}.g"],
                                             params[f"norm_attn{block}.b"])
    h, mlp_caches = L1, []
    last = config["attention_mlp_layers"] - 1
    for j in range(last + 1):
        h, lin_cache = layers.linear_forward(h, params[f"mlp.fc{j}.W"], params[f"mlp.fc{j}.b"])
        relu_out = layers.relu_forward(h) if j < last else None
        h = h if relu_out is None else relu_out
        mlp_caches.append((lin_cache, relu_out))
    L2, ln2_cache = layers.layernorm_forward(L1 + h, params[f"norm_mlp{block}.g"],
                                             params[f"norm_mlp{block}.b"])
    return L2, (block, attn_cache, ln1_cache, mlp_caches, ln2_cache)


def rmc_block_backward(dL2, cache, grads):
    """dL2 (B, R, d) -> dL (B, R, d); adds the block's parameter gradients into ``grads``."""
    block, attn_cache, ln1_cache, mlp_caches, ln2_cache = cache
    # L2 = LayerNorm_2(L1 + h)
    dsum2, dg, db = layers.layernorm_backward(dL2, ln2_cache)
    grads[f"norm_mlp{block}.g"] += dg
    grads[f"norm_mlp{block}.b"] += db
    dh = dsum2
    for j in range(len(mlp_caches) - 1, -1, -1):
        lin_cache, relu_out = mlp_caches[j]
        if relu_out is not None:
            # h = relu(h)
            dh = layers.relu_backward(dh, relu_out)
        # h = h @ W_j + b_j   (the MLP is shared by every block: its gradients add up)
        dh, dW, db = layers.linear_backward(dh, lin_cache)
        grads[f"mlp.fc{j}.W"] += dW
        grads[f"mlp.fc{j}.b"] += db
    dL1 = dsum2 + dh
    # L1 = LayerNorm_1(L + a)
    dsum1, dg, db = layers.layernorm_backward(dL1, ln1_cache)
    grads[f"norm_attn{block}.g"] += dg
    grads[f"norm_attn{block}.b"] += db
    # a = attention(L)
    dL_attn, attn_grads = multihead_attention_backward(dsum1, attn_cache)
    for k in ATTENTION_PARAMS:
        grads[f"attn{block}.{k}"] += attn_grads[k]
    return dsum1 + dL_attn


def rmc_step_forward(x, memory, params, config):
    """x (B, I), memory (B, N, d) -> the new memory (B, N, d), cache."""
    N = config["mem_slots"]
    xp, in_cache = layers.linear_forward(x, params["input_proj.W"], params["input_proj.b"])
    L, concat_cache = concat_rows_forward(memory, xp)
    block_caches = []
    for b in range(config["num_blocks"]):
        L, block_cache = rmc_block_forward(L, params, b, config)
        block_caches.append(block_cache)
    m_tilde = L[:, :N]
    update_cache = None
    if config["gate_style"] is None:
        new_memory = m_tilde.copy()
    else:
        gates = {k: params[k] for k in GATE_PARAMS}
        new_memory, update_cache = memory_update_forward(
            m_tilde, memory, xp, gates, config["input_bias"], config["forget_bias"])
    cache = {"in": in_cache, "concat": concat_cache, "blocks": block_caches,
             "update": update_cache, "shape": L.shape}
    return new_memory, cache


def rmc_step_backward(dnew, cache, grads):
    """dnew (B, N, d) -> dx (B, I), dmemory (B, N, d); adds every gradient into ``grads``."""
    B, R, d = cache["shape"]
    N = R - 1
    if cache["update"] is None:
        # new_memory = m_tilde
        dm_tilde, dmemory, dxp = dnew, np.zeros((B, N, d)), np.zeros((B, d))
    else:
        # new_memory = i * tanh(m_tilde) + f * memory, the gates of (xp, memory)
        dm_tilde, dmemory, dxp, gate_grads = memory_update_backward(dnew, cache["update"])
        for k in GATE_PARAMS:
            grads[k] += gate_grads[k]
    # m_tilde = L[:, :N]   (the input row gets no gradient from here)
    dL = np.zeros((B, R, d))
    dL[:, :N] = dm_tilde
    for block_cache in reversed(cache["blocks"]):
        # L = block(L)
        dL = rmc_block_backward(dL, block_cache, grads)
    # L = [memory ; xp]
    dmemory_rows, dxp_row = concat_rows_backward(dL, cache["concat"])
    dmemory += dmemory_rows
    dxp += dxp_row
    # xp = x @ W_in + b_in
    dx, dW, db = layers.linear_backward(dxp, cache["in"])
    grads["input_proj.W"] += dW
    grads["input_proj.b"] += db
    return dx, dmemory


def rmc_sequence_forward(x, memory0, params, config):
    """x (B, T, I), memory0 (B, N, d) or None -> memories (B, T, N, d), cache."""
    B, T, _ = x.shape
    N, d = config["mem_slots"], config["num_heads"] * config["head_size"]
    memory = initial_memory(B, N, d) if memory0 is None else memory0
    memories = np.empty((B, T, N, d))
    step_caches = []
    for t in range(T):
        memory, step_cache = rmc_step_forward(x[:, t], memory, params, config)
        memories[:, t] = memory
        step_caches.append(step_cache)
    return memories, {"steps": step_caches, "params": params}


def rmc_sequence_backward(dmemories, cache):
    """dmemories (B, T, N, d) -> dx (B, T, I), dmemory0 (B, N, d), grads (all parameters)."""
    grads = {k: np.zeros_like(p) for k, p in cache["params"].items()}
    T = len(cache["steps"])
    dmemory = np.zeros_like(dmemories[:, 0])
    dxs = [None] * T
    for t in range(T - 1, -1, -1):
        # memories[:, t] = memory_t: its own gradient plus the one from step t + 1
        dmemory = dmemory + dmemories[:, t]
        # memory_t = step(x[:, t], memory_{t-1})
        dxs[t], dmemory = rmc_step_backward(dmemory, cache["steps"][t], grads)
    return np.stack(dxs, axis=1), dmemory, grads
