"""LSTM baseline: one-step cell, batch-first sequence model, and the N-th Farthest classifier.

Equations of one step (x_t (B, D), h_{t-1} and c_{t-1} (B, H)):

    z_t = x_t W_x + b + h_{t-1} W_h                       (B, 4H) pre-activations
    i = sigmoid(z_i)   f = sigmoid(z_f)   g = tanh(z_g)   o = sigmoid(z_o)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

Gate order along the 4H axis is ``[i, f, g, o]`` (input, forget, cell candidate, output), the
same order PyTorch uses, so ``W_x[:, H:2H]`` holds the forget gate's input weights.

Speed: the sequence model projects the inputs of all T steps with one GEMM before the time loop
(``x W_x + b``), keeps only ``h_{t-1} W_h`` inside it, and after the backward loop forms ``dW_x``,
``db`` and ``dW_h`` with one GEMM each over all B*T rows.  It stores its per-step buffers
time-major (contiguous per step) and skips the products with a zero initial state.  The same split is offered by
:class:`LSTMCell` (``project_input`` / ``step`` / ``step_backward`` / ``project_input_backward``)
for models that must interleave other work with the recurrence.

Shape letters: B batch, T time, D input features, H hidden units.
"""
from __future__ import annotations

import numpy as np

from layers import (MLP, Module, Workspace, check_array, check_grad, check_positive_int,
                    check_same_batch, init_fan_in, linear_backward, linear_forward, sigmoid,
                    sigmoid_backward, tanh_backward)

FORGET_BIAS = 1.0

__all__ = ["LSTMCell", "LSTM", "LSTMClassifier", "orthogonal", "FORGET_BIAS"]


def orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random (n, n) orthogonal matrix: QR of a Gaussian, signs fixed so the draw is uniform."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    # Multiplying column j by sign(R_jj) makes the factorisation unique (Haar-distributed Q).
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


# --------------------------------------------------------------------------------------------
# Gate maths shared by the cell and the sequence model
# --------------------------------------------------------------------------------------------


def _gates_forward(z: np.ndarray, c_prev: np.ndarray, h_out: np.ndarray | None = None,
                   c_out: np.ndarray | None = None, tc_out: np.ndarray | None = None):
    """One step from pre-activations.  ``z`` (B, 4H) is overwritten with the activations.

    Returns ``h`` (B, H), ``c`` (B, H), ``tanh(c)`` (B, H), written into ``h_out``, ``c_out``,
    ``tc_out`` when given (e.g. views of the sequence buffers) instead of fresh arrays.
    """
    H = c_prev.shape[-1]
    sigmoid(z[:, :2 * H], out=z[:, :2 * H])               # i, f
    np.tanh(z[:, 2 * H:3 * H], out=z[:, 2 * H:3 * H])     # g
    sigmoid(z[:, 3 * H:], out=z[:, 3 * H:])               # o
    i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    c = np.multiply(f, c_prev, out=c_out)                 # c = f * c_prev + i * g
    c += i * g
    tc = np.tanh(c, out=tc_out)
    h = np.multiply(o, tc, out=h_out)                     # h = o * tanh(c)
    return h, c, tc


def _gates_backward(dh: np.ndarray, dc: np.ndarray | None, act: np.ndarray,
                    c_prev: np.ndarray, tc: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """Backward of :func:`_gates_forward`.

    dh, dc: (B, H) gradients reaching h_t and c_t (dc None: zero; neither is modified);
    act (B, 4H) the activations [i, f, g, o]; c_prev, tc = tanh(c_t): (B, H).  Writes dL/dz
    into ``dz`` (B, 4H) and returns dc_prev.
    """
    H = c_prev.shape[-1]
    i, f, g, o = act[:, :H], act[:, H:2 * H], act[:, 2 * H:3 * H], act[:, 3 * H:]
    # forward: h = o * tanh(c)
    dz_o = np.multiply(dh, tc, out=dz[:, 3 * H:])         # dL/do, made dL/dz_o below
    dc_t = np.multiply(tc, tc)                             # dc_t = dc + dh o (1 - tc^2)
    np.subtract(1, dc_t, out=dc_t)
    dc_t *= o
    dc_t *= dh
    if dc is not None:
        dc_t += dc
    # forward: c = f * c_prev + i * g
    np.multiply(dc_t, g, out=dz[:, :H])                   # dL/di
    np.multiply(dc_t, c_prev, out=dz[:, H:2 * H])         # dL/df
    dz_g = np.multiply(dc_t, i, out=dz[:, 2 * H:3 * H])   # dL/dg
    # [i, f] = sigmoid(z_if), o = sigmoid(z_o): times a (1 - a); g = tanh(z_g): times 1 - g^2
    act_if = act[:, :2 * H]
    t = np.subtract(1, act_if)
    t *= act_if
    dz[:, :2 * H] *= t
    t = np.subtract(1, o)
    t *= o
    dz_o *= t
    t = np.multiply(g, g)
    np.subtract(1, t, out=t)
    dz_g *= t
    # forward: c = f * c_prev + ...
    dc_t *= f
    return dc_t


def _check_state(name: str, value, hidden: int, dtype) -> np.ndarray | None:
    """A (B, H) state or None, cast to the model dtype."""
    if value is None:
        return None
    return check_array(name, value, ndim=2, last_dim=hidden, dtype=dtype)


# --------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------


class LSTMCell(Module):
    """One LSTM step.  Gate order along the 4H axis: ``[i, f, g, o]``.

    Params: ``W_x`` (D, 4H) uniform in +-1/sqrt(D); ``W_h`` (H, 4H) whose four (H, H) gate blocks
    are each orthogonal; ``b`` (4H,) zero except the forget block, which starts at 1.
    """

    def __init__(self, input_size: int, hidden_size: int, *,
                 rng: np.random.Generator | None = None, dtype=np.float64):
        super().__init__(dtype)
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = H = check_positive_int("hidden_size", hidden_size)
        rng = np.random.default_rng() if rng is None else rng
        self.add_param("W_x", init_fan_in(rng, input_size, (input_size, 4 * H)))
        self.add_param("W_h", np.concatenate([orthogonal(rng, H) for _ in range(4)], axis=1))
        b = np.zeros(4 * H)
        b[H:2 * H] = FORGET_BIAS
        self.add_param("b", b)

    # -- the split API: input projection outside the recurrence -------------------------------

    def project_input(self, x: np.ndarray, out: np.ndarray | None = None):
        """xw = x W_x + b for x (..., D) (any leading dims, e.g. (B, T, D)) -> (..., 4H), cache.

        No validation: callers validate x first.  ``out``: an array to write xw into.
        """
        return linear_forward(x, self.params["W_x"], self.params["b"], out=out)

    def project_input_backward(self, dxw: np.ndarray, cache, need_dx: bool = True):
        """Accumulate dW_x and db from dxw (..., 4H); return dx (..., D) (None if not needed)."""
        dx, dW, db = linear_backward(dxw, cache, need_dx)
        self.grads["W_x"] += dW
        self.grads["b"] += db
        return dx

    def step(self, xw: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray):
        """One step from the projected input xw (B, 4H) and h_prev, c_prev (B, H).

        Returns ``(h, c), cache`` with h, c (B, H).  No validation (inner-loop call).
        """
        # forward: z = xw + h_prev W_h
        z = h_prev @ self.params["W_h"]
        z += xw
        h, c, tc = _gates_forward(z, c_prev)
        return (h, c), (z, h_prev, c_prev, tc)

    def step_backward(self, dh, dc, cache, *, accumulate_W_h: bool = True):
        """Backward of :meth:`step`.  dh, dc: (B, H) or None (zero).

        Returns ``dxw`` (B, 4H), ``dh_prev``, ``dc_prev`` (B, H).  Accumulates dW_h unless
        ``accumulate_W_h`` is False (a sequence model may stack the h_prev of all steps and
        form dW_h with one GEMM instead).
        """
        act, h_prev, c_prev, tc = cache
        dh = np.zeros_like(tc) if dh is None else dh
        dz = np.empty_like(act)
        dc_prev = _gates_backward(dh, dc, act, c_prev, tc, dz)
        # forward: z = xw + h_prev W_h
        W_h = self.params["W_h"]
        if accumulate_W_h:
            self.grads["W_h"] += h_prev.T @ dz
        return dz, dz @ W_h.T, dc_prev

    # -- the plain one-step API ---------------------------------------------------------------

    def forward(self, x: np.ndarray, h_prev: np.ndarray | None = None,
                c_prev: np.ndarray | None = None):
        """x (B, D), h_prev and c_prev (B, H) (None = zeros) -> ``(h, c), cache``."""
        x = check_array("x", x, ndim=2, last_dim=self.input_size, dtype=self.dtype)
        h_prev = _check_state("h_prev", h_prev, self.hidden_size, self.dtype)
        c_prev = _check_state("c_prev", c_prev, self.hidden_size, self.dtype)
        check_same_batch(x=x, h_prev=h_prev, c_prev=c_prev)
        zeros = np.zeros((x.shape[0], self.hidden_size), self.dtype)
        h_prev = zeros if h_prev is None else h_prev
        c_prev = zeros if c_prev is None else c_prev
        xw, lin_cache = self.project_input(x)
        (h, c), step_cache = self.step(xw, h_prev, c_prev)
        return (h, c), (lin_cache, step_cache)

    def backward(self, dh, dc, cache):
        """dh, dc: (B, H) gradients on h and c (None = zero).  Accumulates every parameter
        gradient; returns ``dx`` (B, D), ``dh_prev``, ``dc_prev`` (B, H)."""
        lin_cache, step_cache = cache
        B, H = step_cache[3].shape
        dh = None if dh is None else check_grad("dh", dh, (B, H), self.dtype)
        dc = None if dc is None else check_grad("dc", dc, (B, H), self.dtype)
        dxw, dh_prev, dc_prev = self.step_backward(dh, dc, step_cache)
        # forward: xw = x W_x + b
        dx = self.project_input_backward(dxw, lin_cache)
        return dx, dh_prev, dc_prev


# --------------------------------------------------------------------------------------------
# Sequence model
# --------------------------------------------------------------------------------------------


class LSTM(Module):
    """Single-layer LSTM over a batch-first sequence; child ``cell`` (:class:`LSTMCell`).

    x (B, T, D) -> outputs (B, T, H) (or (B, H), the last step, with return_sequences=False).
    """

    def __init__(self, input_size: int, hidden_size: int, *,
                 rng: np.random.Generator | None = None, dtype=np.float64):
        super().__init__(dtype)
        self.cell = self.add_child("cell", LSTMCell(input_size, hidden_size, rng=rng,
                                                    dtype=dtype))
        self.input_size = self.cell.input_size
        self.hidden_size = self.cell.hidden_size
        self._workspace = Workspace()         # the sequence buffers, reused from step to step

    def forward(self, x: np.ndarray, h0: np.ndarray | None = None, c0: np.ndarray | None = None,
                *, return_sequences: bool = True, return_state: bool = False,
                return_cache: bool = False):
        """Run the sequence.

        x (B, T, D); h0, c0 (B, H) or None (zeros).  Returns ``outputs`` alone, or a tuple
        ``outputs[, h_T, c_T][, cache]``: outputs (B, T, H) if return_sequences else (B, H);
        h_T, c_T (B, H) with return_state; the cache (for :meth:`backward`) last with
        return_cache.  Integer or other-precision inputs are cast to the model dtype.
        """
        H, dt = self.hidden_size, self.dtype
        x = check_array("x", x, ndim=3, last_dim=self.input_size, dtype=dt, allow_empty=True)
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"x must have shape (B, T, {self.input_size}) with B >= 1 and "
                             f"T >= 1, got shape {x.shape}")
        h0 = _check_state("h0", h0, H, dt)
        c0 = _check_state("c0", c0, H, dt)
        check_same_batch(x=x, h0=h0, c0=c0)
        given_state = h0 is not None or c0 is not None
        B, T, _ = x.shape
        h = np.zeros((B, H), dt) if h0 is None else h0
        c = np.zeros((B, H), dt) if c0 is None else c0

        # Time-major buffers: every per-step slice [t] is one contiguous (B, .) block, for the
        # recurrent GEMMs and for the dW_h GEMM over the steps t >= 1.  The cache exposes
        # them as batch-first views.  They come from the workspace: reused once the previous
        # step's cache is gone, instead of fresh (page-faulted) memory at every step.
        ws = self._workspace
        # forward: xw_t = x_t W_x + b for all T steps in one GEMM; xw then holds the activations.
        xw, lin_cache = self.cell.project_input(x.transpose(1, 0, 2),
                                                out=ws.empty("xw", (T, B, 4 * H), dt))
        W_h = self.cell.params["W_h"]
        hs = ws.empty("hs", (T, B, H), dt)                     # h_1 .. h_T
        cs = ws.empty("cs", (T + 1, B, H), dt)                 # c_0 .. c_T
        tcs = ws.empty("tcs", (T, B, H), dt)                   # tanh(c_1) .. tanh(c_T)
        cs[0] = c
        h_init = h.copy()                                      # h_0, kept for dW_h
        for t in range(T):
            z = xw[t]
            if t > 0 or h0 is not None:                        # h_0 = 0 contributes nothing
                z += h @ W_h                                   # z_t = xw_t + h_{t-1} W_h
            # the step writes h_t, c_t, tanh(c_t) straight into the sequence buffers
            h, c, _ = _gates_forward(z, c, hs[t], cs[t + 1], tcs[t])

        # Outputs and states are arrays of their own, never aliases of the cache.
        outputs = np.ascontiguousarray(hs.transpose(1, 0, 2)) if return_sequences else h.copy()
        result = [outputs]
        if return_state:
            result += [h.copy(), c.copy()]
        if return_cache:
            result.append({"lin": lin_cache, "act": xw.transpose(1, 0, 2),
                           "hs": hs.transpose(1, 0, 2), "cs": cs.transpose(1, 0, 2),
                           "tcs": tcs.transpose(1, 0, 2), "h0": h_init,
                           "h0_zero": h0 is None, "given_state": given_state,
                           "return_sequences": bool(return_sequences)})
        return result[0] if len(result) == 1 else tuple(result)

    def backward(self, doutputs: np.ndarray, cache, dh_T: np.ndarray | None = None,
                 dc_T: np.ndarray | None = None):
        """Backprop through time.

        doutputs matches the outputs' shape ((B, T, H) or (B, H)); dh_T, dc_T (B, H) optional
        gradients on the returned final states.  Accumulates the cell's gradients; returns
        ``dx`` (B, T, D), or ``(dx, dh0, dc0)`` if an initial state was given to forward.
        """
        # time-major buffers behind the batch-first views of the cache
        act, hs, cs, tcs = (cache[k].transpose(1, 0, 2) for k in ("act", "hs", "cs", "tcs"))
        T, B, H = hs.shape
        dt = self.dtype
        seq = cache["return_sequences"]
        doutputs = check_grad("doutputs", doutputs, (B, T, H) if seq else (B, H), dt)
        dh = (np.zeros((B, H), dt) if dh_T is None
              else check_grad("dh_T", dh_T, (B, H), dt).copy())
        dc = np.zeros((B, H), dt) if dc_T is None else check_grad("dc_T", dc_T, (B, H), dt)
        if not seq:
            # forward: outputs = h_T
            dh += doutputs

        W_h = self.cell.params["W_h"]
        dZ = self._workspace.empty("dZ", act.shape, dt)        # (T, B, 4H)
        # dh_0 is only returned when an initial state was given
        need_dh0 = cache["given_state"]
        for t in range(T - 1, -1, -1):
            if seq:
                # forward: outputs[:, t] = h_t (dh is ours: a copy or a fresh product)
                dh += doutputs[:, t]
            # forward: h_t, c_t = gates(z_t, c_{t-1})
            dc = _gates_backward(dh, dc, act[t], cs[t], tcs[t], dZ[t])
            # forward: z_t = xw_t + h_{t-1} W_h
            if t > 0 or need_dh0:
                dh = dZ[t] @ W_h.T

        # forward: z_t = xw_t + h_{t-1} W_h, for all t >= 1 at once: one GEMM over B*(T-1)
        # rows (contiguous in the time-major buffers); h_0 only if it was given (else zero)
        gW_h = self.cell.grads["W_h"]
        if T > 1:
            gW_h += hs[:-1].reshape(-1, H).T @ dZ[1:].reshape(-1, 4 * H)
        if not cache.get("h0_zero", False):
            gW_h += cache["h0"].T @ dZ[0]
        # forward: xw = x W_x + b, all steps in one GEMM (time-major, like the forward)
        dx = np.ascontiguousarray(
            self.cell.project_input_backward(dZ, cache["lin"]).transpose(1, 0, 2))
        if cache["given_state"]:
            return dx, dh, dc
        return dx


# --------------------------------------------------------------------------------------------
# N-th Farthest classifier
# --------------------------------------------------------------------------------------------


class LSTMClassifier(Module):
    """The N-th Farthest LSTM baseline: LSTM over the sequence, last hidden state -> read-out MLP.

    Children ``lstm`` (:class:`LSTM`) and ``readout`` (:class:`layers.MLP` with hidden widths
    ``mlp_hidden`` and ReLU, then a linear layer to ``num_classes`` logits, no final activation;
    an empty ``mlp_hidden`` gives one linear layer).

    Classifier interface shared by every model of the library::

        logits, cache = model.forward(x)      # x (B, T, input_size) -> logits (B, num_classes)
        dx = model.backward(dlogits, cache)   # fills grads, returns dx (B, T, input_size)
        model.config                          # constructor kwargs; Cls(**config, dtype=...)
    """

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, *,
                 mlp_hidden=(256, 256, 256, 256), rng: np.random.Generator | None = None,
                 dtype=np.float64):
        super().__init__(dtype)
        input_size = check_positive_int("input_size", input_size)
        hidden_size = check_positive_int("hidden_size", hidden_size)
        num_classes = check_positive_int("num_classes", num_classes)
        if isinstance(mlp_hidden, (str, bytes)) or not hasattr(mlp_hidden, "__iter__"):
            raise TypeError(f"mlp_hidden must be a sequence of integers >= 1, got {mlp_hidden!r}")
        mlp_hidden = [check_positive_int(f"mlp_hidden[{k}]", s)
                      for k, s in enumerate(mlp_hidden)]
        rng = np.random.default_rng() if rng is None else rng
        self.input_size, self.hidden_size, self.num_classes = input_size, hidden_size, num_classes
        self.mlp_hidden = mlp_hidden
        self.lstm = self.add_child("lstm", LSTM(input_size, hidden_size, rng=rng, dtype=dtype))
        self.readout = self.add_child(
            "readout", MLP([hidden_size, *mlp_hidden, num_classes], rng=rng, dtype=dtype))

    @property
    def config(self) -> dict:
        """Constructor keyword arguments (JSON-serialisable; no rng or dtype)."""
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_classes": self.num_classes, "mlp_hidden": list(self.mlp_hidden)}

    def forward(self, x: np.ndarray):
        """x (B, T, input_size) -> logits (B, num_classes), cache."""
        h_T, lstm_cache = self.lstm.forward(x, return_sequences=False, return_cache=True)
        logits, mlp_cache = self.readout.forward(h_T)
        return logits, (lstm_cache, mlp_cache)

    def backward(self, dlogits: np.ndarray, cache) -> np.ndarray:
        """dlogits (B, num_classes) -> dx (B, T, input_size); accumulates every gradient."""
        lstm_cache, mlp_cache = cache
        B = lstm_cache["hs"].shape[0]                          # batch-first view
        dlogits = check_grad("dlogits", dlogits, (B, self.num_classes), self.dtype)
        # forward: logits = readout(h_T)
        dh_T = self.readout.backward(dlogits, mlp_cache)
        # forward: h_T = lstm(x)[:, -1]
        return self.lstm.backward(dh_T, lstm_cache)
