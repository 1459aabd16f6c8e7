"""A run's optimizer and weight average, built from its settings (fresh, resumed or branched)."""
from __future__ import annotations

from collections.abc import Mapping

from optimizer import Adam, ExponentialDecay, ExponentialMovingAverage, LinearDecay
from relational_rnn.config import TrainSettings


def initial_lr(train: TrainSettings, kind: str, *, full_task: bool = False) -> float:
    """The initial learning rate of the ``kind`` model of a run: its entry in
    ``train.lr_by_model`` (a preset's per-model rate) or else ``train.lr``; once the curriculum
    has reached the full task (``full_task``), its entry in ``train.full_task_lr_by_model`` if
    it has one."""
    if full_task and kind in (train.full_task_lr_by_model or {}):
        return float(train.full_task_lr_by_model[kind])
    return float((train.lr_by_model or {}).get(kind, train.lr))


def decay_steps(train: TrainSettings, kind: str) -> int:
    """The ``kind`` model's schedule length: its entry in ``train.lr_decay_steps_by_model``
    or else ``train.lr_decay_steps``."""
    return int((train.lr_decay_steps_by_model or {}).get(kind, train.lr_decay_steps))


def make_schedule(train: TrainSettings, kind: str, *, full_task: bool = False):
    """The run's schedule (a function of the step count) from the ``kind`` model's initial
    rate and decay steps; a full-task rate restarts the same line from that rate at the same
    step count."""
    lr, steps = initial_lr(train, kind, full_task=full_task), decay_steps(train, kind)
    if train.lr_schedule == "linear":
        return LinearDecay(lr, decay_steps=steps, min_lr=train.min_lr)
    return ExponentialDecay(lr, decay_rate=train.lr_decay_rate, decay_steps=steps,
                            min_lr=train.min_lr)


def make_optimizer(model, train: TrainSettings, kind: str, *, full_task: bool = False) -> Adam:
    """Adam with the run's rate, schedule and clipping."""
    return Adam(model, lr=initial_lr(train, kind, full_task=full_task),
                clip_norm=train.clip_norm, schedule=make_schedule(train, kind,
                                                                  full_task=full_task))


def resumed_optimizer(model, info: Mapping, train: TrainSettings, kind: str, *,
                      full_task: bool = False) -> Adam:
    """The Adam of a resumed (or branched) model: the run's settings decide the rate, its
    schedule and the clipping (a branch may change them); the checkpoint ``info`` gives the
    step count and the moments.  ``full_task``: the curriculum stands at the full task."""
    optimizer = make_optimizer(model, train, kind, full_task=full_task)
    optimizer.load_state_dict({k: v for k, v in info["optimizer"].items()
                               if k not in ("lr", "schedule", "clip_norm")})
    return optimizer


def make_average(model, train: TrainSettings) -> ExponentialMovingAverage | None:
    """The moving average of the weights that held-out evaluations use, when the run keeps
    one (``ema_decay``)."""
    return ExponentialMovingAverage(model, train.ema_decay) if train.ema_decay else None
