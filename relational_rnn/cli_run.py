"""From parsed options to a checked run: a new run, a resumed one, a branch, or an evaluation.

Every check happens here, before any file is written: bad values and bad run folders raise
:class:`UsageError` (the command line prints it and exits 2) and leave every folder untouched.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from optimizer import ExponentialMovingAverage
from relational_rnn.checkpoint import CheckpointError, load_checkpoint, relabel_checkpoint
from relational_rnn.config import (BRANCHABLE, BY_MODEL, DTYPES, EVALUATE_OPTIONS,
                                   LATER_DEFAULTS, LR_SCHEDULES, RATE_MAPS, RESUMABLE,
                                   SIZE_FIELDS, TRAIN_FIELDS, RunConfig, TrainSettings,
                                   option_name)
from relational_rnn.curriculum import Curriculum, format_curriculum, parse_curriculum
from relational_rnn.optimization import initial_lr, resumed_optimizer
from relational_rnn.presets import PRESETS
from relational_rnn.registry import MODEL_KINDS, SIZE_FIELDS_BY_KIND, build_model
from relational_rnn.run_folder import (CHECKPOINT_NAME, METRICS_NAME, RUN_CONFIG_NAME,
                                       NoRunError,
                                       RunFolderError, config_json, history_until, json_safe,
                                       model_path, read_metrics, read_run_config, run_files,
                                       torn_metrics_line, trained_past, write_metrics,
                                       write_run_config)
import nth_farthest as nf


class UsageError(ValueError):
    """A bad command-line argument or run folder: reported on stderr, exit status 2."""


@dataclass
class RunPlan:
    """A checked run: its config, folder, the models to train and, per model, the checkpoint
    ``(model, info)`` it continues from (resume and branch)."""

    cfg: RunConfig
    run_dir: str
    kinds: list[str]
    checkpoints: dict = field(default_factory=dict)
    branch_parent: str | None = None
    notices: list[str] = field(default_factory=list)   # printed once every check has passed


# -- the options that were given ----------------------------------------------------------

def given(args: argparse.Namespace, key: str) -> bool:
    return getattr(args, key, None) is not None


def cli_value(key: str, value):
    """CLI spellings of 'no value' -> None; widths as a tuple."""
    if value == "none" and key in ("clip_norm", "time_budget", "key_size", "gate_style",
                                   "ema_decay", *BY_MODEL):
        return None
    if key == "time_budget" and value == 0:
        return None
    if key == "mlp_hidden":
        return tuple(value)
    return value


def _overrides(args: argparse.Namespace, keys: Sequence[str]) -> dict:
    return {k: cli_value(k, getattr(args, k)) for k in keys if given(args, k)}


def _global_value_applies_to_all(args: argparse.Namespace,
                                 train: TrainSettings) -> TrainSettings:
    """--lr alone sets the rate of every model, a preset's (or parent run's) per-model rates
    included (those of the full task too), and --lr-decay-steps alone the schedule length of
    every model; the models named in a per-model option given beside it (--lr-by-model,
    --full-task-lr-by-model, --lr-decay-steps-by-model) keep their own."""
    for key, overridden in BY_MODEL.items():
        if given(args, overridden) and not given(args, key):
            train = train.replace(**{key: None})
    return train


def _check_by_model_kinds(args: argparse.Namespace, kinds: Sequence[str]) -> None:
    """A value given in a per-model option (--lr-by-model ...) for a model the run does not
    train would be stored and never used: refuse it."""
    for key in BY_MODEL:
        values = getattr(args, key, None)
        unused = [kind for kind in (values if isinstance(values, dict) else {})
                  if kind not in kinds]
        if unused:
            what = "a rate" if key in RATE_MAPS else "decay steps"
            raise UsageError(f"{option_name(key)} sets {what} for {', '.join(unused)}, which "
                             f"the run does not train (model(s) {','.join(kinds)})")


def _check_counts(t: TrainSettings) -> None:
    try:
        nf.task_width(t.num_objects, t.num_features)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for key in ("steps", "batch_size", "eval_size", "eval_every", "checkpoint_every",
                "lr_decay_steps"):
        value = getattr(t, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{option_name(key)} must be an integer >= 1, got {value!r}")
    by_model = t.lr_decay_steps_by_model
    if by_model is not None and (not isinstance(by_model, Mapping) or any(
            k not in MODEL_KINDS or isinstance(v, bool) or not isinstance(v, int) or v < 1
            for k, v in by_model.items())):
        raise UsageError(f"lr_decay_steps_by_model must map model kinds {MODEL_KINDS} to "
                         f"integers >= 1, got {by_model!r}")


def _check_rates(t: TrainSettings, models: Sequence[str]) -> None:
    if t.lr_schedule not in LR_SCHEDULES:
        raise UsageError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, "
                         f"got {t.lr_schedule!r}")
    if not 0 < t.lr_decay_rate <= 1:
        raise UsageError(f"--lr-decay-rate must lie in (0, 1], got {t.lr_decay_rate}")
    if t.ema_decay is not None and not 0 < t.ema_decay < 1:
        raise UsageError(f"--ema-decay must lie in (0, 1) or be none, got {t.ema_decay}")
    for key in RATE_MAPS:
        by_model = getattr(t, key)
        if by_model is not None and (not isinstance(by_model, Mapping) or any(
                k not in MODEL_KINDS or isinstance(v, bool) or not isinstance(v, (int, float))
                or not 0 < v < math.inf for k, v in by_model.items())):
            raise UsageError(f"{key} must map model kinds {MODEL_KINDS} to learning rates "
                             f"> 0, got {by_model!r}")
    for kind in models or MODEL_KINDS:
        lr = min(initial_lr(t, kind), initial_lr(t, kind, full_task=True))
        if t.min_lr > lr:
            raise UsageError(f"--min-lr ({t.min_lr}) must not exceed the {kind} model's "
                             f"initial --lr ({lr})")


def check_train(t: TrainSettings, models: Sequence[str]) -> tuple[TrainSettings, tuple]:
    """Cross-checks of the training settings (single values are checked by the parser).
    Returns the settings with the curriculum in its normal spelling, and the phases."""
    _check_counts(t)
    _check_rates(t, models)
    if t.dtype not in DTYPES:
        raise UsageError(f"--dtype must be float32 or float64, got {t.dtype!r}")
    try:
        phases = parse_curriculum(t.curriculum, t.num_objects, t.num_features)
    except ValueError as exc:
        raise UsageError(f"--curriculum: {exc}") from None
    whole = len(phases) == 1 and phases[0][:2] == (t.num_objects, t.num_features)
    return (t.replace(curriculum=None if whole else format_curriculum(phases)),
            tuple(tuple(p) for p in phases))


# -- run folders ------------------------------------------------------------------------------

def check_new_out(out: str) -> None:
    """Refuse an --out that is a file or already holds a run (nothing is ever overwritten)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a folder")
    if os.path.isdir(out):
        found = run_files(out)
        if found:
            raise UsageError(f"--out {out} already holds a run ({', '.join(found[:3])}); "
                             f"continue it with --resume {out}, or choose another --out")


_OPTION_VERBS = {"--resume": "resume", "--branch-from": "branch from",
                 "--evaluate": "evaluate"}


def _read_run_config(run_dir: str, option: str) -> RunConfig:
    try:
        return read_run_config(run_dir)
    except NoRunError as exc:
        raise UsageError(f"{option} {run_dir}: {exc}, so no run to {_OPTION_VERBS[option]}") \
            from None
    except RunFolderError as exc:
        raise UsageError(f"{option} {run_dir}: {exc}") from None


def _run_kinds(args: argparse.Namespace, cfg: RunConfig, run_dir: str) -> list[str]:
    """The models of the run that ``--model`` selects (default: all of them)."""
    kinds = args.model or list(cfg.models)
    foreign = [k for k in kinds if k not in cfg.models]
    if foreign:
        raise UsageError(f"--model {','.join(foreign)} is not part of the run in {run_dir} "
                         f"(models: {','.join(cfg.models)})")
    return kinds


def _load_run_checkpoint(run_dir: str, kind: str, cfg: RunConfig, option: str,
                         may_differ: Sequence[str]):
    """``load_checkpoint(..., averaged=False)`` of the ``kind`` model of the run in ``run_dir``,
    checked against the run config ``cfg`` (settings outside ``may_differ``, model sizes,
    shapes, dtype, steps); None if that model was never checkpointed."""
    ckpt = model_path(run_dir, kind, CHECKPOINT_NAME)
    if not os.path.exists(ckpt):
        return None
    try:
        model, info = load_checkpoint(ckpt, expect_kind=kind, averaged=False)
    except CheckpointError as exc:
        raise UsageError(f"{option} {run_dir}: {exc}") from None
    if info.get("weights_only") and option != "--evaluate":
        raise UsageError(f"{option} {run_dir}: {ckpt} holds exported weights only (no optimizer "
                         "state or data stream): it evaluates and loads, but cannot be continued")
    theirs, mine = info.get("run_config") or {}, json_safe(config_json(cfg))
    mismatch = [k for k in TRAIN_FIELDS if k not in may_differ
                and theirs.get(k, LATER_DEFAULTS.get(k)) != mine.get(k, LATER_DEFAULTS.get(k))]
    if (theirs.get("model_sizes") or {}).get(kind) != mine["model_sizes"].get(kind):
        mismatch.append("model_sizes")
    if mismatch:
        raise UsageError(f"{option} {run_dir}: {ckpt} belongs to another run (it differs "
                         f"in {', '.join(mismatch)})")
    t = cfg.train
    expected = build_model(kind, cfg.sizes(kind), t.num_objects, t.num_features,
                           dtype=t.dtype).config
    # The loaded model's config, not the stored one: a checkpoint written before an option
    # existed lacks its key, and the model takes the option's default.
    if json_safe(expected) != json_safe(model.config) or info["dtype"] != t.dtype:
        raise UsageError(f"{option} {run_dir}: {ckpt} holds a model of another shape or "
                         "dtype than the run config")
    if info["step"] > t.steps:
        raise UsageError(f"{option} {run_dir}: {kind} is already at step {info['step']}, "
                         f"beyond --steps {t.steps}")
    return model, info


def _check_history(run_dir: str, kind: str, cfg: RunConfig, option: str,
                   checkpointed: bool) -> list[str]:
    """Check the metrics history of the ``kind`` model against its checkpoint (present or not):
    refuse a damaged history, a lost checkpoint, an unfinished branch; return notices for what
    the continuation will do (drop a torn last line, start a never-checkpointed model again)."""
    path = model_path(run_dir, kind, METRICS_NAME)
    if not os.path.exists(path):
        return []
    try:
        lines, torn = read_metrics(path), torn_metrics_line(path)
    except RunFolderError as exc:
        raise UsageError(f"{option} {run_dir}: {exc}; nothing was changed") from None
    notices = []
    if torn is not None:
        notices.append(f"[{kind}] the torn last line of {path} (what a crash leaves mid-write, "
                       f"past the last checkpoint) is left out: {torn[:40]!r}")
    if checkpointed:
        return notices
    ckpt = model_path(run_dir, kind, CHECKPOINT_NAME)
    if cfg.branched_from is not None and kind in cfg.branched_from.get("steps", {}):
        raise UsageError(f"{option} {run_dir}: {ckpt} is missing, so this branch was never "
                         f"completed; make it again with --branch-from "
                         f"{cfg.branched_from['run']} into a new --out")
    # A checkpoint is written every checkpoint_every steps and at every stop but a NaN one: a
    # history that reaches past that had one, which is now lost.
    saved = [e for e in lines if e.get("event") == "stop" and e.get("reason") != "nan"]
    last = trained_past(lines)
    if saved or last >= cfg.train.checkpoint_every:
        raise UsageError(f"{option} {run_dir}: {ckpt} is missing, but {path} records training "
                         f"up to step {last}; restore the checkpoint (nothing was changed), or "
                         f"start a new run with --out")
    if lines:
        notices.append(f"[{kind}] no checkpoint was written before the run stopped: it starts "
                       f"again from step 0 (its history up to step {last} is replaced)")
    return notices


def _refuse(args: argparse.Namespace, allowed: Sequence[str], what: str, extra=()) -> None:
    """Refuse the task, size and preset options outside ``allowed`` (``what`` says why)."""
    changed = [option_name(k) for k in (*TRAIN_FIELDS, *SIZE_FIELDS, *extra)
               if k not in allowed and given(args, k)]
    if changed:
        raise UsageError(what.format(", ".join(changed)))


# -- the four kinds of invocation -------------------------------------------------------------

def resolve_new(args: argparse.Namespace) -> RunPlan:
    preset_name = args.preset or "quick"
    preset = PRESETS[preset_name]
    kinds = args.model or list(preset.default_models)
    _check_by_model_kinds(args, kinds)
    train = _global_value_applies_to_all(
        args, preset.train.replace(**_overrides(args, TRAIN_FIELDS)))
    train, phases = check_train(train, kinds)
    for key in SIZE_FIELDS:
        if given(args, key) and not any(key in SIZE_FIELDS_BY_KIND[k] for k in kinds):
            users = [k for k in MODEL_KINDS if key in SIZE_FIELDS_BY_KIND[k]]
            raise UsageError(f"{option_name(key)} applies to {'/'.join(users)}, not to the "
                             f"selected model(s) {','.join(kinds)}")
    sizes = {}
    for kind in kinds:
        s = replace(preset.models[kind], **_overrides(args, SIZE_FIELDS_BY_KIND[kind]))
        try:
            build_model(kind, s, train.num_objects, train.num_features, dtype=train.dtype)
        except (TypeError, ValueError) as exc:
            shown = {k: getattr(s, k) for k in SIZE_FIELDS_BY_KIND[kind]}
            raise UsageError(f"cannot build the {kind} model with {shown}: {exc}") from None
        sizes[kind] = s
    out = args.out or os.path.join("runs", preset_name)
    check_new_out(out)
    cfg = RunConfig(preset=preset_name, models=tuple(kinds), train=train, phases=phases,
                    model_sizes=sizes)
    return RunPlan(cfg, out, kinds)


def resolve_resume(args: argparse.Namespace) -> RunPlan:
    run_dir = args.resume
    _refuse(args, RESUMABLE, "--resume continues a run with its own settings; it cannot be "
            "combined with {} (only --steps, --time-budget, --eval-every, --checkpoint-every, "
            "--model, --threads, --workers, --no-progress, --no-plots)", ("preset", "out"))
    cfg = _read_run_config(run_dir, "--resume")
    train, phases = check_train(cfg.train.replace(**_overrides(args, RESUMABLE)), cfg.models)
    cfg = cfg.replace(train=train, phases=phases)
    kinds = _run_kinds(args, cfg, run_dir)
    checkpoints, notices = {}, []
    for kind in kinds:
        found = _load_run_checkpoint(run_dir, kind, cfg, "--resume", RESUMABLE)
        notices += _check_history(run_dir, kind, cfg, "--resume", found is not None)
        if found is not None:                 # else never checkpointed: starts afresh
            checkpoints[kind] = found
    return RunPlan(cfg, run_dir, kinds, checkpoints, notices=notices)


def resolve_branch(args: argparse.Namespace) -> RunPlan:
    """A new run in --out that starts where the run in --branch-from stands (its checkpoints:
    weights, Adam moments and step count, weight average, data stream, curriculum position,
    wall time) and goes on with other optimisation settings."""
    parent = args.branch_from
    _refuse(args, BRANCHABLE, "--branch-from keeps the task, model and data of its run; it "
            "cannot be combined with {} (only "
            f"{', '.join(option_name(k) for k in BRANCHABLE)}, --model, --out and the run-time "
            "flags)", ("preset",))
    if args.out is None:
        raise UsageError("--branch-from needs --out, the new run folder")
    cfg = _read_run_config(parent, "--branch-from")
    before = cfg.train
    train = _global_value_applies_to_all(args, before.replace(**_overrides(args, BRANCHABLE)))
    train, phases = check_train(train, cfg.models)
    cfg = cfg.replace(train=train, phases=phases)
    kinds = _run_kinds(args, cfg, parent)
    _check_by_model_kinds(args, kinds)
    checkpoints, notices = {}, []
    for kind in kinds:
        found = _load_run_checkpoint(parent, kind, cfg, "--branch-from", BRANCHABLE)
        if found is None:
            raise UsageError(f"--branch-from {parent}: the {kind} model has no checkpoint "
                             f"there to branch from")
        notices += _check_history(parent, kind, cfg, "--branch-from", True)
        checkpoints[kind] = found
    check_new_out(args.out)
    old, new = before.to_json(), train.to_json()
    cfg = cfg.replace(models=tuple(kinds), branched_from={
        "run": os.path.abspath(parent),
        "steps": {kind: int(info["step"]) for kind, (_, info) in checkpoints.items()},
        "changed": {k: [old.get(k), new.get(k)] for k in BRANCHABLE
                    if k not in RESUMABLE and old.get(k) != new.get(k)}})
    return RunPlan(cfg, args.out, kinds, checkpoints, branch_parent=parent, notices=notices)


def partial_folder(out: str) -> str:
    """Where a branch into ``out`` is made before it is renamed into place."""
    out = os.path.abspath(out)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.partial")


def make_branch(plan: RunPlan) -> None:
    """Make the branch's folder complete in :func:`partial_folder`, then rename it to
    ``plan.run_dir``: a kill on the way leaves no half-made run there (a later attempt
    replaces the partial folder)."""
    partial = partial_folder(plan.run_dir)
    if os.path.isdir(partial):
        shutil.rmtree(partial)
    os.makedirs(partial)
    write_run_config(partial, plan.cfg)
    _write_branch_files(plan, partial)
    if not os.path.isdir(plan.run_dir):
        os.rename(partial, plan.run_dir)
        return
    # --out exists (holding no run): move the entries in, the run config last
    for name in sorted(os.listdir(partial), key=lambda n: n == RUN_CONFIG_NAME):
        os.replace(os.path.join(partial, name), os.path.join(plan.run_dir, name))
    os.rmdir(partial)


def _write_branch_files(plan: RunPlan, folder: str) -> None:
    """Per model of a branch: the parent's metrics up to the branch step followed by a
    ``branch`` event, and the parent's checkpoint re-labelled with this run's config (so
    ``--resume`` of the branch starts from it even before its first save)."""
    cfg = plan.cfg
    for kind, (model, info) in plan.checkpoints.items():
        step = int(info["step"])
        os.makedirs(os.path.join(folder, kind), exist_ok=True)
        parent_metrics = os.path.join(os.path.dirname(info["path"]), METRICS_NAME)
        branch = {"event": "branch", "step": step, "wall_time": info.get("wall_time", 0.0),
                  "from": cfg.branched_from["run"], "changed": cfg.branched_from["changed"]}
        write_metrics(model_path(folder, kind, METRICS_NAME),
                      [*history_until(parent_metrics, step), branch])
        # The optimizer entry as the branch's own first save would write it (its rate,
        # schedule and clipping; the moments stay in the arrays).
        curriculum = Curriculum(cfg.phases, phase=int(info["phase_index"]) if step else None)
        optimizer = resumed_optimizer(model, info, cfg.train, kind,
                                      full_task=curriculum.at_full_task).state_dict()
        relabel_checkpoint(info["path"], model_path(folder, kind, CHECKPOINT_NAME),
                           run_config=config_json(cfg), optimizer=optimizer)


@dataclass
class EvaluationPlan:
    """--evaluate: the run, per model ``(last iterate, info, weight average or None)``, and
    the held-out set's size and seed."""

    cfg: RunConfig
    run_dir: str
    checkpoints: dict
    size: int
    seed: int


def resolve_evaluate(args: argparse.Namespace) -> EvaluationPlan:
    """The run in --evaluate and its checkpoints (default held-out set: the run's own)."""
    run_dir = args.evaluate
    extra = ["--workers"] if args.workers != 1 else []
    changed = [option_name(k) for k in (*TRAIN_FIELDS, *SIZE_FIELDS, "preset", "out")
               if k not in EVALUATE_OPTIONS and given(args, k)] + extra
    if changed:
        raise UsageError(f"--evaluate only reads the run in its folder; it cannot be combined "
                         f"with {', '.join(changed)} (only --eval-size, --eval-seed, --model, "
                         "--threads)")
    cfg = _read_run_config(run_dir, "--evaluate")
    checkpoints = {}
    for kind in _run_kinds(args, cfg, run_dir):
        # checked against the run like --resume's checkpoints; only the settings may differ
        found = _load_run_checkpoint(run_dir, kind, cfg, "--evaluate", TRAIN_FIELDS)
        if found is None:
            continue
        model, info = found
        average = None
        if info.get("ema"):
            average = ExponentialMovingAverage(model, info["ema"]["decay"])
            try:
                average.load_state_dict(info["ema"])
            except (TypeError, ValueError) as exc:
                raise UsageError(f"--evaluate {run_dir}: the weight average in {info['path']} "
                                 f"is unusable: {exc}") from None
        checkpoints[kind] = (model, info, average)
    if not checkpoints:
        raise UsageError(f"--evaluate {run_dir}: no checkpoint of "
                         f"{', '.join(_run_kinds(args, cfg, run_dir))} there yet")
    t = cfg.train
    return EvaluationPlan(cfg, run_dir, checkpoints,
                          t.eval_size if args.eval_size is None else args.eval_size,
                          t.eval_seed if args.eval_seed is None else args.eval_seed)
