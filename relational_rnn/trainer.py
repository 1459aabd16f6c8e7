"""Training one model of a run: :func:`train_model`, a short loop over named collaborators.

* :class:`TrainingState` -- what a checkpoint restores: model, Adam, weight average, data
  stream, step, wall time, the running training window and the curriculum position.
* :class:`relational_rnn.curriculum.Curriculum` -- the phase and its gate.
* :class:`relational_rnn.parallel.DataParallel` -- each step's gradient (one or more processes),
  or :class:`relational_rnn.mpi.MPIParallel` under ``mpiexec`` (then rank 0 alone evaluates,
  writes and reports; every rank takes the same steps).
* :class:`Reporter` -- metrics lines, log lines and the progress line.

Randomness: ``SeedSequence(seed)`` spawns two streams, one for the initial parameters and one for
the training data (the same data stream for every model of a run).  A checkpoint stores the data
generator's state, so resuming from it continues bit-exactly.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

import nth_farthest as nf
from relational_rnn.checkpoint import CheckpointError, save_checkpoint
from relational_rnn.config import RunConfig
from relational_rnn.curriculum import Curriculum, PhaseChange
from relational_rnn.evaluation import EVAL_BATCH, evaluate_with_average
from relational_rnn.optimization import (initial_lr, make_average, make_optimizer,
                                         make_schedule, resumed_optimizer)
from relational_rnn.parallel import DataParallel, check_workers
from relational_rnn.progress import Progress, StopRequest, fmt_float
from relational_rnn.registry import KINDS, build_model
from relational_rnn.run_folder import (CHECKPOINT_NAME, METRICS_NAME, MetricsLog, config_json,
                                       model_path, truncate_metrics)


def run_rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(parameter-init generator, training-data generator) of a run seed."""
    init_seq, data_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(init_seq), np.random.default_rng(data_seq)


@dataclass
class TrainWindow:
    """Training loss and accuracy since the last evaluation."""

    loss_sum: float = 0.0
    count: int = 0
    correct: int = 0
    seen: int = 0

    def add(self, loss: float, correct: int, seen: int) -> None:
        self.loss_sum += loss
        self.count += 1
        self.correct += correct
        self.seen += seen

    def means(self) -> dict:
        """``{"train_loss", "train_acc"}`` of the window (None when empty), then empty it."""
        means = {"train_loss": self.loss_sum / self.count if self.count else None,
                 "train_acc": self.correct / self.seen if self.seen else None}
        self.loss_sum, self.count, self.correct, self.seen = 0.0, 0, 0, 0
        return means

    def state_dict(self) -> dict:
        return {"loss_sum": self.loss_sum, "count": self.count, "correct": self.correct,
                "seen": self.seen}

    @classmethod
    def from_state(cls, state: Mapping | None) -> "TrainWindow":
        state = state or {}
        return cls(float(state.get("loss_sum", 0.0)), int(state.get("count", 0)),
                   int(state.get("correct", 0)), int(state.get("seen", 0)))


@dataclass
class TrainingState:
    """Everything a checkpoint holds of one model's training, and its clock."""

    kind: str
    cfg: RunConfig
    model: object
    optimizer: object
    average: object
    data_rng: np.random.Generator
    step: int
    wall0: float
    window: TrainWindow
    curriculum: Curriculum
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def fresh(cls, kind: str, cfg: RunConfig) -> "TrainingState":
        init_rng, data_rng = run_rngs(cfg.train.seed)
        t = cfg.train
        model = build_model(kind, cfg.sizes(kind), t.num_objects, t.num_features,
                            dtype=np.dtype(t.dtype), rng=init_rng)
        return cls(kind, cfg, model, make_optimizer(model, t, kind), make_average(model, t),
                   data_rng, 0, 0.0, TrainWindow(), Curriculum(cfg.phases))

    @classmethod
    def resumed(cls, kind: str, cfg: RunConfig, model, info: Mapping) -> "TrainingState":
        """From ``load_checkpoint(..., averaged=False)``'s ``(model, info)``."""
        if info.get("weights") == "averaged":
            raise CheckpointError("resuming needs the last training iterate: load the "
                                  "checkpoint with load_checkpoint(..., averaged=False)")
        t = cfg.train
        average = make_average(model, t)
        if average is not None:
            if not info.get("ema"):
                raise CheckpointError(f"{info.get('path')} holds no parameter average, but the "
                                      f"run keeps one (ema_decay {t.ema_decay})")
            average.load_state_dict(info["ema"])
        data_rng = np.random.Generator(np.random.PCG64())
        data_rng.bit_generator.state = info["data_rng_state"]
        step = int(info["step"])
        curriculum = Curriculum(cfg.phases, phase=int(info["phase_index"]) if step > 0 else None,
                                state=info.get("curriculum"))
        optimizer = resumed_optimizer(model, info, t, kind, full_task=curriculum.at_full_task)
        return cls(kind, cfg, model, optimizer, average, data_rng,
                   step, float(info.get("wall_time", 0.0)),
                   TrainWindow.from_state(info.get("train_window")), curriculum)

    def elapsed(self) -> float:
        """Seconds of this invocation."""
        return time.perf_counter() - self.started

    def wall(self) -> float:
        """Seconds of training over every invocation of the run."""
        return self.wall0 + self.elapsed()

    def save(self, path: str) -> None:
        save_checkpoint(path, kind=self.kind, model=self.model, optimizer=self.optimizer,
                        data_rng=self.data_rng, step=self.step, run_config=config_json(self.cfg),
                        average=self.average,
                        extra={"wall_time": self.wall(), "train_window": self.window.state_dict(),
                               "phase_index": self.curriculum.phase,
                               "curriculum": self.curriculum.state_dict()})


class Reporter:
    """Where a model's training reports: ``metrics.jsonl`` lines, log lines (``log``) and the
    progress line on ``stream``."""

    def __init__(self, kind: str, total: int, metrics: MetricsLog, *, log: Callable,
                 stream, progress: bool):
        self.kind, self.total, self.metrics, self.log = kind, total, metrics, log
        self.bar = Progress(stream, kind, total, enabled=progress)
        self.shown_loss = None
        self.last_eval: dict | None = None

    def say(self, message: str) -> None:
        self.bar.clear()
        self.log(message)

    def record(self, entry: Mapping) -> None:
        self.metrics.write(entry)

    def eval_line(self, entry: dict, num_phases: int) -> None:
        self.record(entry)
        self.last_eval = entry
        also = entry.get("last_iterate_acc")
        self.say(f"[{self.kind}] step {entry['step']}/{self.total}: held-out acc "
                 f"{entry['heldout_acc']:.3f}, held-out loss {fmt_float(entry['heldout_loss'])}, "
                 f"train loss {fmt_float(entry['train_loss'])} (phase {entry['phase'] + 1}/"
                 f"{num_phases}: {entry['active_objects']}x{entry['active_features']}, lr "
                 f"{entry['lr']:.3g})"
                 + ("" if entry["weights"] == "last" else
                    f"; averaged weights, last iterate {also:.3f}"))

    def step_done(self, step: int, loss: float, rate: float, left, *, force: bool) -> None:
        self.shown_loss = loss if self.shown_loss is None else 0.9 * self.shown_loss + 0.1 * loss
        acc = self.last_eval["heldout_acc"] if self.last_eval else None
        self.bar.update(step, loss=self.shown_loss, acc=acc, rate=rate, left=left, force=force)


class TrainingLoop:
    """The steps of one model from its state to a stop: see :meth:`run`."""

    def __init__(self, state: TrainingState, eval_set: nf.EvalSet | None, parallel: DataParallel,
                 report: Reporter, ckpt_path: str):
        self.s, self.eval_set, self.parallel, self.report = state, eval_set, parallel, report
        self.ckpt_path = ckpt_path
        # Under MPI only rank 0 evaluates, saves and reports; the others only train.
        self.workers, self.root = parallel.workers, parallel.root
        self.stop: StopRequest | None = None
        self.t = state.cfg.train
        # Held-out forward passes no larger than the training batch (memory), but not tiny.
        self.eval_batch = min(EVAL_BATCH, max(self.t.batch_size, 256))
        self.last_lr = state.optimizer.current_lr()
        self.start_step = state.step

    def run(self, stop: StopRequest | None) -> tuple[str, str]:
        """Train until the last step, the time budget, a stop request or a NaN: returns
        ``(status, message)``."""
        s, t = self.s, self.t
        self.stop = stop
        status, message = ("finished", "") if s.step >= t.steps else (None, "")
        if s.step == 0 and status is None:
            self.enter_phase()
            self.evaluate()
        while status is None:
            self.enter_phase()
            loss, failure = self.train_step()
            if failure is not None:
                return "nan", self.stop_on_failure(failure)
            status, message = self.stop_reason()
            if s.step % t.eval_every == 0 or status is not None:
                self.evaluate()
            if self.root and (s.step % t.checkpoint_every == 0 or status is not None):
                s.save(self.ckpt_path)
            self.show_progress(loss, status is not None)
        return status, message

    def enter_phase(self) -> None:
        change = self.s.curriculum.advance(self.s.step)
        if change is not None:
            self.announce(change)
            if self.s.curriculum.at_full_task:
                self.full_task_rate()

    def full_task_rate(self) -> None:
        """At the full task a model named in ``full_task_lr_by_model`` takes its own rate from
        here on: the schedule restarted from that rate, at the same step count."""
        s, t = self.s, self.t
        if s.kind not in (t.full_task_lr_by_model or {}):
            return
        s.optimizer.schedule = make_schedule(t, s.kind, full_task=True)
        self.last_lr = s.optimizer.current_lr()
        self.report.say(f"[{s.kind}] step {s.step}: the full task reached: learning rate "
                        f"{self.last_lr:.3g} from here (the schedule from "
                        f"{initial_lr(t, s.kind, full_task=True):g})")

    def announce(self, change: PhaseChange) -> None:
        self.report.record(change.metrics_line(self.s.wall()))
        text = self.s.curriculum.describe(change)
        if text is not None:
            self.report.say(f"[{self.s.kind}] {text}")

    def train_step(self) -> tuple[float, str | None]:
        """One Adam step on a fresh batch of the current phase's task: ``(loss, failure)``,
        failure a reason when the loss or the gradient is not finite (nothing is updated)."""
        s, t = self.s, self.t
        k, f = s.curriculum.task
        x, y, _ = nf.make_batch(s.data_rng, t.batch_size, t.num_objects, t.num_features,
                                active_objects=k, active_features=f, dtype=np.dtype(t.dtype))
        loss, correct = self.parallel.gradient(x, y, votes=self.stop_votes)
        if not math.isfinite(loss):
            return loss, f"the training loss is {loss}"
        try:
            info = s.optimizer.step()
        except FloatingPointError as exc:
            return loss, f"non-finite gradient ({exc})"
        s.step += 1
        if s.average is not None:
            s.average.update()
        self.last_lr = info["lr"]
        s.window.add(loss, correct, len(y))
        s.curriculum.observe(correct, len(y))
        return loss, None

    def stop_votes(self) -> tuple[bool, bool]:
        """This process's ``(out_of_time, interrupted)``.  The time budget is rank 0's alone
        to decide (one clock for the whole job); a Ctrl-C on any rank stops every rank."""
        t = self.t
        out_of_time = (self.root and t.time_budget is not None
                       and self.s.elapsed() >= t.time_budget)
        return out_of_time, self.stop is not None and self.stop.requested

    def stop_reason(self) -> tuple[str | None, str]:
        s, t, kind = self.s, self.t, self.s.kind
        if s.step >= t.steps:
            return "finished", ""
        out_of_time, interrupted = self.parallel.agreed_stop()
        if out_of_time:
            return "time_budget", (f"{kind}: time budget of {t.time_budget:g} s reached at step "
                                   f"{s.step}/{t.steps}; continue with --resume")
        if interrupted:
            return "interrupted", (f"{kind}: interrupted at step {s.step}/{t.steps}; continue "
                                   "with --resume")
        return None, ""

    def stop_on_failure(self, failure: str) -> str:
        """A non-finite loss or gradient: no checkpoint is written (the last one stays)."""
        bad_step = self.s.step + 1
        kept = (f"the last good checkpoint ({self.ckpt_path}) is kept"
                if os.path.exists(self.ckpt_path) else "no checkpoint had been written yet")
        message = (f"{self.s.kind}: training stopped at step {bad_step}: {failure}; {kept}. "
                   "A new run with a smaller --lr or a --clip-norm may avoid it.")
        if not self.root:
            return message
        self.report.record({"event": "stop", "reason": "nan", "step": bad_step,
                            "wall_time": self.s.wall(), "message": message})
        self.report.bar.clear()
        print(f"error: {message}", file=sys.stderr)
        return message

    def evaluate(self) -> None:
        s = self.s
        if not self.root:
            return
        result, also = evaluate_with_average(s.model, s.average, self.eval_set,
                                             self.t.num_objects, batch_size=self.eval_batch)
        k, f = s.curriculum.task
        entry = {"event": "eval", "step": s.step, "wall_time": s.wall(),
                 "phase": s.curriculum.phase, "active_objects": k, "active_features": f,
                 "lr": self.last_lr, **s.window.means(), **result,
                 "weights": "last" if s.average is None else "averaged", **also,
                 "workers": self.workers}
        self.report.eval_line(entry, len(s.curriculum.phases))

    def show_progress(self, loss: float, force: bool) -> None:
        s, t = self.s, self.t
        elapsed = s.elapsed()
        rate = (s.step - self.start_step) / max(elapsed, 1e-9)
        left = (t.steps - s.step) / rate if rate > 0 else None
        if t.time_budget is not None and left is not None:
            left = min(left, max(0.0, t.time_budget - elapsed))
        self.report.step_done(s.step, loss, rate, left, force=force)


class _NoMetrics:
    """The metrics log of a rank that writes nothing (MPI ranks other than 0)."""

    def write(self, entry: Mapping) -> None:
        pass


def _silent(message: str) -> None:
    pass


def _gradients(state: TrainingState, cfg: RunConfig, workers: int, cluster):
    """What computes each step's gradient: the MPI ranks, or ``workers`` local processes."""
    if cluster is not None:
        return cluster.data_parallel(state.model)
    t = cfg.train
    return DataParallel(state.model, state.kind, cfg.sizes(state.kind), t.num_objects,
                        t.num_features, workers=workers)


def train_model(kind: str, cfg: RunConfig, run_dir: str, eval_set: nf.EvalSet | None, *,
                resume_from=None, log=print, progress_stream=None, progress: bool = True,
                stop: StopRequest | None = None, workers: int = 1, cluster=None) -> dict:
    """Train the ``kind`` model of the run in ``run_dir`` according to its config ``cfg``.

    Writes ``run_dir/<kind>/metrics.jsonl`` (one JSON line per evaluation and per event) and
    ``run_dir/<kind>/checkpoint.npz`` (every ``checkpoint_every`` steps and when it stops).
    ``resume_from`` is ``load_checkpoint(..., averaged=False)``'s ``(model, info)`` to continue
    from; metrics lines past its step are dropped first.  ``workers`` processes compute each
    step's gradient, a shard of the batch each (1 = this process alone).  ``cluster`` (a
    :class:`relational_rnn.mpi.Cluster`, every rank calling with the same arguments) shares
    each batch over the MPI ranks instead; then rank 0 alone evaluates, writes and logs, and
    the other ranks may pass ``eval_set=None``.

    Stops at ``steps``, at ``time_budget`` seconds of this call, when ``stop`` is requested, or
    at a non-finite loss or gradient (then no checkpoint is written: the last one stays).
    Returns ``{"kind", "status", "step", "wall_time", "message", "last_eval"}`` with status
    ``finished``, ``time_budget``, ``interrupted`` or ``nan``.
    """
    t = cfg.train
    workers = check_workers(workers if cluster is None else cluster.size, t.batch_size)
    root = cluster is None or cluster.root
    metrics_path = model_path(run_dir, kind, METRICS_NAME)
    ckpt_path = model_path(run_dir, kind, CHECKPOINT_NAME)
    if root:
        os.makedirs(os.path.join(run_dir, kind), exist_ok=True)
    if resume_from is None:
        state = TrainingState.fresh(kind, cfg)
    else:
        state = TrainingState.resumed(kind, cfg, *resume_from)
        if root:
            truncate_metrics(metrics_path, state.step)
    stream = sys.stderr if progress_stream is None else progress_stream
    metrics_log = (MetricsLog(metrics_path, fresh=resume_from is None) if root
                   else nullcontext(_NoMetrics()))
    with metrics_log as metrics, _gradients(state, cfg, workers, cluster) as parallel:
        report = Reporter(kind, t.steps, metrics, log=log if root else _silent, stream=stream,
                          progress=progress and root)
        if resume_from is None:
            report.say(f"[{kind}] {KINDS[kind].title}: {state.model.num_parameters():,} "
                       f"parameters, {t.steps} steps of batch {t.batch_size}, Adam lr "
                       f"{initial_lr(t, kind):g} ({t.lr_schedule} decay)"
                       + (f", each batch shared by {workers} MPI ranks" if cluster else ""))
        else:
            report.record({"event": "resume", "step": state.step, "wall_time": state.wall0})
            report.say(f"[{kind}] resuming from step {state.step} ({ckpt_path})")
        loop = TrainingLoop(state, eval_set, parallel, report, ckpt_path)
        status, message = loop.run(stop)
        if status != "nan":
            report.record({"event": "stop", "reason": status, "step": state.step,
                           "wall_time": state.wall(), "message": message})
        report.bar.clear()
        if message and status != "nan":
            report.log(message)
    return {"kind": kind, "status": status, "step": state.step, "wall_time": state.wall(),
            "message": message, "last_eval": report.last_eval}
