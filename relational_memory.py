"""The Relational Memory Core (RMC) of Santoro et al. (2018), as DeepMind Sonnet defines it.

One step, input x (B, I), previous memory M_prev (B, N, d) with d = H * head_size:

    x~   = x W_in + b_in                                     (B, d)
    L    = [M_prev ; x~]                                     (B, N+1, d)  input as an extra row
    repeat num_blocks times (own attention and LayerNorms per block, one shared MLP):
        L = LayerNorm_1(L + MultiHeadAttention(L))
        L = LayerNorm_2(L + MLP(L))                          MLP: Linear(d) -> ReLU -> Linear(d)
    M~   = L[:, :N]                                          drop the input row
    g    = x~ W_gx + tanh(M_prev) W_gm + b_g                  (B, N, 2G)
    i    = sigmoid(g[..., :G] + input_bias)
    f    = sigmoid(g[..., G:] + forget_bias)
    M    = i * tanh(M~) + f * M_prev                         gate_style 'unit' (G = d) or
                                                             'memory' (G = 1); None: M = M~

Classes: :class:`RelationalMemory` (the core: one step, and an unrolled sequence with backprop
through time) and :class:`RMCClassifier` (the model of the paper's N-th Farthest experiment:
core unrolled over the sequence, read-out MLP and logits on the last step).
"""
from __future__ import annotations

import numpy as np

import layers
from attention import MultiHeadAttention

GATE_STYLES = ("unit", "memory", None)


class RelationalMemory(layers.Module):
    """Relational memory core.

    Args:
        input_size: width I of each input vector.
        mem_slots: N, number of memory rows.
        head_size: value width per head; the memory row width is ``d = num_heads * head_size``.
        num_heads: H.
        num_blocks: attention blocks per step (each with its own attention and LayerNorms).
        key_size: query/key width per head (defaults to head_size).
        attention_mlp_layers: Linear layers of the row-wise MLP shared by all blocks.
        gate_style: 'unit' (a gate per memory unit), 'memory' (a gate per slot) or None.
        forget_bias, input_bias: constants added inside the gate sigmoids (Sonnet: 1 and 0);
            +inf/-inf are allowed and give a memory that never changes.

    Children: ``input_proj`` (Linear I -> d), ``attn{b}``, ``norm_attn{b}``, ``norm_mlp{b}`` per
    block, ``mlp``; gate params ``W_gx`` (d, 2G), ``W_gm`` (d, 2G), ``b_g`` (2G,).
    """

    def __init__(self, input_size: int, mem_slots: int, head_size: int, num_heads: int, *,
                 num_blocks: int = 1, key_size: int | None = None,
                 attention_mlp_layers: int = 2, gate_style: str | None = "unit",
                 forget_bias: float = 1.0, input_bias: float = 0.0,
                 rng: np.random.Generator | None = None, dtype=np.float64):
        super().__init__(dtype)
        self.input_size = layers.check_positive_int("input_size", input_size)
        self.mem_slots = layers.check_positive_int("mem_slots", mem_slots)
        self.head_size = layers.check_positive_int("head_size", head_size)
        self.num_heads = layers.check_positive_int("num_heads", num_heads)
        self.num_blocks = layers.check_positive_int("num_blocks", num_blocks)
        self.attention_mlp_layers = layers.check_positive_int("attention_mlp_layers",
                                                              attention_mlp_layers)
        if gate_style not in GATE_STYLES:
            raise ValueError(f"gate_style must be one of {GATE_STYLES}, got {gate_style!r}")
        for name, value in (("forget_bias", forget_bias), ("input_bias", input_bias)):
            if not isinstance(value, (int, float)) or np.isnan(value):
                raise ValueError(f"{name} must be a number (inf allowed), got {value!r}")
        self.gate_style = gate_style
        self.forget_bias = float(forget_bias)
        self.input_bias = float(input_bias)
        rng = np.random.default_rng() if rng is None else rng
        d = self.mem_size = self.num_heads * self.head_size
        if d < 2:
            raise ValueError("the memory row width num_heads * head_size (slot_size of a "
                             f"RelationalRNN) must be at least 2, got {d}: LayerNorm over one "
                             "feature is constant, so no gradient would pass through it")
        self.key_size = layers.check_positive_int(
            "key_size", self.head_size if key_size is None else key_size)

        self.input_proj = self.add_child("input_proj", layers.Linear(input_size, d, rng=rng,
                                                                     dtype=dtype))
        self.blocks = []
        for b in range(self.num_blocks):
            attn = self.add_child(f"attn{b}", MultiHeadAttention(
                d, self.num_heads, self.head_size, self.key_size, rng=rng, dtype=dtype))
            norm_attn = self.add_child(f"norm_attn{b}", layers.LayerNorm(d, dtype=dtype))
            norm_mlp = self.add_child(f"norm_mlp{b}", layers.LayerNorm(d, dtype=dtype))
            self.blocks.append((attn, norm_attn, norm_mlp))
        self.mlp = self.add_child("mlp", layers.MLP([d] * (self.attention_mlp_layers + 1),
                                                    rng=rng, dtype=dtype))
        if gate_style is not None:
            G = self.gate_size = d if gate_style == "unit" else 1
            self.add_param("W_gx", layers.init_fan_in(rng, d, (d, 2 * G)))
            self.add_param("W_gm", layers.init_fan_in(rng, d, (d, 2 * G)))
            self.add_param("b_g", np.zeros(2 * G))

    # ----------------------------------------------------------------------------------------
    # State and argument helpers
    # ----------------------------------------------------------------------------------------

    @property
    def config(self) -> dict:
        """Constructor keyword arguments (without rng/dtype), JSON-serialisable."""
        return dict(input_size=self.input_size, mem_slots=self.mem_slots,
                    head_size=self.head_size, num_heads=self.num_heads,
                    num_blocks=self.num_blocks, key_size=self.key_size,
                    attention_mlp_layers=self.attention_mlp_layers, gate_style=self.gate_style,
                    forget_bias=self.forget_bias, input_bias=self.input_bias)

    def initial_state(self, batch_size: int) -> np.ndarray:
        """Identity matrix of size N, zero-padded (or truncated) to d columns: (B, N, d)."""
        batch_size = layers.check_positive_int("batch_size", batch_size)
        eye = np.eye(self.mem_slots, self.mem_size, dtype=self.dtype)
        return np.broadcast_to(eye, (batch_size, self.mem_slots, self.mem_size)).copy()

    def _check_memory(self, memory, batch_size: int) -> np.ndarray:
        memory = layers.check_array("memory", memory, ndim=3, dtype=self.dtype)
        expected = (batch_size, self.mem_slots, self.mem_size)
        if memory.shape != expected:
            raise ValueError(f"memory must have shape (B, N, d) = {expected}, got {memory.shape}")
        return memory

    # ----------------------------------------------------------------------------------------
    # One step on an already projected input
    # ----------------------------------------------------------------------------------------

    def project_inputs(self, x: np.ndarray):
        """x~ = x W_in + b_in and the input's part of the gates, for any leading dims.

        x (..., I) -> (x~ (..., d), gx (..., 2G) or None, cache).  The sequence model calls this
        once for all T steps, so both projections are one GEMM each instead of T small ones.
        """
        xp, lin_cache = self.input_proj.forward(x)
        if self.gate_style is None:
            return xp, None, (lin_cache, None)
        gx, gate_cache = layers.linear_forward(xp, self.params["W_gx"], self.params["b_g"])
        return xp, gx, (lin_cache, gate_cache)

    def project_inputs_backward(self, dxp: np.ndarray, dgx: np.ndarray | None, cache,
                                need_dx: bool = True):
        """Backward of :meth:`project_inputs`: accumulates W_in, b_in, W_gx, b_g; returns dx."""
        lin_cache, gate_cache = cache
        if gate_cache is not None:
            # gx = x~ W_gx + b_g
            dxp_gate, dW, db = layers.linear_backward(dgx, gate_cache)
            self.grads["W_gx"] += dW
            self.grads["b_g"] += db
            dxp = dxp + dxp_gate
        # x~ = x W_in + b_in
        return self.input_proj.backward(dxp, lin_cache, need_dx)

    def step(self, xp: np.ndarray, gx: np.ndarray | None, memory: np.ndarray):
        """One memory update from a projected input.

        xp (B, d) projected input, gx (B, 2G) its gate contribution (None without gating),
        memory (B, N, d) -> new memory (B, N, d), cache.  ``cache["weights"]`` lists each
        block's attention weights (B, H, N+1, N+1); ``cache["gates"]`` is (i, f) or None.
        """
        B, N = memory.shape[0], self.mem_slots
        L = np.concatenate([memory, xp[:, None, :]], axis=1)       # (B, N+1, d)
        block_caches = []
        for attn, norm_attn, norm_mlp in self.blocks:
            # L = LayerNorm_1(L + Attention(L)); the sum is a temporary the norm may overwrite
            a, attn_cache = attn.forward_unchecked(L)
            a += L
            L, na_cache = norm_attn.forward(a, overwrite_x=True)
            # L = LayerNorm_2(L + MLP(L))
            m, mlp_cache = self.mlp.forward(L)
            m += L
            L, nm_cache = norm_mlp.forward(m, overwrite_x=True)
            block_caches.append((attn_cache, na_cache, mlp_cache, nm_cache))
        m_tilde = L[:, :N]
        cache = {"blocks": block_caches, "memory": memory, "gates": None,
                 "weights": [c[0]["weights"] for c in block_caches]}
        if self.gate_style is None:
            return m_tilde, cache
        G = self.gate_size
        tanh_mem = np.tanh(memory)
        # gates = tanh(memory) W_gm + gx + [input_bias | forget_bias], then one sigmoid for
        # both halves, in the gates' own buffer: [i | f] = sigmoid(gates)
        gates, gm_cache = layers.linear_forward(tanh_mem, self.params["W_gm"], None)
        gx_bias = gx + self._gate_bias                                # (B, 2G), small
        gates += gx_bias[:, None, :]                                  # (B, N, 2G)
        s = layers.sigmoid(gates, out=gates)
        i, f = s[..., :G], s[..., G:]
        tanh_mt = np.tanh(m_tilde)
        # new_memory = i * tanh(m_tilde) + f * memory
        new_memory = i * tanh_mt
        new_memory += f * memory
        cache.update(gates=(i, f), tanh_mem=tanh_mem, gm_cache=gm_cache, tanh_mt=tanh_mt,
                     sig=s)
        return new_memory, cache

    @property
    def _gate_bias(self) -> np.ndarray:
        """[input_bias] * G + [forget_bias] * G, the constants inside the gate sigmoids."""
        key = (self.gate_size, self.input_bias, self.forget_bias, self.dtype)
        cached = getattr(self, "_gate_bias_cache", None)
        if cached is None or cached[0] != key:
            G = self.gate_size
            bias = np.concatenate([np.full(G, self.input_bias, self.dtype),
                                   np.full(G, self.forget_bias, self.dtype)])
            self._gate_bias_cache = cached = (key, bias)
        return cached[1]

    def step_backward(self, dmemory: np.ndarray, cache):
        """Backward of :meth:`step`: dmemory (B, N, d) -> dxp (B, d), dgx (B, 2G) or None,
        dmemory_prev (B, N, d); accumulates attention, LayerNorm, MLP and W_gm gradients."""
        N = self.mem_slots
        memory = cache["memory"]
        B, _, d = memory.shape
        dL = np.empty((B, N + 1, d), dtype=dmemory.dtype)
        dL[:, N] = 0                                   # the input row does not reach M directly
        if self.gate_style is None:
            # new_memory = m_tilde
            dL[:, :N] = dmemory
            dmemory_prev = np.zeros_like(memory)
            dgx = None
        else:
            G = self.gate_size
            i, f = cache["gates"]
            s, tanh_mt = cache["sig"], cache["tanh_mt"]
            # new_memory = i * tanh(m_tilde) + f * memory; a 'memory' gate (G = 1) broadcasts
            # over d, so its gradient sums over d.  dgates holds [di | df] side by side.
            dgates = np.empty(s.shape, dtype=dmemory.dtype)
            if self.gate_style == "memory":
                dgates[..., 0] = np.einsum("bnd,bnd->bn", dmemory, tanh_mt)
                dgates[..., 1] = np.einsum("bnd,bnd->bn", dmemory, memory)
            else:
                np.multiply(dmemory, tanh_mt, out=dgates[..., :G])
                np.multiply(dmemory, memory, out=dgates[..., G:])
            dmemory_prev = dmemory * f
            # m_tilde part: dL[:, :N] = dmemory * i * (1 - tanh_mt^2)
            dmt = dL[:, :N]
            np.multiply(tanh_mt, tanh_mt, out=dmt)
            np.subtract(1, dmt, out=dmt)
            dmt *= i
            dmt *= dmemory
            # [i | f] = sigmoid(gates): one backward for both halves, in dgates' buffer
            sig_grad = np.subtract(1, s)
            sig_grad *= s
            dgates *= sig_grad
            # gates = tanh(memory) W_gm + gx[:, None] + bias
            dgx = np.add.reduce(dgates, axis=1)
            tanh_mem2, W_gm = cache["gm_cache"]
            tanh_mem2 = tanh_mem2.reshape(-1, d)
            dgates2 = dgates.reshape(-1, 2 * G)
            # (two GEMMs, not linear_backward: there is no bias whose gradient to sum)
            self.grads["W_gm"] += tanh_mem2.T @ dgates2
            dtanh_mem = (dgates2 @ W_gm.T).reshape(memory.shape)
            # tanh_mem = tanh(memory); dtanh_mem is ours, so the product is formed in it
            tanh_mem = cache["tanh_mem"]
            t = np.multiply(tanh_mem, tanh_mem)
            np.subtract(1, t, out=t)
            dtanh_mem *= t
            dmemory_prev += dtanh_mem
        for (attn, norm_attn, norm_mlp), (attn_cache, na_cache, mlp_cache, nm_cache) in zip(
                reversed(self.blocks), reversed(cache["blocks"])):
            # L = LayerNorm_2(L + MLP(L)); dL is a temporary of ours
            dsum = norm_mlp.backward(dL, nm_cache, overwrite_dout=True)
            dL = self.mlp.backward(dsum, mlp_cache)
            dL += dsum
            # L = LayerNorm_1(L + Attention(L))
            dsum = norm_attn.backward(dL, na_cache, overwrite_dout=True)
            dL = attn.backward(dsum, attn_cache)
            dL += dsum
        # L = [memory ; xp]
        dmemory_prev += dL[:, :N]
        return dL[:, N], dgx, dmemory_prev

    # ----------------------------------------------------------------------------------------
    # Public one-step API
    # ----------------------------------------------------------------------------------------

    def forward(self, x: np.ndarray, memory: np.ndarray | None = None):
        """One step: x (B, I), memory (B, N, d) or None (initial state) -> (B, N, d), cache."""
        x = layers.check_array("x", x, ndim=2, last_dim=self.input_size, dtype=self.dtype)
        memory = (self.initial_state(x.shape[0]) if memory is None
                  else self._check_memory(memory, x.shape[0]))
        xp, gx, proj_cache = self.project_inputs(x)
        new_memory, step_cache = self.step(xp, gx, memory)
        return new_memory, (proj_cache, step_cache)

    def backward(self, dmemory: np.ndarray, cache):
        """dmemory (B, N, d) -> dx (B, I), dmemory_prev (B, N, d); fills grads."""
        proj_cache, step_cache = cache
        dxp, dgx, dmemory_prev = self.step_backward(dmemory, step_cache)
        return self.project_inputs_backward(dxp, dgx, proj_cache), dmemory_prev

    # ----------------------------------------------------------------------------------------
    # Sequence API (backprop through time)
    # ----------------------------------------------------------------------------------------

    def forward_sequence(self, x: np.ndarray, memory0: np.ndarray | None = None):
        """Unroll over time: x (B, T, I), memory0 (B, N, d) or None ->
        memories (B, T, N, d) (the memory after each step), cache."""
        x = layers.check_array("x", x, ndim=3, last_dim=self.input_size, dtype=self.dtype)
        B, T, _ = x.shape
        memory = (self.initial_state(B) if memory0 is None
                  else self._check_memory(memory0, B))
        xp, gx, proj_cache = self.project_inputs(x)                 # all T steps at once
        memories = np.empty((B, T, self.mem_slots, self.mem_size), dtype=self.dtype)
        step_caches = []
        for t in range(T):
            memory, c = self.step(xp[:, t], None if gx is None else gx[:, t], memory)
            memories[:, t] = memory
            step_caches.append(c)
        return memories, {"proj": proj_cache, "steps": step_caches,
                          "given_memory0": memory0 is not None}

    def backward_sequence(self, dmemories: np.ndarray | None, cache, need_dx: bool = True,
                          dmemory_last: np.ndarray | None = None):
        """dmemories (B, T, N, d) (gradient on every step's memory; zeros where unused) ->
        dx (B, T, I) (None if not need_dx), dmemory0 (B, N, d); fills grads.

        ``dmemory_last`` (B, N, d), optional, is added to the gradient of the last memory;
        when only the last memory is used, pass ``dmemories=None`` and ``dmemory_last``
        (no (B, T, N, d) array of zeros is then needed).
        """
        steps = cache["steps"]
        T = len(steps)
        if dmemories is None and dmemory_last is None:
            raise ValueError("backward_sequence needs dmemories or dmemory_last, got neither")
        ref = dmemory_last if dmemories is None else dmemories[:, 0]
        B, dt = ref.shape[0], ref.dtype
        d = self.mem_size
        dxp = np.empty((B, T, d), dtype=dt)
        dgx = None if self.gate_style is None else np.empty((B, T, 2 * self.gate_size),
                                                             dtype=dt)
        dmemory = np.zeros((B, self.mem_slots, d), dtype=dt)
        for t in range(T - 1, -1, -1):
            if dmemories is not None:
                dmemory += dmemories[:, t]
            if dmemory_last is not None and t == T - 1:
                dmemory += dmemory_last
            dxp[:, t], dgx_t, dmemory = self.step_backward(dmemory, steps[t])
            if dgx is not None:
                dgx[:, t] = dgx_t
        # One GEMM per projection for all T steps (see project_inputs).
        dx = self.project_inputs_backward(dxp, dgx, cache["proj"], need_dx)
        return dx, dmemory

    @staticmethod
    def attention_weights(cache) -> np.ndarray:
        """Attention weights of a forward_sequence cache: (T, num_blocks, B, H, N+1, N+1)."""
        return np.stack([np.stack(c["weights"]) for c in cache["steps"]])

    @staticmethod
    def gate_values(cache):
        """(input gates, forget gates), each (T, B, N, G), of a forward_sequence cache
        (None without gating)."""
        if cache["steps"][0]["gates"] is None:
            return None
        return (np.stack([c["gates"][0] for c in cache["steps"]]),
                np.stack([c["gates"][1] for c in cache["steps"]]))


class RMCClassifier(layers.Module):
    """RMC over a sequence, then a read-out MLP on the flattened last memory, then logits.

    x (B, T, input_size) -> logits (B, num_classes).  The read-out is ReLU layers of sizes
    ``mlp_hidden`` followed by a Linear to the logits (the paper: 4 x 256).
    Children: ``core`` (:class:`RelationalMemory`), ``readout`` (:class:`layers.MLP`).
    """

    def __init__(self, input_size: int, num_classes: int, *, mem_slots: int = 4,
                 head_size: int = 32, num_heads: int = 2, num_blocks: int = 1,
                 key_size: int | None = None, attention_mlp_layers: int = 2,
                 gate_style: str | None = "unit", forget_bias: float = 1.0,
                 input_bias: float = 0.0, mlp_hidden=(256, 256, 256, 256),
                 rng: np.random.Generator | None = None, dtype=np.float64):
        super().__init__(dtype)
        rng = np.random.default_rng() if rng is None else rng
        self.num_classes = layers.check_positive_int("num_classes", num_classes)
        self.mlp_hidden = [layers.check_positive_int(f"mlp_hidden[{i}]", h)
                           for i, h in enumerate(mlp_hidden)]
        self.core = self.add_child("core", RelationalMemory(
            input_size, mem_slots, head_size, num_heads, num_blocks=num_blocks,
            key_size=key_size, attention_mlp_layers=attention_mlp_layers,
            gate_style=gate_style, forget_bias=forget_bias, input_bias=input_bias,
            rng=rng, dtype=dtype))
        flat = self.core.mem_slots * self.core.mem_size
        self.readout = self.add_child("readout", layers.MLP(
            [flat, *self.mlp_hidden, num_classes], activate_final=False, rng=rng, dtype=dtype))
        # MLP applies ReLU between its layers and none after the last: the hidden layers are
        # ReLU-activated and the logits are linear.

    @property
    def config(self) -> dict:
        cfg = dict(self.core.config)
        del cfg["input_size"]
        return dict(input_size=self.core.input_size, num_classes=self.num_classes, **cfg,
                    mlp_hidden=list(self.mlp_hidden))

    def forward(self, x: np.ndarray):
        """x (B, T, input_size) -> logits (B, num_classes), cache."""
        memories, core_cache = self.core.forward_sequence(x)
        last = memories[:, -1]
        logits, readout_cache = self.readout.forward(last.reshape(last.shape[0], -1))
        return logits, {"core": core_cache, "readout": readout_cache,
                        "shape": memories.shape}

    def backward(self, dlogits: np.ndarray, cache):
        """dlogits (B, num_classes) -> dx (B, T, input_size); fills grads."""
        dflat = self.readout.backward(dlogits, cache["readout"])
        # only the last memory feeds the read-out
        B, _, N, d = cache["shape"]
        dx, _ = self.core.backward_sequence(None, cache["core"],
                                            dmemory_last=dflat.reshape(B, N, d))
        return dx
