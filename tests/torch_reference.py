"""PyTorch reference implementations for parity tests and benchmarks (needs ``torch``).

Shared by every engineer of the library: add your own functions/classes below, one section
per module, without rewriting the others'.
"""
from __future__ import annotations

import numpy as np
import torch

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def torch_dtype(dtype) -> "torch.dtype":
    """The torch dtype matching a NumPy float32/float64 dtype."""
    return _TORCH_DTYPES[np.dtype(dtype)]


# --------------------------------------------------------------------------------------------
# lstm_baseline
# --------------------------------------------------------------------------------------------


def torch_lstm_from_numpy(lstm) -> "torch.nn.LSTM":
    """A ``torch.nn.LSTM`` (batch_first, one layer, same dtype) holding the weights of ``lstm``.

    ``lstm`` is an ``lstm_baseline.LSTM`` (or its ``LSTMCell``).  Both use the gate order
    [i, f, g, o]; torch stores weights as (4H, in) so ours are transposed, and torch has two
    biases whose sum acts like our single ``b``: ours goes to ``bias_ih_l0`` and ``bias_hh_l0`` is
    zero.  Gradients map back the same way: ``grad W_x = weight_ih_l0.grad.T``,
    ``grad W_h = weight_hh_l0.grad.T``, ``grad b = bias_ih_l0.grad`` (= ``bias_hh_l0.grad``).
    """
    cell = getattr(lstm, "cell", lstm)
    p = cell.params
    module = torch.nn.LSTM(cell.input_size, cell.hidden_size, num_layers=1, bias=True,
                           batch_first=True, dtype=torch_dtype(cell.dtype))
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(p["W_x"].T)))
        module.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(p["W_h"].T)))
        module.bias_ih_l0.copy_(torch.from_numpy(p["b"].copy()))
        module.bias_hh_l0.zero_()
    return module


# --------------------------------------------------------------------------------------------
# attention and relational_memory (the RMC)
# --------------------------------------------------------------------------------------------
#
# Written from the RMC equations (Santoro et al. 2018; DeepMind Sonnet's relational memory):
#
#     x~  = x W_in + b_in;  L = [M_prev ; x~]                       (B, N+1, d)
#     per block: QKV = LayerNorm(L W_qkv + b_qkv), per head [q | k | v]
#                A_h = softmax(q_h k_h^T / sqrt(key_size)) v_h;  L = LN_1(L + concat_h A_h)
#                L = LN_2(L + MLP(L))                             (MLP shared by all blocks)
#     M~ = L[:, :N];  [i | f] = x~ W_gx + tanh(M_prev) W_gm + b_g
#     M  = sigmoid(i + input_bias) * tanh(M~) + sigmoid(f + forget_bias) * M_prev
#
# Each torch module exposes ``numpy_names(prefix)``: our dotted parameter name ->
# (torch parameter, transposed?).  Our Linear weights are (in, out) and torch's are (out, in),
# hence the transpose flag.  ``copy_numpy_params`` and ``torch_grads_as_numpy`` use that map
# in both directions and raise if any name is missing on either side.


def _as_torch_dtype(dtype) -> "torch.dtype":
    return dtype if isinstance(dtype, torch.dtype) else torch_dtype(dtype)


def _linear_names(prefix: str, lin: "torch.nn.Linear", w: str = "W", b: str = "b") -> dict:
    names = {prefix + w: (lin.weight, True)}
    if lin.bias is not None:
        names[prefix + b] = (lin.bias, False)
    return names


def _layernorm_names(prefix: str, ln: "torch.nn.LayerNorm", g: str = "g", b: str = "b") -> dict:
    return {prefix + g: (ln.weight, False), prefix + b: (ln.bias, False)}


def copy_numpy_params(torch_module, numpy_module) -> None:
    """Copy every parameter of a NumPy module (by dotted name) into ``torch_module``.

    Raises ``KeyError`` if the two sides do not hold exactly the same set of names, and
    ``ValueError`` on a shape mismatch, so no parameter can be skipped silently.
    """
    names = torch_module.numpy_names()
    params = numpy_module.parameters()
    if set(names) != set(params):
        raise KeyError(f"parameter names differ: only in numpy {sorted(set(params) - set(names))},"
                       f" only in torch {sorted(set(names) - set(params))}")
    with torch.no_grad():
        for name, value in params.items():
            tparam, transposed = names[name]
            src = torch.from_numpy(np.ascontiguousarray(value.T if transposed else value))
            if tuple(src.shape) != tuple(tparam.shape):
                raise ValueError(f"{name}: numpy shape {src.shape} vs torch {tuple(tparam.shape)}")
            tparam.copy_(src)


def torch_grads_as_numpy(torch_module) -> dict:
    """Gradients of ``torch_module`` by our dotted names and in our layout (zeros if None)."""
    out = {}
    for name, (tparam, transposed) in torch_module.numpy_names().items():
        g = (torch.zeros_like(tparam) if tparam.grad is None else tparam.grad).detach().numpy()
        out[name] = np.ascontiguousarray(g.T if transposed else g)
    return out


class TorchAttention(torch.nn.Module):
    """RMC multi-head attention: x (B, R, D) -> (B, R, H*head_size), no output projection.

    ``forward(x, return_weights=True)`` also returns the attention weights (B, H, R, R) (query
    row i, key row j at ``[.., i, j]``) through an explicit softmax; without weights the heads
    go through ``torch.nn.functional.scaled_dot_product_attention``
    (the fast path a benchmark should time).
    """

    def __init__(self, input_size: int, num_heads: int, head_size: int,
                 key_size: int | None = None, *, dtype=torch.float32):
        super().__init__()
        dtype = _as_torch_dtype(dtype)
        self.num_heads, self.head_size = num_heads, head_size
        self.key_size = head_size if key_size is None else key_size
        self.per_head = 2 * self.key_size + head_size
        self.scale = self.key_size ** -0.5
        width = num_heads * self.per_head
        self.qkv = torch.nn.Linear(input_size, width, dtype=dtype)
        self.qkv_norm = torch.nn.LayerNorm(width, eps=1e-5, dtype=dtype)

    def numpy_names(self, prefix: str = "") -> dict:
        return {**_linear_names(prefix, self.qkv, "W_qkv", "b_qkv"),
                **_layernorm_names(prefix, self.qkv_norm, "ln_g", "ln_b")}

    def forward(self, x: "torch.Tensor", return_weights: bool = False):
        B, R, _ = x.shape
        H, ks = self.num_heads, self.key_size
        # LayerNorm over each row's whole qkv vector, then split: (B, H, R, 2ks + hs).
        qkv = self.qkv_norm(self.qkv(x)).view(B, R, H, self.per_head).transpose(1, 2)
        q, k, v = torch.split(qkv, [ks, ks, self.head_size], dim=-1)
        if return_weights:
            weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
            heads = torch.matmul(weights, v)
        else:
            weights = None
            heads = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, scale=self.scale)
        out = heads.transpose(1, 2).reshape(B, R, H * self.head_size)
        return (out, weights) if return_weights else out


def torch_attention_from_numpy(attn) -> TorchAttention:
    """A :class:`TorchAttention` with the sizes, dtype and weights of an
    ``attention.MultiHeadAttention``."""
    ref = TorchAttention(attn.input_size, attn.num_heads, attn.head_size, attn.key_size,
                         dtype=attn.dtype)
    copy_numpy_params(ref, attn)
    return ref


class TorchRelationalMemory(torch.nn.Module):
    """The relational memory core; memory (B, N, d) with d = num_heads * head_size.

    ``forward(x (B, I), memory (B, N, d) or None)`` -> new memory (B, N, d) (plus the list of
    each block's attention weights if ``return_weights``); ``forward_sequence(x (B, T, I),
    memory0 or None)`` -> memories after every step (B, T, N, d).  ``None`` memory means the
    identity initial state (:meth:`initial_state`).
    """

    def __init__(self, input_size: int, mem_slots: int, head_size: int, num_heads: int, *,
                 num_blocks: int = 1, key_size: int | None = None,
                 attention_mlp_layers: int = 2, gate_style: str | None = "unit",
                 forget_bias: float = 1.0, input_bias: float = 0.0, dtype=torch.float32):
        super().__init__()
        if gate_style not in ("unit", "memory", None):
            raise ValueError(f"gate_style must be 'unit', 'memory' or None, got {gate_style!r}")
        dtype = _as_torch_dtype(dtype)
        d = self.mem_size = num_heads * head_size
        self.mem_slots, self.gate_style = mem_slots, gate_style
        self.forget_bias, self.input_bias = float(forget_bias), float(input_bias)
        self.input_proj = torch.nn.Linear(input_size, d, dtype=dtype)
        self.attn = torch.nn.ModuleList(
            TorchAttention(d, num_heads, head_size, key_size, dtype=dtype)
            for _ in range(num_blocks))
        self.norm_attn = torch.nn.ModuleList(
            torch.nn.LayerNorm(d, eps=1e-5, dtype=dtype) for _ in range(num_blocks))
        self.norm_mlp = torch.nn.ModuleList(
            torch.nn.LayerNorm(d, eps=1e-5, dtype=dtype) for _ in range(num_blocks))
        self.mlp = torch.nn.ModuleList(torch.nn.Linear(d, d, dtype=dtype)
                                       for _ in range(attention_mlp_layers))
        if gate_style is not None:
            G = d if gate_style == "unit" else 1
            self.gate_x = torch.nn.Linear(d, 2 * G, dtype=dtype)              # carries b_g
            self.gate_m = torch.nn.Linear(d, 2 * G, bias=False, dtype=dtype)

    def numpy_names(self, prefix: str = "") -> dict:
        names = _linear_names(prefix + "input_proj.", self.input_proj)
        for b in range(len(self.attn)):
            names.update(self.attn[b].numpy_names(f"{prefix}attn{b}."))
            names.update(_layernorm_names(f"{prefix}norm_attn{b}.", self.norm_attn[b]))
            names.update(_layernorm_names(f"{prefix}norm_mlp{b}.", self.norm_mlp[b]))
        for i, lin in enumerate(self.mlp):
            names.update(_linear_names(f"{prefix}mlp.fc{i}.", lin))
        if self.gate_style is not None:
            names.update(_linear_names(prefix, self.gate_x, "W_gx", "b_g"))
            names.update(_linear_names(prefix, self.gate_m, "W_gm"))
        return names

    def initial_state(self, batch_size: int) -> "torch.Tensor":
        """Identity (N x N) zero-padded or truncated to d columns, for every batch element."""
        eye = torch.eye(self.mem_slots, self.mem_size, dtype=self.input_proj.weight.dtype)
        return eye.expand(batch_size, -1, -1).clone()

    def _shared_mlp(self, h):
        last = len(self.mlp) - 1
        for i, lin in enumerate(self.mlp):
            h = lin(h)
            if i < last:
                h = torch.relu(h)
        return h

    def _project(self, x):
        """x (..., I) -> x~ (..., d) and its gate term (..., 2G) (None without gates)."""
        xp = self.input_proj(x)
        return xp, (None if self.gate_style is None else self.gate_x(xp))

    def _step(self, xp, gx, memory, return_weights: bool):
        N = self.mem_slots
        L = torch.cat([memory, xp.unsqueeze(1)], dim=1)                 # (B, N+1, d)
        weights = []
        for attn, ln1, ln2 in zip(self.attn, self.norm_attn, self.norm_mlp):
            if return_weights:
                a, w = attn(L, return_weights=True)
                weights.append(w)
            else:
                a = attn(L)
            L = ln1(L + a)
            L = ln2(L + self._shared_mlp(L))
        m_tilde = L[:, :N]
        if self.gate_style is None:
            return m_tilde, weights
        gates = self.gate_m(torch.tanh(memory)) + gx.unsqueeze(1)       # (B, N, 2G)
        gi, gf = gates.chunk(2, dim=-1)
        i = torch.sigmoid(gi + self.input_bias)
        f = torch.sigmoid(gf + self.forget_bias)
        return i * torch.tanh(m_tilde) + f * memory, weights

    def forward(self, x, memory=None, return_weights: bool = False):
        if memory is None:
            memory = self.initial_state(x.shape[0])
        xp, gx = self._project(x)
        new_memory, weights = self._step(xp, gx, memory, return_weights)
        return (new_memory, weights) if return_weights else new_memory

    def forward_sequence(self, x, memory0=None):
        memory = self.initial_state(x.shape[0]) if memory0 is None else memory0
        xp, gx = self._project(x)                                       # all T steps at once
        memories = []
        for t in range(x.shape[1]):
            memory, _ = self._step(xp[:, t], None if gx is None else gx[:, t], memory, False)
            memories.append(memory)
        return torch.stack(memories, dim=1)                             # (B, T, N, d)


def torch_rmc_from_numpy(core) -> TorchRelationalMemory:
    """A :class:`TorchRelationalMemory` with the configuration, dtype and weights of a
    ``relational_memory.RelationalMemory``."""
    ref = TorchRelationalMemory(
        core.input_size, core.mem_slots, core.head_size, core.num_heads,
        num_blocks=core.num_blocks, key_size=core.key_size,
        attention_mlp_layers=core.attention_mlp_layers, gate_style=core.gate_style,
        forget_bias=core.forget_bias, input_bias=core.input_bias, dtype=core.dtype)
    copy_numpy_params(ref, core)
    return ref


class TorchRMCClassifier(torch.nn.Module):
    """x (B, T, I) -> logits (B, C): the core unrolled from its initial state, the last memory
    flattened to (B, N*d), ReLU hidden layers ``mlp_hidden``, then a linear layer to logits."""

    def __init__(self, input_size: int, num_classes: int, *, mem_slots: int = 4,
                 head_size: int = 32, num_heads: int = 2, num_blocks: int = 1,
                 key_size: int | None = None, attention_mlp_layers: int = 2,
                 gate_style: str | None = "unit", forget_bias: float = 1.0,
                 input_bias: float = 0.0, mlp_hidden=(256, 256, 256, 256), dtype=torch.float32):
        super().__init__()
        dtype = _as_torch_dtype(dtype)
        self.core = TorchRelationalMemory(
            input_size, mem_slots, head_size, num_heads, num_blocks=num_blocks,
            key_size=key_size, attention_mlp_layers=attention_mlp_layers,
            gate_style=gate_style, forget_bias=forget_bias, input_bias=input_bias, dtype=dtype)
        sizes = [mem_slots * num_heads * head_size, *mlp_hidden, num_classes]
        self.readout = torch.nn.ModuleList(torch.nn.Linear(a, b, dtype=dtype)
                                           for a, b in zip(sizes[:-1], sizes[1:]))

    def numpy_names(self, prefix: str = "") -> dict:
        names = self.core.numpy_names(prefix + "core.")
        for i, lin in enumerate(self.readout):
            names.update(_linear_names(f"{prefix}readout.fc{i}.", lin))
        return names

    def forward(self, x):
        h = self.core.forward_sequence(x)[:, -1].flatten(1)
        last = len(self.readout) - 1
        for i, lin in enumerate(self.readout):
            h = lin(h)
            if i < last:
                h = torch.relu(h)
        return h


def torch_rmc_classifier_from_numpy(model) -> TorchRMCClassifier:
    """A :class:`TorchRMCClassifier` with the configuration, dtype and weights of a
    ``relational_memory.RMCClassifier``."""
    core = model.core
    ref = TorchRMCClassifier(
        core.input_size, model.num_classes, mem_slots=core.mem_slots, head_size=core.head_size,
        num_heads=core.num_heads, num_blocks=core.num_blocks, key_size=core.key_size,
        attention_mlp_layers=core.attention_mlp_layers, gate_style=core.gate_style,
        forget_bias=core.forget_bias, input_bias=core.input_bias,
        mlp_hidden=tuple(model.mlp_hidden), dtype=model.dtype)
    copy_numpy_params(ref, model)
    return ref


# --------------------------------------------------------------------------------------------
# Classifiers of the benchmark (benchmarks/bench_step.py): the LSTM baseline and the
# RelationalRNN, in the same ``numpy_names`` convention as the RMC section above
# --------------------------------------------------------------------------------------------


def _readout_names(prefix: str, readout) -> dict:
    names = {}
    for i, lin in enumerate(readout):
        names.update(_linear_names(f"{prefix}fc{i}.", lin))
    return names


def _run_readout(readout, h):
    """ReLU between the Linear layers of ``readout`` (a ModuleList), none after the last."""
    last = len(readout) - 1
    for i, lin in enumerate(readout):
        h = lin(h)
        if i < last:
            h = torch.relu(h)
    return h


def _torch_lstm(input_size: int, hidden_size: int, dtype) -> "torch.nn.LSTM":
    """torch.nn.LSTM with one trainable bias: ``bias_hh_l0`` stays zero and frozen, so the
    module has exactly the parameters of ``lstm_baseline.LSTMCell``."""
    lstm = torch.nn.LSTM(input_size, hidden_size, num_layers=1, batch_first=True, dtype=dtype)
    with torch.no_grad():
        lstm.bias_hh_l0.zero_()
    lstm.bias_hh_l0.requires_grad_(False)
    return lstm


def _lstm_names(prefix: str, lstm) -> dict:
    return {prefix + "W_x": (lstm.weight_ih_l0, True), prefix + "W_h": (lstm.weight_hh_l0, True),
            prefix + "b": (lstm.bias_ih_l0, False)}


class TorchLSTMClassifier(torch.nn.Module):
    """x (B, T, I) -> logits (B, C): torch.nn.LSTM from zero state, its last hidden state,
    ReLU hidden layers ``mlp_hidden``, then a linear layer (``lstm_baseline.LSTMClassifier``)."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, *,
                 mlp_hidden=(256, 256, 256, 256), dtype=torch.float32):
        super().__init__()
        dtype = _as_torch_dtype(dtype)
        self.lstm = _torch_lstm(input_size, hidden_size, dtype)
        sizes = [hidden_size, *mlp_hidden, num_classes]
        self.readout = torch.nn.ModuleList(torch.nn.Linear(a, b, dtype=dtype)
                                           for a, b in zip(sizes[:-1], sizes[1:]))

    def numpy_names(self, prefix: str = "") -> dict:
        return {**_lstm_names(prefix + "lstm.cell.", self.lstm),
                **_readout_names(prefix + "readout.", self.readout)}

    def forward(self, x):
        _, (h_T, _) = self.lstm(x)
        return _run_readout(self.readout, h_T[0])


def torch_lstm_classifier_from_numpy(model) -> TorchLSTMClassifier:
    """A :class:`TorchLSTMClassifier` with the sizes, dtype and weights of an
    ``lstm_baseline.LSTMClassifier``."""
    ref = TorchLSTMClassifier(model.input_size, model.hidden_size, model.num_classes,
                              mlp_hidden=tuple(model.mlp_hidden), dtype=model.dtype)
    copy_numpy_params(ref, model)
    return ref


class TorchRelationalRNNClassifier(torch.nn.Module):
    """``relational_rnn_cell.RelationalRNNClassifier`` in PyTorch: x (B, T, I) -> logits (B, C).

    h_t = LSTM(x_t) (torch.nn.LSTM, zero initial state); M_t = RelationalMemory(h_t, M_{t-1})
    from the identity initial memory; at the last step r = mean_N(M_T) W_r + b_r,
    out = tanh([h_T ; r] W_c + b_c), y = out W_o + b_o; then the read-out MLP to logits.
    Options: memory_input "input_and_hidden" feeds [x_t ; h_t] to the memory; memory_readout
    "slots" reads M_T's N slots side by side (N*d -> H).
    """

    def __init__(self, input_size: int, num_classes: int, *, hidden_size: int = 64,
                 num_slots: int = 4, slot_size: int = 64, num_heads: int = 2,
                 num_blocks: int = 1, key_size: int | None = None,
                 attention_mlp_layers: int = 2, gate_style: str | None = "unit",
                 forget_bias: float = 1.0, input_bias: float = 0.0,
                 memory_input: str = "hidden", memory_readout: str = "mean",
                 mlp_hidden=(256, 256, 256, 256), dtype=torch.float32):
        super().__init__()
        dtype = _as_torch_dtype(dtype)
        H = hidden_size
        self.reads_input = memory_input == "input_and_hidden"
        self.reads_slots = memory_readout == "slots"
        self.lstm = _torch_lstm(input_size, H, dtype)
        self.memory = TorchRelationalMemory(
            H + (input_size if self.reads_input else 0), num_slots, slot_size // num_heads, num_heads, num_blocks=num_blocks,
            key_size=key_size, attention_mlp_layers=attention_mlp_layers,
            gate_style=gate_style, forget_bias=forget_bias, input_bias=input_bias, dtype=dtype)
        self.mem_readout = torch.nn.Linear(slot_size * (num_slots if self.reads_slots else 1), H,
                                           dtype=dtype)
        self.combine = torch.nn.Linear(2 * H, H, dtype=dtype)
        self.output = torch.nn.Linear(H, H, dtype=dtype)
        sizes = [H, *mlp_hidden, num_classes]
        self.readout = torch.nn.ModuleList(torch.nn.Linear(a, b, dtype=dtype)
                                           for a, b in zip(sizes[:-1], sizes[1:]))

    def numpy_names(self, prefix: str = "") -> dict:
        cell = prefix + "rnn.cell."
        return {**_lstm_names(cell + "lstm.", self.lstm),
                **self.memory.numpy_names(cell + "memory."),
                **_linear_names(cell + "readout.", self.mem_readout),
                **_linear_names(cell + "combine.", self.combine),
                **_linear_names(prefix + "rnn.output.", self.output),
                **_readout_names(prefix + "readout.", self.readout)}

    def forward(self, x):
        hs, _ = self.lstm(x)                                      # (B, T, H)
        mem_in = torch.cat([x, hs], dim=-1) if self.reads_input else hs
        memory_T = self.memory.forward_sequence(mem_in)[:, -1]    # (B, N, d)
        r = self.mem_readout(memory_T.flatten(1) if self.reads_slots else memory_T.mean(dim=1))
        out = torch.tanh(self.combine(torch.cat([hs[:, -1], r], dim=-1)))
        return _run_readout(self.readout, self.output(out))


def torch_relational_rnn_classifier_from_numpy(model) -> TorchRelationalRNNClassifier:
    """A :class:`TorchRelationalRNNClassifier` with the configuration, dtype and weights of a
    ``relational_rnn_cell.RelationalRNNClassifier``."""
    cfg = dict(model.config)
    ref = TorchRelationalRNNClassifier(cfg.pop("input_size"), cfg.pop("num_classes"),
                                       **{k: (tuple(v) if k == "mlp_hidden" else v)
                                          for k, v in cfg.items()}, dtype=model.dtype)
    copy_numpy_params(ref, model)
    return ref
