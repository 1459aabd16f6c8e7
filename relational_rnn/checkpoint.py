"""Checkpoints: one ``.npz`` per model of a run, written atomically, read back with checks.

The archive holds ``params/<dotted name>``, ``adam_m/<name>``, ``adam_v/<name>``, ``ema/<name>``
(the averaged parameters, when the run keeps an average) and ``meta``, a JSON string.  It is
read with ``allow_pickle=False``: a checkpoint holds arrays and text, never pickled objects.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from optimizer import Adam, ExponentialMovingAverage
from relational_rnn.curriculum import phase_at
from relational_rnn.registry import KINDS, MODEL_KINDS
from relational_rnn.run_folder import CHECKPOINT_NAME, atomic_write_bytes, json_safe

CHECKPOINT_FORMAT = "relational-rnn/nth-farthest-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong where it is used."""


def save_checkpoint(path: str, *, kind: str, model, optimizer: Adam,
                    data_rng: np.random.Generator, step: int, run_config: Mapping,
                    extra: Mapping | None = None,
                    average: ExponentialMovingAverage | None = None) -> None:
    """Write a checkpoint atomically (np.savez to a temporary file, then os.replace).

    The ``.npz`` holds ``params/<dotted name>``, ``adam_m/<name>``, ``adam_v/<name>`` arrays,
    ``ema/<name>`` (the averaged parameters, when ``average`` is given) and ``meta``, a JSON
    string: format and version, model kind, constructor config and dtype, step, curriculum
    phase, optimizer state (without moments), the average's decay and count, the data
    generator's bit_generator state, the full run config and ``extra`` (wall time, running
    training statistics, curriculum state).
    """
    opt_state = optimizer.state_dict()
    arrays = {f"params/{n}": p for n, p, _ in model.named_parameters()}
    arrays.update({f"adam_m/{n}": a for n, a in opt_state.pop("m").items()})
    arrays.update({f"adam_v/{n}": a for n, a in opt_state.pop("v").items()})
    ema_state = None
    if average is not None:
        ema_state = average.state_dict()
        arrays.update({f"ema/{n}": a for n, a in ema_state.pop("average").items()})
    # The training loop passes the phase it is in (gated phases end at no fixed step);
    # other callers get the phase of a fixed schedule.
    phases = run_config.get("phases") or [[None, None, None]]
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": kind,
            "model_config": model.config, "dtype": np.dtype(model.dtype).name, "step": int(step),
            "phase_index": phase_at(phases, max(step - 1, 0)), "optimizer": opt_state,
            "data_rng_state": data_rng.bit_generator.state, "run_config": run_config,
            "ema": ema_state,
            "numpy_version": np.__version__, **dict(extra or {})}
    arrays["meta"] = np.array(json.dumps(json_safe(meta)))
    atomic_write_bytes(path, lambda fh: np.savez(fh, **arrays))


def save_weights(path: str, *, kind: str, model, step: int, run_config: Mapping,
                 weights: str, extra: Mapping | None = None) -> None:
    """Write a weights-only checkpoint (``params/<name>`` and ``meta``; no optimizer state, no
    data generator): what a shipped model needs to be loaded, evaluated and analysed, but not
    resumed.  ``weights`` says which ones the model holds (``"averaged"`` or ``"last"``)."""
    arrays = {f"params/{n}": p for n, p, _ in model.named_parameters()}
    phases = run_config.get("phases") or [[None, None, None]]
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": kind,
            "model_config": model.config, "dtype": np.dtype(model.dtype).name, "step": int(step),
            "phase_index": phase_at(phases, max(step - 1, 0)), "optimizer": None,
            "data_rng_state": None, "run_config": run_config, "ema": None,
            "weights_only": weights, "numpy_version": np.__version__, **dict(extra or {})}
    arrays["meta"] = np.array(json.dumps(json_safe(meta)))
    atomic_write_bytes(path, lambda fh: np.savez(fh, **arrays))


def load_checkpoint(path, *, expect_kind: str | None = None, averaged: bool = True):
    """Load a checkpoint written by training: ``(model, info)``, e.g.
    ``model, info = load_checkpoint("runs/quick/rmc")``.

    Args:
        path: a ``checkpoint.npz`` or a folder holding one (e.g. ``runs/quick/rmc``).
        expect_kind: if given, raise unless the checkpoint holds that model kind.
        averaged: when the run kept a moving average of the parameters (``--ema-decay``), load
            those averaged weights -- the ones the held-out accuracy was measured with -- rather
            than the last training iterate (``averaged=False``, what resuming needs).

    Returns the rebuilt model (its class, config and dtype from the checkpoint, parameters
    loaded) and ``info``: a dict with ``kind``, ``model_config``, ``dtype``, ``step``,
    ``phase_index``, ``run_config``, ``optimizer`` (an ``Adam.state_dict()``), ``ema`` (an
    ``ExponentialMovingAverage.state_dict()`` or None), ``weights`` (``"averaged"`` or
    ``"last"``: which ones the model holds), ``data_rng_state``, ``wall_time``, ``path`` and the
    other stored entries.

    Raises :class:`CheckpointError` (a ValueError) with a clear message for a missing, unreadable,
    foreign or inconsistent file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "meta" not in archive.files:
                raise CheckpointError(f"{path} is not a training checkpoint (no 'meta' entry)")
            meta = json.loads(str(archive["meta"][()]))
            arrays = {k: archive[k] for k in archive.files if k != "meta"}
    except CheckpointError:
        raise
    except Exception as exc:          # BadZipFile, OSError, ValueError, JSON errors, ...
        # Only the kind of failure: NumPy's own message may suggest loading pickled objects,
        # which a checkpoint never holds and no code here ever does.
        raise CheckpointError(f"{path} is not a checkpoint of this library: it cannot be read "
                              f"as one ({type(exc).__name__})") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a relational-rnn N-th Farthest checkpoint")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {meta.get('version')!r}, "
                              f"this code reads version {CHECKPOINT_VERSION}")
    kind = meta.get("kind")
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"{path} holds an unknown model kind {kind!r}")
    if expect_kind is not None and kind != expect_kind:
        raise CheckpointError(f"{path} holds a {kind!r} model, expected {expect_kind!r}")
    dtype = meta.get("dtype")
    if dtype not in ("float32", "float64"):
        raise CheckpointError(f"{path} has an unsupported dtype {dtype!r}")
    params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    average = {k[len("ema/"):]: v for k, v in arrays.items() if k.startswith("ema/")}
    ema = meta.get("ema")
    if ema is not None:
        if not isinstance(ema, dict) or set(average) != set(params):
            raise CheckpointError(f"{path} has an incomplete parameter average (the ema/ "
                                  "arrays do not match the parameters)")
        ema = dict(ema, average=average)
    use_average = averaged and ema is not None
    try:
        model = KINDS[kind].classifier(**meta["model_config"], dtype=dtype,
                                         rng=np.random.default_rng(0))
        for name, value in [*params.items(), *average.items()]:
            if value.dtype != np.dtype(dtype):
                raise ValueError(f"parameter {name!r} is {value.dtype}, expected {dtype}")
        model.load_state_dict(average if use_average else params)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} does not match its own {kind} model config: {exc}") \
            from exc
    optimizer = dict(meta.get("optimizer") or {})
    optimizer["m"] = {k[len("adam_m/"):]: v for k, v in arrays.items() if k.startswith("adam_m/")}
    optimizer["v"] = {k[len("adam_v/"):]: v for k, v in arrays.items() if k.startswith("adam_v/")}
    info = dict(meta)
    info["optimizer"] = optimizer
    info["ema"] = ema
    info["weights"] = "averaged" if use_average else (meta.get("weights_only") or "last")
    info["path"] = path
    return model, info


def relabel_checkpoint(source: str, target: str, *, run_config: Mapping,
                       optimizer: Mapping) -> None:
    """Copy the checkpoint ``source`` to ``target`` with another run config and optimizer entry
    (a branch's first checkpoint: the parent's arrays, the branch's settings)."""
    with np.load(source, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"][()]))
    meta["run_config"] = dict(run_config)
    meta["optimizer"] = {k: v for k, v in optimizer.items() if k not in ("m", "v")}
    arrays["meta"] = np.array(json.dumps(json_safe(meta)))
    atomic_write_bytes(target, lambda fh: np.savez(fh, **arrays))
