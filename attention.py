"""Multi-head dot-product attention over a set of rows, in the form the RMC uses.

Following DeepMind Sonnet's relational memory (see IMPLEMENTATION_SUMMARY.md for the equations):

    QKV = LayerNorm(X W_qkv + b_qkv)            (B, R, H * (2 * key_size + head_size))
    per head h, the chunk of QKV is [q_h | k_h | v_h]
    A_h = softmax(q_h k_h^T * key_size**-0.5) v_h      softmax over the R rows
    out = concat_h A_h                          (B, R, H * head_size); no output projection

The LayerNorm normalises the whole qkv vector of each row, before it is split into heads.
All B and all H are handled by batched matrix products: there is no Python loop over either.
"""
from __future__ import annotations

import numpy as np

import layers


class MultiHeadAttention(layers.Module):
    """Attention of every row of a set over all rows of the same set.

    Args:
        input_size: width D of each input row.
        num_heads: H.
        head_size: width of each head's value (and of its output chunk).
        key_size: width of each head's query and key; defaults to ``head_size``.

    Params: ``W_qkv`` (D, H*(2*key_size+head_size)), ``b_qkv``, and the qkv LayerNorm's gain
    ``ln_g`` and bias ``ln_b``.
    Forward: x (B, R, D) -> out (B, R, H*head_size); ``cache["weights"]`` holds the attention
    weights (B, H, R, R), rows summing to 1 (query row i attends to key row j at ``[.., i, j]``).
    """

    def __init__(self, input_size: int, num_heads: int, head_size: int,
                 key_size: int | None = None, *, rng: np.random.Generator | None = None,
                 dtype=np.float64):
        super().__init__(dtype)
        self.input_size = layers.check_positive_int("input_size", input_size)
        self.num_heads = layers.check_positive_int("num_heads", num_heads)
        self.head_size = layers.check_positive_int("head_size", head_size)
        self.key_size = layers.check_positive_int(
            "key_size", head_size if key_size is None else key_size)
        rng = np.random.default_rng() if rng is None else rng
        self.qkv_size = 2 * self.key_size + self.head_size   # per head
        total = self.num_heads * self.qkv_size
        self.output_size = self.num_heads * self.head_size
        self.scale = self.key_size ** -0.5
        self.add_param("W_qkv", layers.init_fan_in(rng, input_size, (input_size, total)))
        self.add_param("b_qkv", np.zeros(total))
        self.add_param("ln_g", np.ones(total))
        self.add_param("ln_b", np.zeros(total))

    def forward(self, x: np.ndarray):
        """x (B, R, D) -> out (B, R, H*head_size), cache (a dict; ``cache["weights"]``).

        Validates ``x`` (rank, width, finiteness) and casts it to the module dtype; composite
        modules that already validated their input call :meth:`forward_unchecked`.
        """
        x = layers.check_array("x", x, ndim=3, last_dim=self.input_size, dtype=self.dtype)
        return self.forward_unchecked(x)

    def forward_unchecked(self, x: np.ndarray):
        """:meth:`forward` without argument checks (for callers that checked already)."""
        B, R, _ = x.shape
        H, ks, hs = self.num_heads, self.key_size, self.head_size
        p = self.params
        qkv_lin, lin_cache = layers.linear_forward(x, p["W_qkv"], p["b_qkv"])
        # qkv_lin is our temporary: the LayerNorm forms xhat in its buffer.
        qkv, ln_cache = layers.layernorm_forward(qkv_lin, p["ln_g"], p["ln_b"], overwrite_x=True)
        # (B, R, H, qkv_size) -> (B, H, R, qkv_size): one batched product serves every head.
        qkv = qkv.reshape(B, R, H, self.qkv_size).transpose(0, 2, 1, 3)
        q = qkv[..., :ks]
        k = qkv[..., ks:2 * ks]
        v = qkv[..., 2 * ks:]
        # weights = softmax(q k^T * key_size**-0.5), the scale on the (R, R) logits (smaller
        # than q).  The logits are stored key-major, (R_key, B, H, R_query): the softmax over
        # the keys is then a reduction over the outer axis of an (R, B*H*R) array, several
        # times faster than over rows of R elements; ``weights`` is a (B, H, R, R) view.
        logits_t = np.empty((R, B, H, R), dtype=qkv.dtype)
        np.matmul(q, k.swapaxes(-1, -2), out=logits_t.transpose(1, 2, 3, 0))
        flat = logits_t.reshape(R, -1)
        flat *= self.scale
        layers.softmax(flat, axis=0, out=flat)
        weights = logits_t.transpose(1, 2, 3, 0)
        # heads = weights @ v, written straight into the (B, R, H, head_size) layout of out
        out = np.empty((B, R, H, hs), dtype=weights.dtype)
        np.matmul(weights, v, out=out.transpose(0, 2, 1, 3))
        out = out.reshape(B, R, self.output_size)
        cache = {"lin": lin_cache, "ln": ln_cache, "q": q, "k": k, "v": v, "weights": weights}
        return out, cache

    def _scratch(self, shape: tuple, dtype) -> np.ndarray:
        """A work buffer kept between backward calls (reallocated when the shape changes)."""
        buf = getattr(self, "_dqkv_buffer", None)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._dqkv_buffer = np.empty(shape, dtype)
        return buf

    def backward(self, dout: np.ndarray, cache, need_dx: bool = True):
        """dout (B, R, H*head_size) -> dx (B, R, D); accumulates every parameter gradient."""
        B, R, _ = dout.shape
        H, ks = self.num_heads, self.key_size
        q, k, v, weights = cache["q"], cache["k"], cache["v"], cache["weights"]
        # out = heads.transpose(0, 2, 1, 3).reshape(B, R, H*head_size)
        dheads = dout.reshape(B, R, H, self.head_size).transpose(0, 2, 1, 3)
        # dqkv in the (B, R, H, qkv_size) layout of qkv, filled through its (B, H, R, .) view.
        # It never leaves this method (the LayerNorm and Linear backward return fresh arrays),
        # so one scratch buffer serves every call: no fresh (B, R, H*qkv_size) array per step.
        dqkv = self._scratch((B, R, H, self.qkv_size), dout.dtype)
        dqkv_t = dqkv.transpose(0, 2, 1, 3)
        # heads = weights @ v; dweights key-major like the forward's logits (see forward)
        dweights_t = np.empty((R, B, H, R), dtype=dout.dtype)
        np.matmul(dheads, v.swapaxes(-1, -2), out=dweights_t.transpose(1, 2, 3, 0))
        np.matmul(weights.swapaxes(-1, -2), dheads, out=dqkv_t[..., 2 * ks:])        # dv
        # weights = softmax(logits) over the keys (axis 0 of the key-major arrays), in place
        flat = dweights_t.reshape(R, -1)
        layers.softmax_backward(flat, weights.transpose(3, 0, 1, 2).reshape(R, -1), axis=0,
                                overwrite_dy=True)
        # logits = q @ k^T * scale
        flat *= self.scale
        dlogits = dweights_t.transpose(1, 2, 3, 0)                                   # (B, H, R, R)
        np.matmul(dlogits, k, out=dqkv_t[..., :ks])                                  # dq
        np.matmul(dlogits.swapaxes(-1, -2), q, out=dqkv_t[..., ks:2 * ks])           # dk
        dqkv = dqkv.reshape(B, R, H * self.qkv_size)
        # qkv = LayerNorm(qkv_lin); dqkv is ours to overwrite
        dqkv_lin, dg, db = layers.layernorm_backward(dqkv, cache["ln"], overwrite_dout=True)
        self.grads["ln_g"] += dg
        self.grads["ln_b"] += db
        # qkv_lin = x @ W_qkv + b_qkv
        dx, dW, db_qkv = layers.linear_backward(dqkv_lin, cache["lin"], need_dx)
        self.grads["W_qkv"] += dW
        self.grads["b_qkv"] += db_qkv
        return dx
