"""Hand-written optimisation for any :class:`layers.Module`: Adam(W), global-norm clipping and
learning-rate schedules.

Everything goes through the module seam ``named_parameters()``, which yields
``(dotted_name, param, grad)``; the optimizer keeps its moment buffers under the same dotted
names.  Every update is done *in place* (``p -= ...``) so any other holder of a parameter array
(a cache, a child module, a test) sees the new values, and float32 parameters stay float32.

* :func:`clip_global_norm` -- scale a set of gradients so that their joint L2 norm is at most
  ``max_norm``; returns the norm before clipping.
* :class:`ConstantLR`, :class:`ExponentialDecay`, :class:`LinearDecay` -- callables
  ``lr(step)``; stateless, so their ``config()`` is all a checkpoint needs
  (:func:`schedule_from_config` rebuilds them).
* :class:`Adam` -- Adam with bias correction and optional decoupled (AdamW-style) weight decay,
  clipping and schedule; ``state_dict()`` / ``load_state_dict()`` resume training bit-exactly.
* :class:`ExponentialMovingAverage` -- a running average of the parameters (Polyak averaging)
  to evaluate with: ``update()`` after each step, ``with ema.applied(): evaluate(model)``.

Typical loop::

    opt = Adam(model, lr=1e-4, clip_norm=5.0,
               schedule=ExponentialDecay(1e-4, decay_rate=0.95, decay_steps=10_000, min_lr=8e-5))
    for step in range(num_steps):
        opt.zero_grad()
        loss = forward_and_backward(model, batch)  # accumulates into model.grads
        info = opt.step()                          # {'lr': ..., 'grad_norm': ..., 'clipped': ...}
"""
from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from collections.abc import Callable, Iterable, Mapping

import numpy as np

import layers

# Elements per chunk when a float32 gradient is cast to float64 for the norm (2 MiB buffer).
_NORM_CHUNK = 1 << 18

__all__ = ["clip_global_norm", "ConstantLR", "ExponentialDecay", "LinearDecay",
           "schedule_from_config", "Adam", "ExponentialMovingAverage"]


# --------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------


def _check_real(name: str, value, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as a Python float after checking it is a finite real in the range.

    ``low_open``/``high_open`` make the corresponding bound exclusive.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def _check_step(step) -> int:
    """A schedule's step: an integer >= 0."""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an integer >= 0, got {step!r} ({type(step).__name__})")
    if step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step}")
    return int(step)


# --------------------------------------------------------------------------------------------
# Global-norm clipping
# --------------------------------------------------------------------------------------------


def _sum_squares(g: np.ndarray, buf: np.ndarray | None) -> float:
    """Sum of squares of ``g`` accumulated in float64.

    float64 arrays go straight to a BLAS dot; narrower floats are cast chunk by chunk into the
    float64 buffer ``buf`` (no temporary as large as ``g``).  NaN gives NaN, Inf gives Inf.
    """
    flat = g.reshape(-1)                      # a view for the contiguous arrays of a Module
    if flat.dtype == np.float64:
        return float(np.dot(flat, flat))
    total = 0.0
    n = flat.size
    for start in range(0, n, buf.size):
        chunk = buf[: min(buf.size, n - start)]
        np.copyto(chunk, flat[start: start + chunk.size])
        total += float(np.dot(chunk, chunk))
    return total


def _norm_buffer(arrays) -> np.ndarray | None:
    """float64 scratch for :func:`_sum_squares`, or None when every array is float64."""
    sizes = [a.size for a in arrays if a.dtype != np.float64]
    return np.empty(min(_NORM_CHUNK, max(sizes)), np.float64) if sizes else None


def _like_parameters(entries) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Zeros shaped like each parameter of ``entries`` (name, param, grad), by name: views of
    one flat vector (returned first) when the parameters share a dtype, else separate arrays
    (and None).  The flat vector lets the whole update be a few vector operations."""
    dtypes = {p.dtype for _, p, _ in entries}
    if len(dtypes) != 1:
        return None, {n: np.zeros_like(p) for n, p, _ in entries}
    flat = np.zeros(sum(p.size for _, p, _ in entries), dtypes.pop())
    views, start = {}, 0
    for name, p, _ in entries:
        views[name] = flat[start:start + p.size].reshape(p.shape)
        start += p.size
    return flat, views


def _scale(arrays, factor: float) -> None:
    """Multiply every array by ``factor`` in place (a Python float: float32 stays float32)."""
    for a in arrays:
        a *= factor


def _global_norm(grads: list[np.ndarray], buf: np.ndarray | None) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        return math.sqrt(sum(_sum_squares(g, buf) for g in grads))


def clip_global_norm(grads: Iterable[np.ndarray], max_norm: float) -> float:
    """Scale ``grads`` in place so that their joint L2 norm is at most ``max_norm``.

    grads: arrays of any shapes (float32 or float64); the norm is ``sqrt(sum_i sum(g_i**2))``,
    accumulated in float64 whatever the arrays' dtype.  When it exceeds ``max_norm`` every
    array is multiplied by ``max_norm / norm`` (keeping its dtype); otherwise nothing changes.

    Returns the norm *before* clipping.  Raises ``FloatingPointError`` (leaving every array
    unchanged) when the norm is NaN or Inf, i.e. some gradient holds a NaN/Inf.
    """
    max_norm = _check_real("max_norm", max_norm, low=0.0, low_open=True)
    grads = list(grads)
    for i, g in enumerate(grads):
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grads[{i}] must be a numpy array, got {type(g).__name__}")
        if g.dtype.kind != "f":
            raise TypeError(f"grads[{i}] must hold floats, got dtype {g.dtype}")
    if not grads:
        return 0.0
    norm = _global_norm(grads, _norm_buffer(grads))
    if not math.isfinite(norm):
        raise FloatingPointError(f"global gradient norm is {norm} (a gradient holds NaN or Inf); "
                                 "gradients left unchanged")
    if norm > max_norm:
        _scale(grads, max_norm / norm)
    return norm


# --------------------------------------------------------------------------------------------
# Learning-rate schedules
# --------------------------------------------------------------------------------------------


class _Schedule:
    """What the stateless schedules share: ``config()`` and ``repr`` from ``_fields``."""

    _fields: tuple[str, ...] = ()

    def config(self) -> dict:
        """Everything needed to rebuild the schedule (it has no state besides this)."""
        return {"type": type(self).__name__, **{f: getattr(self, f) for f in self._fields}}

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"

    def _check_decay(self, initial_lr, decay_steps, min_lr) -> None:
        """Check and set the arguments every decaying schedule takes."""
        self.initial_lr = _check_real("initial_lr", initial_lr, low=0.0, low_open=True)
        self.decay_steps = layers.check_positive_int("decay_steps", decay_steps)
        self.min_lr = _check_real("min_lr", min_lr, low=0.0)
        if self.min_lr > self.initial_lr:
            raise ValueError(f"min_lr must be <= initial_lr ({self.initial_lr}), "
                             f"got {self.min_lr}")


class ConstantLR(_Schedule):
    """``lr(step) = lr`` for every step >= 0."""

    _fields = ("lr",)

    def __init__(self, lr: float):
        self.lr = _check_real("lr", lr, low=0.0, low_open=True)

    def __call__(self, step: int) -> float:
        _check_step(step)
        return self.lr


class ExponentialDecay(_Schedule):
    """``lr(step) = max(min_lr, initial_lr * decay_rate ** (step / decay_steps))``.

    Smooth (not staircase) decay: the rate is multiplied by ``decay_rate`` every
    ``decay_steps`` steps, and never falls below ``min_lr``.

    Arguments: ``initial_lr > 0``; ``0 < decay_rate <= 1`` (1 means constant);
    ``decay_steps`` an integer >= 1; ``0 <= min_lr <= initial_lr``.

    Example -- the paper's N-th Farthest runs (Santoro et al., 2018) trained with Adam at
    1e-4 decaying to a floor of 8e-5.  The paper does not give the decay speed; with a factor
    0.95 every 10 000 steps the floor is reached after about 43 500 steps::

        >>> sched = ExponentialDecay(1e-4, decay_rate=0.95, decay_steps=10_000, min_lr=8e-5)
        >>> sched(0), round(sched(10_000), 12), sched(100_000)
        (0.0001, 9.5e-05, 8e-05)
    """

    _fields = ("initial_lr", "decay_rate", "decay_steps", "min_lr")

    def __init__(self, initial_lr: float, decay_rate: float = 1.0, decay_steps: int = 1,
                 min_lr: float = 0.0):
        self.decay_rate = _check_real("decay_rate", decay_rate, low=0.0, high=1.0, low_open=True)
        self._check_decay(initial_lr, decay_steps, min_lr)

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        return max(self.min_lr, self.initial_lr * self.decay_rate ** (step / self.decay_steps))


class LinearDecay(_Schedule):
    """``lr(step) = (1 - s) * initial_lr + s * min_lr`` with ``s = min(1, step / decay_steps)``.

    A straight line from ``initial_lr`` at step 0 down to ``min_lr`` at step ``decay_steps``,
    constant after it.  For a run of a known length, ``decay_steps`` = the run's steps and
    ``min_lr`` = 0 anneal all the way at the end while keeping the rate high for longer than an
    exponential decay does.

    Arguments: ``initial_lr > 0``; ``decay_steps`` an integer >= 1; ``0 <= min_lr <=
    initial_lr``.

        >>> sched = LinearDecay(3e-4, decay_steps=100_000)
        >>> sched(0), round(sched(50_000), 12), sched(100_000), sched(200_000)
        (0.0003, 0.00015, 0.0, 0.0)
    """

    _fields = ("initial_lr", "decay_steps", "min_lr")

    def __init__(self, initial_lr: float, decay_steps: int, min_lr: float = 0.0):
        self._check_decay(initial_lr, decay_steps, min_lr)

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        done = min(1.0, step / self.decay_steps)
        return (1.0 - done) * self.initial_lr + done * self.min_lr


_SCHEDULES = {"ConstantLR": ConstantLR, "ExponentialDecay": ExponentialDecay,
              "LinearDecay": LinearDecay}


def schedule_from_config(config: Mapping):
    """Rebuild a :class:`ConstantLR`, :class:`ExponentialDecay` or :class:`LinearDecay` from its
    ``config()``."""
    if not isinstance(config, Mapping) or config.get("type") not in _SCHEDULES:
        raise ValueError(f"config must be a dict with 'type' in {sorted(_SCHEDULES)}, "
                         f"got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "type"}
    try:
        return _SCHEDULES[config["type"]](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad {config['type']} config {config!r}: {exc}") from exc


def _schedule_config(schedule):
    """What a checkpoint stores for ``schedule``: None, its config(), or a 'custom' marker."""
    if schedule is None:
        return None
    config = getattr(schedule, "config", None)
    if callable(config):
        return dict(config())
    return {"type": "custom", "repr": repr(schedule)}


# --------------------------------------------------------------------------------------------
# Adam
# --------------------------------------------------------------------------------------------


def _check_state_header(state, keys) -> int:
    """Check a state dict's type, that it holds ``keys``, and its step count ``state['t']``."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"state dict lacks the entries {missing}")
    t = state["t"]
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
        raise ValueError(f"state['t'] must be an integer >= 0, got {t!r}")
    return int(t)


def _check_hyperparameters(lr, betas, eps, weight_decay, clip_norm) -> dict:
    """Validate Adam's hyperparameters; return them as plain Python floats."""
    lr = _check_real("lr", lr, low=0.0, low_open=True)
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    betas = tuple(betas)
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {len(betas)} values {betas}")
    beta1 = _check_real("betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
    beta2 = _check_real("betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
    eps = _check_real("eps", eps, low=0.0, low_open=True)
    weight_decay = _check_real("weight_decay", weight_decay, low=0.0)
    if clip_norm is not None:
        clip_norm = _check_real("clip_norm", clip_norm, low=0.0, low_open=True)
    return dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
                clip_norm=clip_norm)


class Adam:
    """Adam (Kingma & Ba) with bias correction and optional decoupled weight decay (AdamW).

    One :meth:`step`, with gradient ``g`` of parameter ``p`` and step count ``t`` (1 at the
    first step)::

        g     <- g * clip_norm / ||all g||     only if clip_norm is set and the norm exceeds it
        lr    =  schedule(t - 1) if a schedule is given, else the constant lr
        m     =  b1 m + (1 - b1) g
        v     =  b2 v + (1 - b2) g^2
        m_hat =  m / (1 - b1^t),   v_hat = v / (1 - b2^t)
        p     -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)

    The weight-decay term is decoupled from the gradient (it is not seen by ``m``/``v``).  All
    updates are in place; ``m`` and ``v`` have the dtype and shape of their parameter and live in
    the dicts :attr:`m`, :attr:`v` under the parameter's dotted name.  The first step of a
    nonzero gradient moves each entry by almost exactly ``lr`` (bias correction).

    Arguments: ``lr > 0``; ``0 <= beta < 1``; ``eps > 0``; ``weight_decay >= 0``; ``clip_norm``
    None or > 0; ``schedule`` None or a callable ``step -> lr`` (e.g. :class:`ExponentialDecay`),
    which overrides ``lr``.
    """

    def __init__(self, model: layers.Module, lr: float = 1e-3, *,
                 betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 clip_norm: float | None = None, schedule: Callable[[int], float] | None = None):
        if not isinstance(model, layers.Module):
            raise TypeError(f"model must be a layers.Module, got {type(model).__name__}")
        hyper = _check_hyperparameters(lr, betas, eps, weight_decay, clip_norm)
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule must be None or a callable step -> lr, "
                            f"got {type(schedule).__name__}")
        entries = list(model.named_parameters())
        if not entries:
            raise ValueError("model has no parameters to optimise")
        names = [n for n, _, _ in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"model has duplicate parameter names: {names}")
        for name, p, g in entries:
            if p.dtype not in (np.float32, np.float64):
                raise TypeError(f"parameter {name!r} must be float32 or float64, got {p.dtype}")
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"gradient of {name!r} is {g.dtype}{g.shape}, "
                                 f"expected {p.dtype}{p.shape} like its parameter")

        self.model = model
        self._set_hyperparameters(hyper)
        self.schedule = schedule
        self.t = 0
        self._names = tuple(names)
        # m and v by name, views of one flat vector each (laid out like the model's packed
        # parameters, layers.Module.pack_parameters): with a packed model a step is a few
        # operations on whole vectors.
        self._m_flat, self.m = _like_parameters(entries)
        self._v_flat, self.v = _like_parameters(entries)
        self._tmp_flat, self._tmp = _like_parameters(entries)   # scratch: no temporaries
        flat = model.flat_buffers(entries)
        self._norm_buf = _norm_buffer([flat.grads] if flat is not None
                                      else [g for _, _, g in entries])

    # -- hyperparameters ----------------------------------------------------------------------

    def _set_hyperparameters(self, hyper: dict) -> None:
        self.lr = hyper["lr"]
        self.beta1, self.beta2 = hyper["betas"]
        self.eps = hyper["eps"]
        self.weight_decay = hyper["weight_decay"]
        self.clip_norm = hyper["clip_norm"]

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    def current_lr(self, t: int | None = None) -> float:
        """The learning rate used by the step that takes the count from ``t`` to ``t + 1``
        (default: the next step)."""
        t = self.t if t is None else t
        if self.schedule is None:
            return self.lr
        lr = self.schedule(t)
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) \
                or lr < 0:
            raise ValueError(f"schedule({t}) must return a finite learning rate >= 0, got {lr!r}")
        return float(lr)

    # -- the update ---------------------------------------------------------------------------

    def _entries(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """The model's current (name, param, grad), checked against the optimizer's buffers."""
        entries = list(self.model.named_parameters())
        if tuple(n for n, _, _ in entries) != self._names:
            raise RuntimeError("the model's parameters changed since the optimizer was built: "
                               f"expected {list(self._names)}, got {[n for n, _, _ in entries]}")
        for name, p, g in entries:
            m = self.m[name]
            if p.shape != m.shape or g.shape != m.shape or p.dtype != m.dtype:
                raise RuntimeError(f"parameter {name!r} is now {p.dtype}{p.shape} (gradient "
                                   f"{g.shape}), the optimizer holds {m.dtype}{m.shape}")
        return entries

    def zero_grad(self) -> None:
        """Clear the model's gradients (delegates to ``model.zero_grad()``)."""
        self.model.zero_grad()

    def step(self) -> dict:
        """Apply one Adam update from the gradients currently in the model.

        Returns ``{'lr': lr used, 'grad_norm': global gradient norm before clipping,
        'clipped': whether clipping scaled the gradients}``.

        Raises ``FloatingPointError`` naming the first parameter whose gradient holds a NaN or
        Inf; nothing (parameters, moments, step count, gradients) is changed then.
        """
        entries = self._entries()
        flat = self.model.flat_buffers(entries) if self._m_flat is not None else None
        # a packed model: one vector for every gradient (and parameter, moment, scratch)
        grads = [flat.grads] if flat is not None else [g for _, _, g in entries]
        grad_norm = _global_norm(grads, self._norm_buf)
        if not math.isfinite(grad_norm):
            for name, _, g in entries:
                if not np.isfinite(g).all():
                    bad = int(g.size - np.count_nonzero(np.isfinite(g)))
                    raise FloatingPointError(
                        f"gradient of parameter {name!r} has {bad} non-finite value(s) "
                        f"(NaN or Inf); no parameter or moment was changed")
            raise FloatingPointError(f"global gradient norm overflowed to {grad_norm}; "
                                     "no parameter or moment was changed")
        lr = self.current_lr(self.t)          # schedule(t - 1) with t the new count

        clipped = self.clip_norm is not None and grad_norm > self.clip_norm
        if clipped:
            _scale(grads, self.clip_norm / grad_norm)

        self.t += 1
        coefficients = self._coefficients(lr, self.t)
        if flat is not None:
            self._update(flat.params, flat.grads, self._m_flat, self._v_flat, self._tmp_flat,
                         *coefficients)
        else:
            for name, p, g in entries:
                self._update(p, g, self.m[name], self.v[name], self._tmp[name], *coefficients)
        return {"lr": lr, "grad_norm": grad_norm, "clipped": bool(clipped)}

    def _coefficients(self, lr: float, t: int) -> tuple:
        """The scalars of step ``t``: (step_size, eps_hat, decay), Python floats (float32
        arrays stay float32)."""
        bc1 = 1.0 - self.beta1 ** t
        bc2 = 1.0 - self.beta2 ** t
        # m_hat / (sqrt(v_hat) + eps) = (sqrt(bc2) / bc1) * m / (sqrt(v) + eps * sqrt(bc2)):
        # the same quantity with the bias corrections folded into two scalars.
        sqrt_bc2 = math.sqrt(bc2)
        return lr * sqrt_bc2 / bc1, self.eps * sqrt_bc2, 1.0 - lr * self.weight_decay

    def _update(self, p, g, m, v, tmp, step_size: float, eps_hat: float, decay: float) -> None:
        """The Adam update of ``p`` (any shape; a whole flat vector, or one tensor) in place."""
        b1, b2 = self.beta1, self.beta2
        # m = b1 m + (1 - b1) g
        m *= b1
        np.multiply(g, 1.0 - b1, out=tmp)
        m += tmp
        # v = b2 v + (1 - b2) g^2
        v *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        # tmp = lr * m_hat / (sqrt(v_hat) + eps)
        np.sqrt(v, out=tmp)
        tmp += eps_hat
        np.divide(m, tmp, out=tmp)
        tmp *= step_size
        # p -= lr * weight_decay * p   (decoupled; uses p before the Adam step)
        if self.weight_decay > 0:
            p *= decay
        # p -= lr * m_hat / (sqrt(v_hat) + eps)
        p -= tmp

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Step count, hyperparameters, schedule config and copies of ``m`` and ``v``."""
        return {
            "t": self.t,
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "clip_norm": self.clip_norm,
            "schedule": _schedule_config(self.schedule),
            "m": {n: a.copy() for n, a in self.m.items()},
            "v": {n: a.copy() for n, a in self.v.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict`, in place, after checking all of it.

        Names and shapes of ``m``/``v`` must match the model's parameters exactly (ValueError
        listing missing/unexpected names or the wrong shape otherwise).  Hyperparameters present
        in ``state`` replace the current ones; a stored schedule config rebuilds the schedule
        (a stored custom schedule keeps the one this optimizer was built with).  Nothing changes
        unless everything is valid.  Together with the model's own ``load_state_dict`` this
        resumes training bit-exactly.
        """
        t = _check_state_header(state, ("t", "m", "v"))

        hyper = _check_hyperparameters(
            state.get("lr", self.lr), state.get("betas", self.betas), state.get("eps", self.eps),
            state.get("weight_decay", self.weight_decay), state.get("clip_norm", self.clip_norm))
        schedule = self.schedule
        if "schedule" in state:
            config = state["schedule"]
            if config is None:
                schedule = None
            elif isinstance(config, Mapping) and config.get("type") == "custom":
                if self.schedule is None:
                    raise ValueError(f"state was saved with a custom schedule "
                                     f"({config.get('repr')}); build the optimizer with it")
            else:
                schedule = schedule_from_config(config)

        shapes = {name: self.m[name].shape for name in self._names}
        for key in ("m", "v"):
            layers.check_named_arrays(f"state[{key!r}]", state[key], shapes, finite=True)
        for name in self._names:
            if (np.asarray(state["v"][name]) < 0).any():
                raise ValueError(f"state['v'][{name!r}] must be >= 0 (a second moment)")
        moments = {"m": state["m"], "v": state["v"]}

        self._set_hyperparameters(hyper)
        self.schedule = schedule
        self.t = t
        for name in self._names:
            self.m[name][...] = moments["m"][name]
            self.v[name][...] = moments["v"][name]

    def __repr__(self) -> str:
        return (f"Adam(lr={self.lr!r}, betas={self.betas!r}, eps={self.eps!r}, "
                f"weight_decay={self.weight_decay!r}, clip_norm={self.clip_norm!r}, "
                f"schedule={self.schedule!r}, t={self.t}, parameters={len(self._names)})")


# --------------------------------------------------------------------------------------------
# Parameter averaging
# --------------------------------------------------------------------------------------------


class ExponentialMovingAverage:
    """Exponential moving average of a model's parameters (Polyak averaging).

    With batches of fresh data the parameters keep jittering around a good point, at a scale set
    by the learning rate; their running average sits closer to it, and a model evaluated with
    the averaged weights is usually more accurate than the last iterate.  After each optimizer
    step, :meth:`update` does, for every parameter ``p`` (``t`` = updates done before this one)::

        d_t  = min(decay, (1 + t) / (10 + t))    the early updates average over fewer steps,
        avg <- avg + (1 - d_t) * (p - avg)       so the initial weights are soon forgotten

    The average starts as a copy of the parameters and lives in :attr:`average` under their
    dotted names; training never sees it.  ``with ema.applied(): ...`` puts the averaged values
    into the model's parameter arrays (in place) for the duration of the block and restores the
    trained values afterwards, also when the block raises.  ``state_dict()`` /
    ``load_state_dict()`` carry it through checkpoints.

    Args:
        model: a :class:`layers.Module` (float32 or float64 parameters).
        decay: in (0, 1); the average spans about ``1 / (1 - decay)`` steps (0.999: 1000).
    """

    def __init__(self, model: layers.Module, decay: float = 0.999):
        if not isinstance(model, layers.Module):
            raise TypeError(f"model must be a layers.Module, got {type(model).__name__}")
        self.decay = _check_real("decay", decay, low=0.0, high=1.0, low_open=True, high_open=True)
        entries = list(model.named_parameters())
        if not entries:
            raise ValueError("model has no parameters to average")
        self.model = model
        self.t = 0
        self._names = tuple(n for n, _, _ in entries)
        # by name, views of one flat vector when the parameters share a dtype (see Adam)
        self._average_flat, self.average = _like_parameters(entries)
        self._tmp_flat, self._tmp = _like_parameters(entries)
        for name, p, _ in entries:
            self.average[name][...] = p

    def _params(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """The model's current (name, param, grad), checked against the average's names and
        shapes."""
        entries = list(self.model.named_parameters())
        if tuple(n for n, _, _ in entries) != self._names:
            raise RuntimeError("the model's parameters changed since the average was built: "
                               f"expected {list(self._names)}, got {[n for n, _, _ in entries]}")
        for name, p, _ in entries:
            a = self.average[name]
            if p.shape != a.shape or p.dtype != a.dtype:
                raise RuntimeError(f"parameter {name!r} is now {p.dtype}{p.shape}, the average "
                                   f"holds {a.dtype}{a.shape}")
        return entries

    def _triples(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(param, average, scratch) to work on: the three flat vectors for a packed model
        (a few vector operations), else one triple per tensor."""
        entries = self._params()
        if self._average_flat is not None:
            flat = self.model.flat_buffers(entries)
            if flat is not None:
                return [(flat.params, self._average_flat, self._tmp_flat)]
        return [(p, self.average[name], self._tmp[name]) for name, p, _ in entries]

    def current_decay(self, t: int | None = None) -> float:
        """``d_t`` of the update that takes the count from ``t`` (default: now) to ``t + 1``."""
        t = self.t if t is None else t
        return min(self.decay, (1.0 + t) / (10.0 + t))

    def update(self) -> None:
        """Fold the model's current parameters into the average (one step)."""
        rate = 1.0 - self.current_decay()
        for p, avg, tmp in self._triples():
            # avg <- avg + (1 - d_t) * (p - avg)
            np.subtract(p, avg, out=tmp)
            tmp *= rate
            avg += tmp
        self.t += 1

    @contextmanager
    def applied(self):
        """Context manager: the model holds the averaged parameters inside the block."""
        triples = self._triples()
        for p, avg, tmp in triples:
            tmp[...] = p
            p[...] = avg
        try:
            yield self.model
        finally:
            for p, _, tmp in triples:
                p[...] = tmp

    def state_dict(self) -> dict:
        """``decay``, update count ``t`` and a copy of the averaged arrays."""
        return {"decay": self.decay, "t": self.t,
                "average": {n: a.copy() for n, a in self.average.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict` after checking all of it (names, shapes, finite values);
        nothing changes unless everything is valid."""
        t = _check_state_header(state, ("decay", "t", "average"))
        decay = _check_real("state['decay']", state["decay"], low=0.0, high=1.0, low_open=True,
                            high_open=True)
        layers.check_named_arrays("state['average']", state["average"],
                                  {name: a.shape for name, a in self.average.items()},
                                  finite=True)
        average = state["average"]
        self.decay, self.t = decay, t
        for name in self._names:
            self.average[name][...] = average[name]

    def __repr__(self) -> str:
        return (f"ExponentialMovingAverage(decay={self.decay!r}, t={self.t}, "
                f"parameters={len(self._names)})")
