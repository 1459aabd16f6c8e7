"""Shared building blocks: pure forward/backward maths, the Module seam, and thin layers.

Everything else in the library is built from this file.

* Pure maths (one place each): ``linear_*``, ``layernorm_*``, ``relu_*``, ``sigmoid``,
  ``tanh_backward``, ``softmax*``, ``softmax_cross_entropy``.  Each forward returns
  ``out, cache`` (or just ``out`` where the output itself is all the backward needs) and each
  backward takes ``dout`` plus that cache, CS231n style.
* :class:`Module`: owns ``params`` and ``grads`` dicts with the same keys, plus named child
  modules.  ``named_parameters()`` walks the tree with dotted names (``memory.attn.W_qkv``), so
  the optimizer and the gradient checker see every model through one seam.  Backward passes
  *accumulate* into ``grads`` with ``+=``; ``zero_grad()`` clears them.
* Thin layers: :class:`Linear`, :class:`LayerNorm`, :class:`MLP`.

Shape letters used in docstrings: B batch, T time, N memory slots, D features, H heads.
"""
from __future__ import annotations

import numbers
import sys
from collections.abc import Mapping
from typing import Iterator

import numpy as np

LAYERNORM_EPS = 1e-5

# --------------------------------------------------------------------------------------------
# Argument validation (raised before any state changes)
# --------------------------------------------------------------------------------------------


def check_grad(name: str, value, shape: tuple, dtype) -> np.ndarray:
    """An upstream gradient must match its output's shape exactly; cast to the model dtype."""
    value = check_array(name, value, dtype=dtype, allow_empty=True)
    if value.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {value.shape}")
    return value


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")
    return int(value)


def check_dtype(dtype) -> np.dtype:
    """Accept float32 or float64 (anything ``np.dtype`` understands as one of those)."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_array(name: str, x, *, ndim: int | None = None, last_dim: int | None = None,
                dtype=None, allow_empty: bool = False) -> np.ndarray:
    """Validate a real floating/integer array argument and return it as ``dtype``.

    Raises ``TypeError`` for non-arrays or non-real dtypes, and ``ValueError`` (naming ``name``,
    the expected and the actual value) for a wrong rank, a wrong last dimension, an empty array
    or non-finite entries.
    """
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple)) or np.isscalar(x):
            x = np.asarray(x)
        else:
            raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (float or int), got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {x.ndim} (shape {x.shape})")
    if last_dim is not None and (x.ndim == 0 or x.shape[-1] != last_dim):
        raise ValueError(f"{name} must have last dimension {last_dim}, got shape {x.shape}")
    if not allow_empty and x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")
    if dtype is not None and x.dtype != dtype:
        with np.errstate(over="ignore"):         # too large for dtype: the error below says so
            x = x.astype(dtype)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise ValueError(f"{name} holds {bad} value(s) beyond the range of "
                             f"{np.dtype(dtype).name} (largest {np.finfo(dtype).max:.3g})")
    return x


def check_named_arrays(label: str, entry, shapes, *, finite: bool = False) -> None:
    """Check that ``entry`` maps exactly the parameter names of ``shapes`` (name -> shape) to
    arrays of those shapes, holding finite real numbers if ``finite``: the per-parameter arrays
    of a state dict.  ValueError (TypeError for a non-dict) naming ``label``."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"{label} must be a dict of arrays by parameter name, "
                        f"got {type(entry).__name__}")
    lost = sorted(set(shapes) - set(entry))
    unexpected = sorted(set(entry) - set(shapes))
    if lost or unexpected:
        raise ValueError(f"{label} does not match the model: missing {lost}, "
                         f"unexpected {unexpected}")
    for name, expected in shapes.items():
        value = np.asarray(entry[name])
        if value.shape != expected:
            raise ValueError(f"{label}[{name!r}] has shape {value.shape}, expected {expected}")
        if finite and (value.dtype.kind not in "fiu" or not np.isfinite(value).all()):
            raise ValueError(f"{label}[{name!r}] must hold finite real numbers")


def check_same_batch(**arrays: np.ndarray) -> None:
    """Raise if the given arrays do not share their first (batch) dimension."""
    sizes = {name: a.shape[0] for name, a in arrays.items() if a is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch sizes must match, got {sizes}")


# --------------------------------------------------------------------------------------------
# Pure maths: forward/backward pairs
# --------------------------------------------------------------------------------------------


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None,
                   out: np.ndarray | None = None):
    """out = x @ W + b for x of shape (..., D_in); W (D_in, D_out); b (D_out,) or None.

    Returns ``out`` (..., D_out) and ``cache = (x, W)``.  ``out``: a C-contiguous array of
    that shape to write into (e.g. from a :class:`Workspace`) instead of a fresh one.
    """
    # One 2-D GEMM over all leading dims: matmul on (B, R, D) @ (D, K) may loop over B.
    x2 = x.reshape(-1, x.shape[-1])
    if out is None:
        out = (x2 @ W).reshape(*x.shape[:-1], W.shape[1])
    else:
        np.matmul(x2, W, out=out.reshape(x2.shape[0], W.shape[1]))
    if b is not None:
        out += b
    return out, (x, W)


def linear_backward(dout: np.ndarray, cache, need_dx: bool = True):
    """Backward of ``linear_forward``.  Returns ``dx`` (or None), ``dW``, ``db``."""
    x, W = cache
    dout2 = dout.reshape(-1, dout.shape[-1])
    # forward: out = x @ W + b
    dW = x.reshape(-1, x.shape[-1]).T @ dout2
    db = ones_vector(dout2.shape[0], dout2.dtype) @ dout2      # column sums by one GEMV
    dx = (dout2 @ W.T).reshape(x.shape) if need_dx else None
    return dx, dW, db


_CONSTANT_VECTORS: dict = {}


def _constant_vector(n: int, value: float, dtype) -> np.ndarray:
    """A read-only vector of n copies of ``value``, cached (a dict lookup per call)."""
    key = (n, value, dtype)
    v = _CONSTANT_VECTORS.get(key)
    if v is None:
        if len(_CONSTANT_VECTORS) > 256:
            _CONSTANT_VECTORS.clear()
        v = _CONSTANT_VECTORS[key] = np.full(n, value, dtype)
        v.setflags(write=False)
    return v


def ones_vector(n: int, dtype) -> np.ndarray:
    """A read-only vector of n ones (cached): ``ones @ a`` sums the rows of a 2-D ``a`` by one
    GEMV, several times faster than ``a.sum(axis=0)`` on these shapes."""
    return _constant_vector(n, 1.0, dtype)


def _mean_vector(n: int, dtype) -> np.ndarray:
    """A read-only vector of n values 1/n (cached): ``a @ v`` is the mean of each row of a,
    by one GEMV (a reduction along short rows is about three times slower)."""
    return _constant_vector(n, 1.0 / n, dtype)


# Rows per block of the LayerNorm's chained element-wise passes: about this many elements, so
# that a block of every operand stays in the L2 cache while the whole chain runs over it.
_BLOCK_ELEMS = 1 << 17


def _row_blocks(rows: int, width: int):
    """Slices of about ``_BLOCK_ELEMS`` elements over ``rows`` rows of ``width`` elements."""
    step = max(1, _BLOCK_ELEMS // max(1, width))
    if rows <= step:
        return (slice(0, rows),)                  # the usual case: one block
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def layernorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                      eps: float = LAYERNORM_EPS, *, overwrite_x: bool = False):
    """Normalise each row of x (..., D) over its last axis (biased variance), then scale/shift.

    Returns ``out`` (..., D) and ``cache = (xhat, rstd, gamma)``.  With ``overwrite_x`` (for a
    temporary the caller no longer needs, e.g. a residual sum) ``xhat`` is formed in x's buffer.
    """
    D = x.shape[-1]
    x2 = x.reshape(-1, D)
    # Two fresh arrays at most (xhat, out); the chain of passes runs block by block of rows,
    # in place, so each block stays in cache.  The row means are GEMVs with a vector of 1/D.
    xhat2 = x2 if overwrite_x else np.empty_like(x2)
    out2 = np.empty(x2.shape, np.result_type(x2.dtype, gamma.dtype, beta.dtype))
    rstd2 = np.empty(x2.shape[0], x2.dtype)
    inv_d = _mean_vector(D, out2.dtype)
    for sl in _row_blocks(x2.shape[0], D):
        xb, xh, r, o = x2[sl], xhat2[sl], rstd2[sl], out2[sl]
        np.matmul(xb, inv_d, out=r)                               # mean
        np.subtract(xb, r[:, None], out=xh)                       # xc = x - mean
        np.multiply(xh, xh, out=o)                                # xc^2, in out's buffer
        np.matmul(o, inv_d, out=r)                                # var = mean(xc^2)
        r += eps
        np.sqrt(r, out=r)
        np.reciprocal(r, out=r)                                   # rstd = 1 / sqrt(var + eps)
        xh *= r[:, None]                                          # xhat = xc * rstd
        np.multiply(xh, gamma, out=o)                             # out = xhat * gamma + beta
        o += beta
    lead = x.shape[:-1]
    return out2.reshape(x.shape), (xhat2.reshape(x.shape), rstd2.reshape(*lead, 1), gamma)


def layernorm_backward(dout: np.ndarray, cache, *, overwrite_dout: bool = False):
    """Backward of ``layernorm_forward``.  Returns ``dx``, ``dgamma``, ``dbeta``.

    With ``overwrite_dout`` (for a temporary the caller no longer needs) ``dx`` is formed in
    dout's buffer.  Five element-wise passes and four GEMVs per block of rows.
    """
    xhat, rstd, gamma = cache
    D = xhat.shape[-1]
    dout2 = dout.reshape(-1, D)
    xhat2 = xhat.reshape(-1, D)
    rstd2 = rstd.reshape(-1)
    dx2 = dout2 if overwrite_dout else np.empty(dout2.shape,
                                                np.result_type(dout2.dtype, gamma.dtype))
    blocks = _row_blocks(dout2.shape[0], D)
    tmp = np.empty((blocks[0].stop - blocks[0].start, D), dx2.dtype)   # one block's scratch
    g_over_d = gamma * (1.0 / D)
    dgamma = dbeta = 0
    for sl in blocks:
        db, xh, dxb, r = dout2[sl], xhat2[sl], dx2[sl], rstd2[sl]
        t = np.multiply(db, xh, out=tmp[:db.shape[0]])           # dout * xhat
        ones = ones_vector(db.shape[0], db.dtype)
        # forward: out = xhat * gamma + beta  (column sums by GEMVs, before db is overwritten)
        dgamma = dgamma + ones @ t
        dbeta = dbeta + ones @ db
        # forward: xhat = (x - mean) * rstd.  With dn = dout * gamma:
        # dx = rstd * (dn - mean(dn) - xhat * mean(dn * xhat)); both row means are GEMVs with
        # gamma / D, and mean(dn * xhat) reuses dout * xhat.
        a = t @ g_over_d
        a *= r                                                   # rstd * mean(dn * xhat)
        c = db @ g_over_d
        c *= r                                                   # rstd * mean(dn)
        np.multiply(xh, a[:, None], out=t)
        t += c[:, None]
        np.multiply(db, gamma, out=dxb)                          # dn
        dxb *= r[:, None]
        dxb -= t
    return dx2.reshape(dout.shape), dgamma, dbeta


def relu_forward(x: np.ndarray) -> np.ndarray:
    """out = max(x, 0).  The output doubles as the backward's cache."""
    return np.maximum(x, 0)


def relu_backward(dout: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Backward of ``relu_forward`` given its output."""
    return dout * (out > 0)


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Numerically stable logistic function 1 / (1 + exp(-x)), accurate over the whole range.

    For very negative x, exp(-x) overflows to +inf (the warning is silenced) and the result is
    the exact limit 0; +-inf give 1 and 0; no NaN arises from a finite or infinite input.
    Works in one fresh array, or in ``out`` (which may be x itself).
    """
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    e = np.negative(x, out=out)
    with np.errstate(over="ignore"):
        np.exp(e, out=e)
    e += 1
    return np.reciprocal(e, out=e)


def _times(t: np.ndarray, dout: np.ndarray) -> np.ndarray:
    """t * dout, in place in the temporary ``t`` when the shapes allow."""
    if getattr(dout, "shape", None) == t.shape and dout.dtype == t.dtype:
        return np.multiply(t, dout, out=t)
    return t * dout


def sigmoid_backward(dout: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Backward of ``sigmoid`` from its output y: dy/dx = y (1 - y)."""
    t = np.subtract(1, y)
    t *= y
    return _times(t, dout)


def tanh_backward(dout: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Backward of ``np.tanh`` from its output y: dy/dx = 1 - y^2."""
    t = np.multiply(y, y)
    np.subtract(1, t, out=t)
    return _times(t, dout)


def softmax(x: np.ndarray, axis: int = -1, *, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax along ``axis``; subtracts the max first so exp never overflows.

    Works in one fresh array, or in ``out`` (which may be x itself).
    """
    e = np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    np.exp(e, out=e)
    e /= np.add.reduce(e, axis=axis, keepdims=True)
    return e


def softmax_backward(dy: np.ndarray, y: np.ndarray, axis: int = -1, *,
                     overwrite_dy: bool = False) -> np.ndarray:
    """Backward of ``softmax`` from its output y: y * (dy - sum(dy * y)).

    With ``overwrite_dy`` (for a temporary the caller no longer needs) the result is formed in
    dy's buffer.
    """
    t = dy * y
    s = np.add.reduce(t, axis=axis, keepdims=True)
    np.subtract(dy, s, out=dy if overwrite_dy else t)
    dx = dy if overwrite_dy else t
    dx *= y
    return dx


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Mean cross-entropy of integer ``labels`` (B,) under ``softmax(logits)`` (B, C).

    The softmax is fused with the loss, so the gradient is simply ``(p - onehot) / B``.
    Returns ``loss`` (float), ``dlogits`` (B, C) and ``probs`` (B, C).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, C), got {logits.shape}")
    labels = np.asarray(labels)
    if labels.shape != (logits.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers of shape ({logits.shape[0]},), "
                         f"got {labels.dtype} {labels.shape}")
    C = logits.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= C):
        raise ValueError(f"labels must lie in [0, {C}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    B = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_z
    rows = np.arange(B)
    loss = float(-log_probs[rows, labels].mean())
    probs = np.exp(log_probs)
    dlogits = probs.copy()
    dlogits[rows, labels] -= 1
    dlogits /= B
    return loss, dlogits, probs


class Workspace:
    """Large arrays recycled from one call to the next.

    ``empty(key, shape, dtype)`` returns the array last handed out under ``key`` once nothing
    else holds it (no live cache keeps it or a view of it), else a fresh one.  A training loop
    then allocates its large per-step arrays once: glibc gives large freed blocks back to the
    system, and every page of fresh memory costs a page fault (several microseconds in a
    virtual machine): an LSTM step page-faulted 4 to 8 MB without this.
    """

    def __init__(self):
        self._arrays: dict = {}

    def empty(self, key, shape: tuple, dtype) -> np.ndarray:
        a = self._arrays.get(key)
        # references to a free array: the dict's, ``a`` and getrefcount's own argument
        if a is None or a.shape != tuple(shape) or a.dtype != dtype or sys.getrefcount(a) > 3:
            a = self._arrays[key] = np.empty(shape, dtype)
        return a


# --------------------------------------------------------------------------------------------
# Module seam
# --------------------------------------------------------------------------------------------


class FlatBuffers:
    """Every parameter of a module tree in one flat vector ``params`` and every gradient in
    another, ``grads``; ``names``, ``param_views`` and ``grad_views`` list the tensors (each a
    view of its vector) in ``named_parameters()`` order.  See :meth:`Module.pack_parameters`."""

    __slots__ = ("params", "grads", "names", "param_views", "grad_views")

    def __init__(self, params, grads, names, param_views, grad_views):
        self.params, self.grads, self.names = params, grads, names
        self.param_views, self.grad_views = param_views, grad_views


class _PackedAfterInit(type):
    """Metaclass of :class:`Module`: as soon as a module's constructor has run, its parameters
    and gradients (its children's included) are packed into flat vectors
    (:meth:`Module.pack_parameters`), before any other code can hold a reference to them."""

    def __call__(cls, *args, **kwargs):
        module = super().__call__(*args, **kwargs)
        module.pack_parameters()
        return module


class Module(metaclass=_PackedAfterInit):
    """Base of every layer and model: ``params``/``grads`` dicts plus named child modules.

    Subclasses register tensors with :meth:`add_param` and sub-modules with :meth:`add_child`.
    Dotted names join the child name and the parameter name: ``memory.attn.W_qkv``.  Once
    constructed, the parameters of a module are views of one flat vector, and its gradients
    of another (:meth:`flat_buffers`), so that the optimizer, clipping, the weight average and
    :meth:`zero_grad` are a few vector operations instead of one small operation per tensor.
    """

    def __init__(self, dtype=np.float64):
        self.dtype = check_dtype(dtype)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.children: dict[str, Module] = {}
        self._flat: FlatBuffers | None = None

    def add_param(self, name: str, value: np.ndarray) -> np.ndarray:
        value = np.ascontiguousarray(value, dtype=self.dtype)
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)
        return value

    def add_child(self, name: str, module: "Module") -> "Module":
        self.children[name] = module
        return module

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(dotted_name, param, grad)`` for this module and every descendant."""
        return iter(self._collect_parameters(prefix, []))

    def _collect_parameters(self, prefix: str, out: list) -> list:
        # one list built by plain recursion: several times cheaper than nested generators,
        # and the optimizer, the average and zero_grad walk the tree at every step
        for name, p in self.params.items():
            out.append((prefix + name, p, self.grads[name]))
        for cname, child in self.children.items():
            child._collect_parameters(prefix + cname + ".", out)
        return out

    def modules(self) -> Iterator["Module"]:
        """This module and every descendant."""
        yield self
        for child in self.children.values():
            yield from child.modules()

    def pack_parameters(self) -> bool:
        """Move every parameter of this module and its descendants, in ``named_parameters()``
        order, into one flat vector, and every gradient into another; each tensor becomes a
        view of its vector (same name, shape, dtype and values).  Packs of descendants are
        superseded.  Returns False, changing nothing, when there are no parameters or their
        dtypes differ.  Called after every constructor (the metaclass)."""
        slots = [(m, name) for m in self.modules() for name in m.params]
        dtypes = {m.params[name].dtype for m, name in slots}
        if len(dtypes) != 1:
            return False
        sizes = [m.params[name].size for m, name in slots]
        flat_p = np.empty(sum(sizes), dtypes.pop())
        flat_g = np.empty_like(flat_p)
        start = 0
        for (m, name), size in zip(slots, sizes):
            for store, flat in ((m.params, flat_p), (m.grads, flat_g)):
                view = flat[start:start + size].reshape(store[name].shape)
                view[...] = store[name]
                store[name] = view
            start += size
        for m in self.modules():
            m._flat = None
        entries = list(self.named_parameters())
        self._flat = FlatBuffers(flat_p, flat_g, tuple(n for n, _, _ in entries),
                                 tuple(p for _, p, _ in entries), tuple(g for _, _, g in entries))
        return True

    def flat_buffers(self, entries=None) -> FlatBuffers | None:
        """The flat vectors behind every parameter and gradient, or None when the tensors are
        no longer exactly those views (a parameter added or replaced since the packing, a
        copied module).  ``entries``: ``list(self.named_parameters())`` if already at hand."""
        flat = getattr(self, "_flat", None)
        if flat is None:
            return None
        entries = list(self.named_parameters()) if entries is None else entries
        if len(entries) != len(flat.names):
            return None
        for (name, p, g), n0, p0, g0 in zip(entries, flat.names, flat.param_views,
                                            flat.grad_views):
            if name != n0 or p is not p0 or g is not g0 or p.base is not flat.params \
                    or g.base is not flat.grads:
                return None
        return flat

    def parameters(self) -> dict[str, np.ndarray]:
        """All parameters by dotted name (the arrays themselves, not copies)."""
        return {n: p for n, p, _ in self.named_parameters()}

    def gradients(self) -> dict[str, np.ndarray]:
        """All gradient buffers by dotted name (same keys as :meth:`parameters`)."""
        return {n: g for n, _, g in self.named_parameters()}

    def zero_grad(self) -> None:
        flat = self.flat_buffers()
        if flat is not None:
            flat.grads.fill(0)                    # one vector for every gradient
            return
        for _, _, g in self.named_parameters():
            g.fill(0)

    def num_parameters(self) -> int:
        return int(sum(p.size for _, p, _ in self.named_parameters()))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of all parameters by dotted name."""
        return {n: p.copy() for n, p, _ in self.named_parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state`` into the parameters in place, after checking names and shapes."""
        params = self.parameters()
        check_named_arrays("state dict", state, {n: p.shape for n, p in params.items()})
        for name, p in params.items():
            p[...] = state[name]


def init_fan_in(rng: np.random.Generator, fan_in: int, shape) -> np.ndarray:
    """Truncated normal with stddev 1/sqrt(fan_in), cut at 2 stddev: Sonnet's Linear default.

    Values beyond 2 stddev are drawn again (as TensorFlow's truncated_normal does), so the
    result has stddev about 0.88/sqrt(fan_in).  The RMC needs this width: with the narrower
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (stddev 0.58/sqrt(fan_in)) it stayed on the plateau of
    even the 3-object x 1-feature N-th Farthest task, which this init solves in ~2000 steps
    (see IMPLEMENTATION_SUMMARY.md).
    """
    w = rng.standard_normal(size=shape)
    outside = np.abs(w) > 2.0
    while outside.any():                  # a few rounds: each keeps ~95% of the redrawn values
        w[outside] = rng.standard_normal(size=int(outside.sum()))
        outside = np.abs(w) > 2.0
    return w / np.sqrt(fan_in)


class Linear(Module):
    """y = x W + b.

    x: (..., in_features) -> y: (..., out_features).  Params ``W`` (in, out), ``b`` (out,).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 rng: np.random.Generator | None = None, dtype=np.float64):
        super().__init__(dtype)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        rng = np.random.default_rng() if rng is None else rng
        self.add_param("W", init_fan_in(rng, in_features, (in_features, out_features)))
        self.has_bias = bias
        if bias:
            self.add_param("b", np.zeros(out_features))

    def forward(self, x: np.ndarray):
        """x (..., in_features) -> out (..., out_features), cache."""
        return linear_forward(x, self.params["W"], self.params.get("b"))

    def backward(self, dout: np.ndarray, cache, need_dx: bool = True):
        """Accumulate dW (and db); return dx (..., in_features) (None if not needed)."""
        dx, dW, db = linear_backward(dout, cache, need_dx)
        self.grads["W"] += dW
        if self.has_bias:
            self.grads["b"] += db
        return dx


class LayerNorm(Module):
    """Per-row normalisation over the last axis (eps 1e-5), gain ``g`` = 1 and bias ``b`` = 0."""

    def __init__(self, features: int, *, eps: float = LAYERNORM_EPS, dtype=np.float64):
        super().__init__(dtype)
        self.features = check_positive_int("features", features)
        self.eps = eps
        self.add_param("g", np.ones(features))
        self.add_param("b", np.zeros(features))

    def forward(self, x: np.ndarray, *, overwrite_x: bool = False):
        """x (..., D) -> out (..., D), cache.  ``overwrite_x``: x is a temporary that may be
        overwritten (see :func:`layernorm_forward`)."""
        return layernorm_forward(x, self.params["g"], self.params["b"], self.eps,
                                 overwrite_x=overwrite_x)

    def backward(self, dout: np.ndarray, cache, *, overwrite_dout: bool = False):
        """dout (..., D) -> dx (..., D); accumulates dg, db.  ``overwrite_dout``: dout is a
        temporary that may be overwritten."""
        dx, dg, db = layernorm_backward(dout, cache, overwrite_dout=overwrite_dout)
        self.grads["g"] += dg
        self.grads["b"] += db
        return dx


class MLP(Module):
    """Linear -> ReLU -> ... -> Linear.  No activation after the last layer unless asked.

    ``sizes = [in, h1, ..., out]``; children are ``fc0``, ``fc1``, ...
    x: (..., sizes[0]) -> (..., sizes[-1]).
    """

    def __init__(self, sizes, *, activate_final: bool = False,
                 rng: np.random.Generator | None = None, dtype=np.float64):
        super().__init__(dtype)
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least input and output widths, got {sizes}")
        for i, s in enumerate(sizes):
            check_positive_int(f"sizes[{i}]", s)
        rng = np.random.default_rng() if rng is None else rng
        self.sizes = sizes
        self.activate_final = activate_final
        self.layers = [self.add_child(f"fc{i}", Linear(a, b, rng=rng, dtype=dtype))
                       for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]

    def forward(self, x: np.ndarray):
        caches = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, lin_cache = layer.forward(x)
            act = i < last or self.activate_final
            if act:
                np.maximum(x, 0, out=x)        # relu_forward, in place on our fresh output
            caches.append((lin_cache, x if act else None))
        return x, caches

    def backward(self, dout: np.ndarray, caches, need_dx: bool = True):
        own = False                            # is dout a temporary of ours (safe to overwrite)?
        for i in range(len(self.layers) - 1, -1, -1):
            lin_cache, relu_out = caches[i]
            if relu_out is not None:
                # out = relu(z)
                if own:
                    np.multiply(dout, relu_out > 0, out=dout)
                else:
                    dout = relu_backward(dout, relu_out)
            dout = self.layers[i].backward(dout, lin_cache, need_dx=(need_dx or i > 0))
            own = True
        return dout
