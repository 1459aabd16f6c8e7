"""LSTM plus relational memory: the RelationalRNN cell, its sequence model and classifier.

Data flow of one step, input x_t (B, I), state (h_{t-1}, c_{t-1}, M_{t-1}):

    h_t, c_t = LSTMCell(x_t, h_{t-1}, c_{t-1})                         (B, H) each
    M_t      = RelationalMemory(h_t, M_{t-1})                           (B, N, d)
               (the memory's own input projection maps h_t to its row width d)
    r_t      = mean over the N slots of M_t, then Linear(d -> H)        (B, H)
    out_t    = tanh([h_t ; r_t] W_combine + b_combine)                  (B, H)

Two options change what the memory sees and how it is read, both off by default (the data flow
above, the one of REFERENCE.md):

    memory_input="input_and_hidden":  M_t = RelationalMemory([x_t ; h_t], M_{t-1})  (I+H wide)
    memory_readout="slots":           r_t = [M_t[0] ; ... ; M_t[N-1]] Linear(N*d -> H)

Why: the LSTM squeezes each object into h_t before the memory sees it, and the mean over slots
forgets which slot holds what; the RMC alone reads its input directly and all its slots.

:class:`RelationalRNN` adds an output projection ``y_t = out_t W_out + b_out`` (B, output_size).

Speed: the LSTM never reads the memory, so the sequence model runs the whole LSTM recurrence
first, then the whole memory recurrence, and treats every other operation as one GEMM over all
B*T rows: the LSTM input projection, the memory input and gate projections of all h_t, the
read-out, the combination and the output projection (and, in backward, each of their weight
gradients, plus the LSTM's dW_h).  Only ``h_{t-1} W_h`` and the memory's attention step remain
inside time loops.

Classes: :class:`RelationalRNNCell` (one step), :class:`RelationalRNN` (batch-first sequence
with backprop through time) and :class:`RelationalRNNClassifier` (the N-th Farthest model).
:class:`RelationalMemory` and :class:`RMCClassifier` are re-exported so that everything can be
imported from this module.

Shape letters: B batch, T time, I input features, H hidden units, N memory slots, d slot size.
"""
from __future__ import annotations

import numpy as np

import layers
from lstm_baseline import LSTMCell
from relational_memory import RelationalMemory, RMCClassifier

__all__ = ["RelationalRNNCell", "RelationalRNN", "RelationalRNNClassifier",
           "RelationalMemory", "RMCClassifier", "MEMORY_INPUTS", "MEMORY_READOUTS"]

# What the memory reads each step: the LSTM's h_t (the default), or the step's input beside it.
MEMORY_INPUTS = ("hidden", "input_and_hidden")
# How the memory is read: the mean of its N slots (the default), or all N slots side by side.
MEMORY_READOUTS = ("mean", "slots")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _memory_kwargs(num_slots, slot_size, num_heads, num_blocks, key_size,
                   attention_mlp_layers, gate_style, forget_bias, input_bias) -> dict:
    """Validate the memory arguments under this module's names; return RelationalMemory kwargs.

    ``slot_size`` is the memory row width d and must be a multiple of ``num_heads``.
    """
    num_slots = layers.check_positive_int("num_slots", num_slots)
    slot_size = layers.check_positive_int("slot_size", slot_size)
    num_heads = layers.check_positive_int("num_heads", num_heads)
    if slot_size % num_heads:
        raise ValueError(f"slot_size must be divisible by num_heads (slot_size = num_heads * "
                         f"head_size), got slot_size={slot_size}, num_heads={num_heads}")
    return dict(mem_slots=num_slots, head_size=slot_size // num_heads, num_heads=num_heads,
                num_blocks=num_blocks, key_size=key_size,
                attention_mlp_layers=attention_mlp_layers, gate_style=gate_style,
                forget_bias=forget_bias, input_bias=input_bias)


def _check_choice(name: str, value, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------


class RelationalRNNCell(layers.Module):
    """One step of the LSTM-plus-relational-memory recurrence.

    Args:
        input_size: I.  hidden_size: H (LSTM width and output width).
        num_slots: N memory rows.  slot_size: d, the width of a memory row; must equal
            ``num_heads * head_size``, so it must be divisible by ``num_heads``.
        num_heads, num_blocks, key_size, attention_mlp_layers, gate_style, forget_bias,
            input_bias: passed to :class:`RelationalMemory` (forget_bias/input_bias are the
            memory gates' constants; the LSTM's forget-gate bias starts at 1 on its own).
        memory_input: ``"hidden"`` (default): the memory reads h_t; ``"input_and_hidden"``: it
            reads [x_t ; h_t].
        memory_readout: ``"mean"`` (default): r_t reads the mean of the N slots; ``"slots"``:
            it reads all N slots side by side (N*d wide).

    Children: ``lstm`` (:class:`LSTMCell` I -> H), ``memory`` (:class:`RelationalMemory` with
    input_size H, or I+H), ``readout`` (Linear d -> H, or N*d -> H), ``combine`` (Linear 2H ->
    H).

    ``forward(x, state) -> out, new_state, cache`` and
    ``backward(dout, dstate, cache) -> dx, dstate_prev`` with state ``(h, c, memory)``.
    """

    def __init__(self, input_size: int, hidden_size: int, *, num_slots: int = 4,
                 slot_size: int = 64, num_heads: int = 2, num_blocks: int = 1,
                 key_size: int | None = None, attention_mlp_layers: int = 2,
                 gate_style: str | None = "unit", forget_bias: float = 1.0,
                 input_bias: float = 0.0, memory_input: str = "hidden",
                 memory_readout: str = "mean", rng: np.random.Generator | None = None,
                 dtype=np.float64):
        super().__init__(dtype)
        self.input_size = I = layers.check_positive_int("input_size", input_size)
        self.hidden_size = H = layers.check_positive_int("hidden_size", hidden_size)
        mem_kwargs = _memory_kwargs(num_slots, slot_size, num_heads, num_blocks, key_size,
                                    attention_mlp_layers, gate_style, forget_bias, input_bias)
        self.memory_input = _check_choice("memory_input", memory_input, MEMORY_INPUTS)
        self.memory_readout = _check_choice("memory_readout", memory_readout, MEMORY_READOUTS)
        rng = np.random.default_rng() if rng is None else rng
        self.lstm = self.add_child("lstm", LSTMCell(I, H, rng=rng, dtype=dtype))
        memory_width = H if memory_input == "hidden" else I + H
        self.memory = self.add_child("memory", RelationalMemory(memory_width, **mem_kwargs,
                                                                rng=rng, dtype=dtype))
        self.num_slots = N = self.memory.mem_slots
        self.slot_size = d = self.memory.mem_size
        self.num_heads = self.memory.num_heads
        read_width = d if memory_readout == "mean" else N * d
        self.readout = self.add_child("readout", layers.Linear(read_width, H, rng=rng,
                                                               dtype=dtype))
        self.combine = self.add_child("combine", layers.Linear(2 * H, H, rng=rng, dtype=dtype))

    @property
    def config(self) -> dict:
        """Constructor keyword arguments (without rng/dtype), JSON-serialisable."""
        mem = self.memory.config
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_slots=self.num_slots, slot_size=self.slot_size,
                    num_heads=self.num_heads, num_blocks=mem["num_blocks"],
                    key_size=mem["key_size"], attention_mlp_layers=mem["attention_mlp_layers"],
                    gate_style=mem["gate_style"], forget_bias=mem["forget_bias"],
                    input_bias=mem["input_bias"], memory_input=self.memory_input,
                    memory_readout=self.memory_readout)

    # The two optional paths, for any leading dims: one step (B, ...) or a sequence (B, T, ...).

    def memory_inputs(self, x: np.ndarray, h: np.ndarray) -> np.ndarray:
        """What the memory reads: h (..., H), or [x ; h] (..., I+H)."""
        return h if self.memory_input == "hidden" else np.concatenate([x, h], axis=-1)

    def memory_inputs_backward(self, dmem_in: np.ndarray):
        """Backward of :meth:`memory_inputs`: dmem_in -> (dx or None, dh)."""
        if self.memory_input == "hidden":
            return None, dmem_in
        # mem_in = [x ; h]
        return dmem_in[..., :self.input_size], dmem_in[..., self.input_size:]

    def read_memory(self, memory: np.ndarray) -> np.ndarray:
        """What r reads of memory (..., N, d): its mean over slots (..., d) or its slots side by
        side (..., N*d)."""
        if self.memory_readout == "mean":
            return memory.mean(axis=-2)
        return memory.reshape(*memory.shape[:-2], self.num_slots * self.slot_size)

    def read_memory_backward(self, dread: np.ndarray) -> np.ndarray:
        """Backward of :meth:`read_memory`: dread -> dmemory (..., N, d)."""
        N, d = self.num_slots, self.slot_size
        if self.memory_readout == "mean":
            # read = mean_N(memory): every slot gets 1/N of the gradient
            return np.broadcast_to(dread[..., None, :] * (1.0 / N), (*dread.shape[:-1], N, d))
        return dread.reshape(*dread.shape[:-1], N, d)

    def initial_state(self, batch_size: int):
        """Zero h and c (B, H) and the memory's identity initial state (B, N, d)."""
        memory = self.memory.initial_state(batch_size)
        zeros = np.zeros((batch_size, self.hidden_size), self.dtype)
        return zeros, zeros.copy(), memory

    def _check_state(self, state, x: np.ndarray):
        """Validate a (h, c, memory) state against the batch of x; None gives the default."""
        if state is None:
            return self.initial_state(x.shape[0])
        if not isinstance(state, (tuple, list)) or len(state) != 3:
            got = (f"length {len(state)}" if isinstance(state, (tuple, list))
                   else type(state).__name__)
            raise ValueError(f"state must be None or a tuple (h, c, memory), got {got}")
        missing = [n for n, v in zip(("h", "c", "memory"), state) if v is None]
        if missing:
            raise ValueError(f"state must give all of h, c, memory; missing {', '.join(missing)}")
        H, dt = self.hidden_size, self.dtype
        h = layers.check_array("h", state[0], ndim=2, last_dim=H, dtype=dt)
        c = layers.check_array("c", state[1], ndim=2, last_dim=H, dtype=dt)
        layers.check_same_batch(x=x, h=h, c=c)
        return h, c, self.memory._check_memory(state[2], x.shape[0])

    def forward(self, x: np.ndarray, state=None):
        """x (B, I), state (h, c, memory) or None (zeros and the identity memory) ->
        ``out`` (B, H), ``new_state`` (h (B, H), c (B, H), memory (B, N, d)), ``cache``."""
        x = layers.check_array("x", x, ndim=2, last_dim=self.input_size, dtype=self.dtype)
        h_prev, c_prev, memory_prev = self._check_state(state, x)
        # h_t, c_t = LSTMCell(x_t, h_{t-1}, c_{t-1})
        xw, lstm_lin = self.lstm.project_input(x)
        (h, c), lstm_step = self.lstm.step(xw, h_prev, c_prev)
        # M_t = RelationalMemory(h_t or [x_t ; h_t], M_{t-1})
        xp, gx, mem_proj = self.memory.project_inputs(self.memory_inputs(x, h))
        memory, mem_step = self.memory.step(xp, gx, memory_prev)
        # r_t = read(M_t) W_r + b_r, read = mean over slots or the slots side by side
        r, read_cache = self.readout.forward(self.read_memory(memory))
        # out_t = tanh([h_t ; r_t] W_c + b_c)
        pre, comb_cache = self.combine.forward(np.concatenate([h, r], axis=-1))
        out = np.tanh(pre)
        cache = {"lstm": (lstm_lin, lstm_step), "memory": (mem_proj, mem_step),
                 "read": read_cache, "combine": comb_cache, "out": out,
                 "shape": memory.shape}
        return out, (h, c, memory), cache

    def backward(self, dout: np.ndarray | None, dstate, cache):
        """dout (B, H) or None; dstate (dh, dc, dmemory) or None, entries None meaning zero.

        Accumulates every parameter gradient; returns ``dx`` (B, I) and
        ``dstate_prev = (dh_prev (B, H), dc_prev (B, H), dmemory_prev (B, N, d))``.
        """
        B, N, d = cache["shape"]
        H, dt = self.hidden_size, self.dtype
        if dstate is None:
            dstate = (None, None, None)
        if not isinstance(dstate, (tuple, list)) or len(dstate) != 3:
            raise ValueError("dstate must be None or a tuple (dh, dc, dmemory)")
        dout = None if dout is None else layers.check_grad("dout", dout, (B, H), dt)
        dh_in, dc, dmem = (None if g is None else layers.check_grad(n, g, s, dt) for n, g, s in
                           zip(("dh", "dc", "dmemory"), dstate, ((B, H), (B, H), (B, N, d))))
        dh = np.zeros((B, H), dt) if dh_in is None else dh_in.copy()
        dmemory = np.zeros((B, N, d), dt) if dmem is None else dmem.copy()
        if dout is not None:
            # out_t = tanh([h_t ; r_t] W_c + b_c)
            dcat = self.combine.backward(layers.tanh_backward(dout, cache["out"]),
                                         cache["combine"])
            dh += dcat[:, :H]
            # r_t = read(M_t) W_r + b_r
            dmemory += self.read_memory_backward(self.readout.backward(dcat[:, H:],
                                                                       cache["read"]))
        # M_t = RelationalMemory(h_t or [x_t ; h_t], M_{t-1})
        mem_proj, mem_step = cache["memory"]
        dxp, dgx, dmemory_prev = self.memory.step_backward(dmemory, mem_step)
        dx_mem, dh_mem = self.memory_inputs_backward(
            self.memory.project_inputs_backward(dxp, dgx, mem_proj))
        dh += dh_mem
        # h_t, c_t = LSTMCell(x_t, h_{t-1}, c_{t-1})
        lstm_lin, lstm_step = cache["lstm"]
        dxw, dh_prev, dc_prev = self.lstm.step_backward(dh, dc, lstm_step)
        dx = self.lstm.project_input_backward(dxw, lstm_lin)
        if dx_mem is not None:
            dx += dx_mem
        return dx, (dh_prev, dc_prev, dmemory_prev)


# --------------------------------------------------------------------------------------------
# Sequence model
# --------------------------------------------------------------------------------------------


class RelationalRNN(layers.Module):
    """The RelationalRNN over a batch-first sequence, with an output projection.

    x (B, T, I) -> outputs (B, T, output_size) (or (B, output_size), the last step, with
    ``return_sequences=False``).  Children ``cell`` (:class:`RelationalRNNCell`) and ``output``
    (Linear H -> output_size).  Memory keyword arguments and the options ``memory_input`` and
    ``memory_readout`` as in :class:`RelationalRNNCell`.

    Usage::

        model = RelationalRNN(input_size=32, hidden_size=64, output_size=16,
                              num_slots=4, slot_size=64, num_heads=2)
        outputs = model.forward(sequence, return_sequences=True)       # (B, T, output_size)
        outputs, h, c, memory = model.forward(sequence, return_state=True)
        outputs, cache = model.forward(sequence, return_cache=True)
        dx = model.backward(doutputs, cache)
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, *,
                 num_slots: int = 4, slot_size: int = 64, num_heads: int = 2,
                 num_blocks: int = 1, key_size: int | None = None,
                 attention_mlp_layers: int = 2, gate_style: str | None = "unit",
                 forget_bias: float = 1.0, input_bias: float = 0.0,
                 memory_input: str = "hidden", memory_readout: str = "mean",
                 rng: np.random.Generator | None = None, dtype=np.float64):
        super().__init__(dtype)
        layers.check_positive_int("input_size", input_size)
        layers.check_positive_int("hidden_size", hidden_size)
        self.output_size = layers.check_positive_int("output_size", output_size)
        rng = np.random.default_rng() if rng is None else rng
        self.cell = self.add_child("cell", RelationalRNNCell(
            input_size, hidden_size, num_slots=num_slots, slot_size=slot_size,
            num_heads=num_heads, num_blocks=num_blocks, key_size=key_size,
            attention_mlp_layers=attention_mlp_layers, gate_style=gate_style,
            forget_bias=forget_bias, input_bias=input_bias, memory_input=memory_input,
            memory_readout=memory_readout, rng=rng, dtype=dtype))
        self.output = self.add_child("output", layers.Linear(hidden_size, output_size, rng=rng,
                                                             dtype=dtype))
        self.input_size = self.cell.input_size
        self.hidden_size = self.cell.hidden_size
        self.num_slots = self.cell.num_slots
        self.slot_size = self.cell.slot_size

    @property
    def config(self) -> dict:
        """Constructor keyword arguments (without rng/dtype), JSON-serialisable."""
        cfg = self.cell.config
        return dict(input_size=cfg.pop("input_size"), hidden_size=cfg.pop("hidden_size"),
                    output_size=self.output_size, **cfg)

    # ----------------------------------------------------------------------------------------

    def _check_inputs(self, x, h0, c0, memory0):
        H, dt = self.hidden_size, self.dtype
        x = layers.check_array("sequence", x, ndim=3, last_dim=self.input_size, dtype=dt,
                               allow_empty=True)
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"sequence must have shape (B, T, {self.input_size}) with B >= 1 "
                             f"and T >= 1, got shape {x.shape}")
        given = [n for n, v in (("h0", h0), ("c0", c0), ("memory0", memory0)) if v is not None]
        if 0 < len(given) < 3:
            missing = [n for n in ("h0", "c0", "memory0") if n not in given]
            raise ValueError(f"initial state must give all of h0, c0, memory0 or none; got "
                             f"{', '.join(given)} but missing {', '.join(missing)}")
        if not given:
            return x, None
        h0 = layers.check_array("h0", h0, ndim=2, last_dim=H, dtype=dt)
        c0 = layers.check_array("c0", c0, ndim=2, last_dim=H, dtype=dt)
        layers.check_same_batch(sequence=x, h0=h0, c0=c0)
        try:
            memory0 = self.cell.memory._check_memory(memory0, x.shape[0])
        except ValueError as exc:
            raise ValueError(f"memory0: {exc}") from None
        return x, (h0, c0, memory0)

    def forward(self, sequence: np.ndarray, h0: np.ndarray | None = None,
                c0: np.ndarray | None = None, memory0: np.ndarray | None = None, *,
                return_sequences: bool = True, return_state: bool = False,
                return_cache: bool = False):
        """Run the sequence.

        sequence (B, T, I); h0, c0 (B, H) and memory0 (B, N, d): all three or none (zeros and
        the memory's identity initial state).  Returns ``outputs`` alone, or the tuple
        ``outputs[, h_T, c_T, memory_T][, cache]``: outputs (B, T, output_size), or
        (B, output_size) if not return_sequences; h_T, c_T (B, H) and memory_T (B, N, d) with
        return_state; the cache for :meth:`backward` last with return_cache.
        """
        x, state0 = self._check_inputs(sequence, h0, c0, memory0)
        h, c, memory = self.cell.initial_state(x.shape[0]) if state0 is None else state0
        cache = {"h0": h, "given_state": state0 is not None,
                 "return_sequences": bool(return_sequences)}
        h, c = self._lstm_forward(x, h, c, cache)
        memory = self._memory_forward(self.cell.memory_inputs(x, cache["hs"]), memory, cache)
        outputs = self._readout_forward(cache, return_sequences)
        result = [outputs]
        if return_state:
            result += [h, c, memory]
        if return_cache:
            result.append(cache)
        return result[0] if len(result) == 1 else tuple(result)

    def _lstm_forward(self, x: np.ndarray, h: np.ndarray, c: np.ndarray, cache: dict):
        """The LSTM recurrence over x (B, T, I) from (h, c); fills ``cache``, returns h_T, c_T."""
        lstm = self.cell.lstm
        B, T, _ = x.shape
        # xw_t = x_t W_x + b for all T steps in one GEMM.
        xw, cache["lstm_lin"] = lstm.project_input(x)             # (B, T, 4H)
        hs = cache["hs"] = np.empty((B, T, self.hidden_size), self.dtype)
        steps = cache["lstm_steps"] = []
        for t in range(T):
            # h_t, c_t = LSTMCell(x_t, h_{t-1}, c_{t-1})
            (h, c), step_cache = lstm.step(xw[:, t], h, c)
            hs[:, t] = h
            steps.append(step_cache)
        return h, c

    def _memory_forward(self, mem_in: np.ndarray, memory: np.ndarray, cache: dict) -> np.ndarray:
        """The memory recurrence on what it reads, mem_in (B, T, H or I+H), from memory; fills
        ``cache``, returns M_T."""
        mem = self.cell.memory
        B, T, _ = mem_in.shape
        # x~_t = mem_in_t W_in + b_in and its gate part for all T in one GEMM.
        xp, gx, mem_proj = mem.project_inputs(mem_in)              # (B, T, d), (B, T, 2G)
        memories = cache["memories"] = np.empty((B, T, self.num_slots, self.slot_size),
                                                self.dtype)
        steps = []
        for t in range(T):
            # M_t = RelationalMemory(h_t or [x_t ; h_t], M_{t-1})
            memory, step_cache = mem.step(xp[:, t], None if gx is None else gx[:, t], memory)
            memories[:, t] = memory
            steps.append(step_cache)
        cache["memory"] = {"proj": mem_proj, "steps": steps}
        return memory

    def _readout_forward(self, cache: dict, return_sequences: bool) -> np.ndarray:
        """Read-out, combination and output projection for every needed step at once."""
        cell, hs = self.cell, cache["hs"]
        T = hs.shape[1]
        sl = slice(None) if return_sequences else slice(T - 1, T)
        # r_t = read(M_t) W_r + b_r, read = mean over slots or the slots side by side
        r, cache["read"] = cell.readout.forward(cell.read_memory(cache["memories"][:, sl]))
        # out_t = tanh([h_t ; r_t] W_c + b_c)
        pre, cache["combine"] = cell.combine.forward(np.concatenate([hs[:, sl], r], axis=-1))
        out = cache["out"] = np.tanh(pre)
        # y_t = out_t W_out + b_out
        y, cache["output"] = self.output.forward(out)
        return y if return_sequences else y[:, 0]

    def backward(self, doutputs: np.ndarray | None, cache, dh_T: np.ndarray | None = None,
                 dc_T: np.ndarray | None = None, dmemory_T: np.ndarray | None = None):
        """Backprop through time.

        doutputs matches the outputs' shape ((B, T, output_size) or (B, output_size)); None
        means zero.  dh_T, dc_T (B, H) and dmemory_T (B, N, d): optional gradients on the
        returned final state.  Accumulates every gradient; returns ``dx`` (B, T, I), or
        ``(dx, dh0, dc0, dmemory0)`` if an initial state was given to forward.
        """
        dt = self.dtype
        hs, memories = cache["hs"], cache["memories"]
        B, T, H = hs.shape
        N, d = memories.shape[2:]
        seq = cache["return_sequences"]
        O = self.output_size
        if doutputs is not None:
            doutputs = layers.check_grad("doutputs", doutputs, (B, T, O) if seq else (B, O), dt)
        dh_T = None if dh_T is None else layers.check_grad("dh_T", dh_T, (B, H), dt)
        dc_T = None if dc_T is None else layers.check_grad("dc_T", dc_T, (B, H), dt)
        dmemory_T = (None if dmemory_T is None
                     else layers.check_grad("dmemory_T", dmemory_T, (B, N, d), dt))

        dhs = np.zeros((B, T, H), dt)          # gradient reaching each h_t from above
        dmemories = np.zeros((B, T, N, d), dt)  # gradient reaching each M_t from the read-out
        if doutputs is not None:
            self._readout_backward(doutputs, cache, dhs, dmemories)
        if dmemory_T is not None:
            # memory_T = M_T
            dmemories[:, -1] += dmemory_T
        dx_mem, dmemory = self._memory_backward(dmemories, cache, dhs)
        dx, dh, dc = self._lstm_backward(dhs, cache, dh_T, dc_T)
        if dx_mem is not None:
            dx += dx_mem
        if cache["given_state"]:
            return dx, dh, dc, dmemory
        return dx

    def _readout_backward(self, doutputs, cache, dhs: np.ndarray, dmemories: np.ndarray):
        """Backward of :meth:`_readout_forward`: adds into dhs (B, T, H), dmemories."""
        cell = self.cell
        H = self.hidden_size
        seq = cache["return_sequences"]
        sl = slice(None) if seq else slice(dhs.shape[1] - 1, dhs.shape[1])
        dy = doutputs if seq else doutputs[:, None]
        # y_t = out_t W_out + b_out (all steps: one GEMM for dW_out)
        dout = self.output.backward(dy, cache["output"])
        # out_t = tanh([h_t ; r_t] W_c + b_c)
        dcat = cell.combine.backward(layers.tanh_backward(dout, cache["out"]), cache["combine"])
        dhs[:, sl] += dcat[..., :H]
        # r_t = read(M_t) W_r + b_r
        dmemories[:, sl] += cell.read_memory_backward(cell.readout.backward(dcat[..., H:],
                                                                            cache["read"]))

    def _memory_backward(self, dmemories: np.ndarray, cache, dhs: np.ndarray):
        """The memory recurrence backwards: adds dL/dh_t into dhs; returns the gradient of the
        inputs the memory read directly (B, T, I), None if it read h_t only, and
        dL/dmemory_0."""
        mem, dt = self.cell.memory, self.dtype
        B, T, N, d = dmemories.shape
        # M_t = RelationalMemory(h_t or [x_t ; h_t], M_{t-1})
        mem_steps = cache["memory"]["steps"]
        dxp = np.empty((B, T, d), dt)
        dgx = None if mem.gate_style is None else np.empty((B, T, 2 * mem.gate_size), dt)
        dmemory = np.zeros((B, N, d), dt)
        for t in range(T - 1, -1, -1):
            dmemory += dmemories[:, t]
            dxp[:, t], dgx_t, dmemory = mem.step_backward(dmemory, mem_steps[t])
            if dgx is not None:
                dgx[:, t] = dgx_t
        # x~_t = mem_in_t W_in + b_in and gx_t = x~_t W_gx + b_g, all steps: one GEMM each
        dx_mem, dh_mem = self.cell.memory_inputs_backward(
            mem.project_inputs_backward(dxp, dgx, cache["memory"]["proj"]))
        dhs += dh_mem
        return dx_mem, dmemory

    def _lstm_backward(self, dhs: np.ndarray, cache, dh_T, dc_T):
        """The LSTM recurrence backwards from dhs (B, T, H): returns dx, dh_0, dc_0."""
        lstm = self.cell.lstm
        hs = cache["hs"]
        B, T, H = hs.shape
        # h_t, c_t = LSTMCell(x_t, h_{t-1}, c_{t-1})
        dh = np.zeros((B, H), self.dtype) if dh_T is None else dh_T.copy()
        dc = dc_T
        dZ = np.empty((B, T, 4 * H), self.dtype)
        lstm_steps = cache["lstm_steps"]
        for t in range(T - 1, -1, -1):
            dh += dhs[:, t]
            dZ[:, t], dh, dc = lstm.step_backward(dh, dc, lstm_steps[t], accumulate_W_h=False)
        # z_t = xw_t + h_{t-1} W_h for all t: one GEMM over B*T rows for dW_h
        h_prev = np.empty_like(hs)
        h_prev[:, 0] = cache["h0"]
        h_prev[:, 1:] = hs[:, :-1]
        lstm.grads["W_h"] += h_prev.reshape(B * T, H).T @ dZ.reshape(B * T, 4 * H)
        # xw_t = x_t W_x + b, all steps in one GEMM
        dx = lstm.project_input_backward(dZ, cache["lstm_lin"])
        return dx, dh, dc

    @staticmethod
    def analysis(cache) -> dict:
        """Per-step internals of a forward cache (``return_cache=True``), for inspection.

        Returns a dict: ``'h'`` (B, T, H) LSTM hidden states; ``'memory'`` (B, T, N, d) the
        memory after each step; ``'attention'`` (T, num_blocks, B, num_heads, N+1, N+1)
        attention weights (row N is the input row); ``'input_gate'`` and ``'forget_gate'``
        (T, B, N, G) memory gate values, or None without gating.
        """
        gates = RelationalMemory.gate_values(cache["memory"])
        return {"h": cache["hs"], "memory": cache["memories"],
                "attention": RelationalMemory.attention_weights(cache["memory"]),
                "input_gate": None if gates is None else gates[0],
                "forget_gate": None if gates is None else gates[1]}


# --------------------------------------------------------------------------------------------
# N-th Farthest classifier
# --------------------------------------------------------------------------------------------


class RelationalRNNClassifier(layers.Module):
    """RelationalRNN over the sequence, its last-step output -> read-out MLP -> logits.

    Children ``rnn`` (:class:`RelationalRNN` with output_size = hidden_size) and ``readout``
    (:class:`layers.MLP` ``[hidden_size, *mlp_hidden, num_classes]``: ReLU hidden layers, linear
    logits; an empty ``mlp_hidden`` gives one linear layer).  The other keyword arguments as in
    :class:`RelationalRNNCell`.

    Classifier interface shared by every model of the library::

        logits, cache = model.forward(x)      # x (B, T, input_size) -> logits (B, num_classes)
        dx = model.backward(dlogits, cache)   # fills grads, returns dx (B, T, input_size)
        model.config                          # constructor kwargs; Cls(**config, dtype=...)
    """

    def __init__(self, input_size: int, num_classes: int, *, hidden_size: int = 64,
                 num_slots: int = 4, slot_size: int = 64, num_heads: int = 2,
                 num_blocks: int = 1, key_size: int | None = None,
                 attention_mlp_layers: int = 2, gate_style: str | None = "unit",
                 forget_bias: float = 1.0, input_bias: float = 0.0,
                 memory_input: str = "hidden", memory_readout: str = "mean",
                 mlp_hidden=(256, 256, 256, 256), rng: np.random.Generator | None = None,
                 dtype=np.float64):
        super().__init__(dtype)
        layers.check_positive_int("input_size", input_size)
        self.num_classes = layers.check_positive_int("num_classes", num_classes)
        hidden_size = layers.check_positive_int("hidden_size", hidden_size)
        if isinstance(mlp_hidden, (str, bytes)) or not hasattr(mlp_hidden, "__iter__"):
            raise TypeError(f"mlp_hidden must be a sequence of integers >= 1, got {mlp_hidden!r}")
        self.mlp_hidden = [layers.check_positive_int(f"mlp_hidden[{k}]", s)
                           for k, s in enumerate(mlp_hidden)]
        rng = np.random.default_rng() if rng is None else rng
        self.rnn = self.add_child("rnn", RelationalRNN(
            input_size, hidden_size, hidden_size, num_slots=num_slots, slot_size=slot_size,
            num_heads=num_heads, num_blocks=num_blocks, key_size=key_size,
            attention_mlp_layers=attention_mlp_layers, gate_style=gate_style,
            forget_bias=forget_bias, input_bias=input_bias, memory_input=memory_input,
            memory_readout=memory_readout, rng=rng, dtype=dtype))
        self.readout = self.add_child("readout", layers.MLP(
            [hidden_size, *self.mlp_hidden, self.num_classes], rng=rng, dtype=dtype))
        self.input_size = self.rnn.input_size
        self.hidden_size = hidden_size

    @property
    def config(self) -> dict:
        """Constructor keyword arguments (JSON-serialisable; no rng or dtype)."""
        cfg = self.rnn.config
        del cfg["output_size"]
        return dict(input_size=cfg.pop("input_size"), num_classes=self.num_classes, **cfg,
                    mlp_hidden=list(self.mlp_hidden))

    def forward(self, x: np.ndarray):
        """x (B, T, input_size) -> logits (B, num_classes), cache."""
        out_T, rnn_cache = self.rnn.forward(x, return_sequences=False, return_cache=True)
        logits, mlp_cache = self.readout.forward(out_T)
        return logits, (rnn_cache, mlp_cache)

    def backward(self, dlogits: np.ndarray, cache) -> np.ndarray:
        """dlogits (B, num_classes) -> dx (B, T, input_size); accumulates every gradient."""
        rnn_cache, mlp_cache = cache
        B = rnn_cache["hs"].shape[0]
        dlogits = layers.check_grad("dlogits", dlogits, (B, self.num_classes), self.dtype)
        # logits = readout(y_T)
        dout_T = self.readout.backward(dlogits, mlp_cache)
        # y_T = rnn(x)[:, -1]
        return self.rnn.backward(dout_T, rnn_cache)
