"""The typed configuration of a run: model sizes, training settings, and the run as a whole.

``run_config.json`` of a run folder is :meth:`RunConfig.to_json`; its content and key order are
those that runs have always had, so folders written by earlier versions read back unchanged
(settings added later take the value that reproduces those runs, :data:`LATER_DEFAULTS`).

What ``--resume`` and ``--branch-from`` may change is declared once, on the fields of
:class:`TrainSettings` (``metadata={"resume": True}`` / ``{"branch": True}``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

LR_SCHEDULES = ("exponential", "linear")
DTYPES = ("float32", "float64")


def _resumable(**more):
    """A setting that ``--resume`` (and so ``--branch-from``) may change: none of them changes
    the training trajectory."""
    return field(metadata={"resume": True, "branch": True, **more})


def _branchable(**more):
    """A setting that ``--branch-from`` may change: the optimisation from the branch step on.
    The task, the model, the data stream, the held-out set and the weight average stay."""
    return field(metadata={"branch": True, **more})


@dataclass(frozen=True)
class ModelSizes:
    """The sizes of one model in the command line's vocabulary (``--mem-slots`` ...).

    A kind uses some of them (:attr:`relational_rnn.registry.ModelKind.size_fields`); the others
    stay None.  ``key_size`` None means the head size, ``gate_style`` None no gates.
    ``memory_input`` and ``memory_readout`` are the RelationalRNN's options (None: its defaults,
    ``"hidden"`` and ``"mean"``).
    """

    mem_slots: int | None = None
    head_size: int | None = None
    num_heads: int | None = None
    num_blocks: int | None = None
    key_size: int | None = None
    attention_mlp_layers: int | None = None
    gate_style: str | None = None
    hidden_size: int | None = None
    mlp_hidden: tuple[int, ...] = ()
    memory_input: str | None = None
    memory_readout: str | None = None

    def to_json(self, names: Sequence[str]) -> dict:
        """The sizes ``names`` (one kind's) as the JSON object of ``run_config.json``; the
        options added later (:data:`LATER_SIZE_FIELDS`) only when set, so that the run folders
        written before them still describe the same models."""
        return {n: list(v) if n == "mlp_hidden" else v
                for n in names for v in [getattr(self, n)]
                if not (v is None and n in LATER_SIZE_FIELDS)}

    @classmethod
    def from_json(cls, value: Mapping) -> "ModelSizes":
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown model sizes {unknown}")
        value = dict(value)
        if "mlp_hidden" in value:
            value["mlp_hidden"] = tuple(value["mlp_hidden"] or ())
        return cls(**value)


SIZE_FIELDS = tuple(f.name for f in fields(ModelSizes))
LATER_SIZE_FIELDS = ("memory_input", "memory_readout")


@dataclass(frozen=True)
class TrainSettings:
    """The task and optimisation settings of a run (every field an option of the same name)."""

    num_objects: int
    num_features: int
    curriculum: str | None
    steps: int = _resumable()
    batch_size: int = _branchable()
    lr: float = _branchable()
    lr_by_model: Mapping[str, float] | None = _branchable()
    lr_schedule: str = _branchable()
    lr_decay_rate: float = _branchable()
    lr_decay_steps: int = _branchable()
    min_lr: float = _branchable()
    clip_norm: float | None = _branchable()
    eval_size: int = field(metadata={"evaluate": True})
    eval_seed: int = field(metadata={"evaluate": True})
    eval_every: int = _resumable()
    checkpoint_every: int = _resumable()
    seed: int
    dtype: str
    time_budget: float | None = _resumable()
    ema_decay: float | None
    # Per-model rates from the step the curriculum reaches the full task (its last phase) on:
    # the schedule's line restarted from that rate, at the same step count.
    full_task_lr_by_model: Mapping[str, float] | None = field(default=None,
                                                              metadata={"branch": True})
    # Per-model decay steps (a model's own schedule length); the others use lr_decay_steps.
    lr_decay_steps_by_model: Mapping[str, int] | None = field(default=None,
                                                              metadata={"branch": True})

    def replace(self, **changes) -> "TrainSettings":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        """The settings as ``run_config.json`` holds them; the settings added last
        (:data:`WRITTEN_WHEN_SET`) only when set, so that the run folders written before them
        write back the same JSON."""
        return {n: (dict(v) if isinstance(v, Mapping) else v)
                for n in TRAIN_FIELDS for v in [getattr(self, n)]
                if not (v is None and n in WRITTEN_WHEN_SET)}

    @classmethod
    def from_json(cls, value: Mapping) -> "TrainSettings":
        value = {**LATER_DEFAULTS, **value}
        missing = [n for n in TRAIN_FIELDS if n not in value]
        if missing:
            raise ValueError(f"missing entries {missing}")
        return cls(**{n: value[n] for n in TRAIN_FIELDS})


TRAIN_FIELDS = tuple(f.name for f in fields(TrainSettings))
# The settings that --resume may change, and those that --branch-from may change.
RESUMABLE = tuple(f.name for f in fields(TrainSettings) if f.metadata.get("resume"))
BRANCHABLE = tuple(f.name for f in fields(TrainSettings) if f.metadata.get("branch"))
# What --evaluate takes from the command line: another held-out set.
EVALUATE_OPTIONS = tuple(f.name for f in fields(TrainSettings) if f.metadata.get("evaluate"))
# Settings run_config.json holds only when set (added after the run folders of the tests' data).
WRITTEN_WHEN_SET = ("full_task_lr_by_model", "lr_decay_steps_by_model")
# The per-model rate settings (kind -> initial learning rate).
RATE_MAPS = ("lr_by_model", "full_task_lr_by_model")
# Every per-model setting (kind -> value), with the setting it overrides for the kinds it names:
# that setting given alone on the command line applies to every model (the map is dropped).
BY_MODEL = {"lr_by_model": "lr", "full_task_lr_by_model": "lr",
            "lr_decay_steps_by_model": "lr_decay_steps"}
# Settings added after runs were first written, with the value that reproduces those runs.
LATER_DEFAULTS = {"ema_decay": None, "lr_schedule": "exponential", "lr_by_model": None,
                  "full_task_lr_by_model": None, "lr_decay_steps_by_model": None}


@dataclass(frozen=True)
class RunConfig:
    """A run: its preset, models, settings, curriculum phases, model sizes, the command lines
    that made it and, for a branch, where it branched from.

    ``phases`` are ``(objects, features, steps, gate)`` (see :mod:`relational_rnn.curriculum`);
    ``model_sizes`` maps each model kind of the run to its :class:`ModelSizes`.
    """

    preset: str
    models: tuple[str, ...]
    train: TrainSettings
    phases: tuple[tuple, ...]
    model_sizes: Mapping[str, ModelSizes]
    commands: tuple[str, ...] = ()
    branched_from: Mapping | None = None

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def sizes(self, kind: str) -> ModelSizes:
        return self.model_sizes[kind]

    def to_json(self, size_fields: Mapping[str, Sequence[str]]) -> dict:
        """The ``run_config.json`` object; ``size_fields`` names the sizes each kind uses."""
        value = {"preset": self.preset, "models": list(self.models), **self.train.to_json(),
                 "phases": [list(p) for p in self.phases],
                 "model_sizes": {k: s.to_json(size_fields[k])
                                 for k, s in self.model_sizes.items()},
                 "commands": list(self.commands)}
        if self.branched_from is not None:
            value["branched_from"] = dict(self.branched_from)
        return value

    @classmethod
    def from_json(cls, value: Mapping) -> "RunConfig":
        """Read a ``run_config.json`` object; ValueError naming what is missing or wrong."""
        if not isinstance(value, Mapping):
            raise ValueError("not a JSON object")
        missing = [k for k in ("models", "model_sizes", "phases") if k not in value]
        if missing:
            raise ValueError(f"missing entries {missing}")
        try:
            return cls(preset=value.get("preset"), models=tuple(value["models"]),
                       train=TrainSettings.from_json(value),
                       phases=tuple(tuple(p) for p in value["phases"]),
                       model_sizes={k: ModelSizes.from_json(s)
                                    for k, s in value["model_sizes"].items()},
                       commands=tuple(value.get("commands") or ()),
                       branched_from=value.get("branched_from"))
        except (TypeError, AttributeError) as exc:
            raise ValueError(str(exc)) from None


def option_name(name: str) -> str:
    """The command-line option of a setting: ``lr_decay_steps`` -> ``--lr-decay-steps``."""
    return "--" + name.replace("_", "-")
