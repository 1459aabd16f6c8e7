"""The curriculum: phases ``(objects, features, steps, gate)`` of easier tasks in the target
task's layout, and :class:`Curriculum`, which owns the current phase and its accuracy gate.

A phase written ``KxF:STEPS`` runs STEPS training steps; ``KxF:STEPS@ACC`` is *gated*: it ends as
soon as the training accuracy on its own task over a block of :data:`GATE_WINDOW` steps reaches
ACC, after STEPS steps at the latest.  The last phase runs to the end.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import layers
import nth_farthest as nf

# Training steps over which a gated phase measures its training accuracy (see parse_curriculum).
GATE_WINDOW = 250


def parse_curriculum(spec, num_objects: int, num_features: int) -> list[tuple]:
    """Parse a curriculum spec into phases ``(objects, features, steps, gate)``.

    ``"3x1:3000,3x4:6000,4x4"`` gives ``[(3, 1, 3000, None), (3, 4, 6000, None),
    (4, 4, None, None)]``.  Each phase is ``OBJECTSxFEATURES:STEPS`` (the number of training
    steps spent in it) or ``OBJECTSxFEATURES:STEPS@ACC``, a *gated* phase: it ends as soon as the
    training accuracy on its own task, measured over each block of :data:`GATE_WINDOW` steps,
    reaches ACC (a fraction in (0, 1]), and after STEPS steps at the latest.  Models leave the
    plateau of an easy phase after very different numbers of steps; a gate moves each model on
    when it has learnt the phase, with the same rule for all.  The last phase has no step count
    and runs to the end.  Objects lie in [2, num_objects] and features in [1, num_features]: the
    phases keep the layout of the target task (see ``make_batch``).  ``None`` or ``"none"``
    mean no curriculum: one phase, the full task (an empty string is refused).
    """
    K = nf._check_num_objects(num_objects)
    F = layers.check_positive_int("num_features", num_features)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "none"):
        return [(K, F, None, None)]
    if isinstance(spec, str) and not spec.strip():
        raise ValueError("the curriculum is empty: give phases such as '3x1:3000,4x4', or "
                         "'none' for no curriculum")
    if not isinstance(spec, str):
        raise ValueError(f"curriculum must be a string like '3x1:3000,3x4:6000,4x4', got {spec!r}")
    items = [s.strip() for s in spec.split(",")]
    phases = []
    for i, item in enumerate(items):
        last = i == len(items) - 1
        where = f"curriculum phase {i + 1} ({item!r})"
        size, sep, steps_text = item.partition(":")
        objects_text, x, features_text = size.strip().lower().partition("x")
        try:
            if not x:
                raise ValueError
            k, f = int(objects_text), int(features_text)
        except ValueError:
            raise ValueError(f"{where}: expected OBJECTSxFEATURES[:STEPS[@ACC]] such as "
                             f"'3x1:3000' or '3x1:8000@0.9', in '{spec}'") from None
        if not 2 <= k <= K:
            raise ValueError(f"{where}: objects must lie in [2, {K}] (num_objects), got {k}")
        if not 1 <= f <= F:
            raise ValueError(f"{where}: features must lie in [1, {F}] (num_features), got {f}")
        steps = gate = None
        if sep:
            steps_text, at, gate_text = steps_text.partition("@")
            try:
                steps = int(steps_text.strip())
            except ValueError:
                raise ValueError(f"{where}: the step count must be an integer >= 1, "
                                 f"got {steps_text.strip()!r}") from None
            if steps < 1:
                raise ValueError(f"{where}: the step count must be an integer >= 1, got {steps}")
            if at:
                try:
                    gate = float(gate_text.strip())
                except ValueError:
                    gate = math.nan
                if not 0 < gate <= 1:
                    raise ValueError(f"{where}: the accuracy gate after '@' must be a fraction "
                                     f"in (0, 1], got {gate_text.strip()!r}")
            if last:
                raise ValueError(f"{where}: the last phase runs to the end of training and takes "
                                 f"no step count (write '{k}x{f}')")
        elif not last:
            raise ValueError(f"{where}: every phase but the last needs a step count, "
                             f"e.g. '{k}x{f}:1000'")
        phases.append((k, f, steps, gate))
    return phases


def normalize_phases(phases: Sequence[Sequence]) -> list[tuple]:
    """Phases as 4-tuples ``(objects, features, steps, gate)``; run configs written before
    gates existed hold 3-element phases (no gate)."""
    return [tuple(p) + (None,) * (4 - len(p)) for p in phases]


def format_curriculum(phases: Sequence[Sequence]) -> str:
    """Inverse of :func:`parse_curriculum`."""
    return ",".join(f"{k}x{f}" + ("" if s is None else f":{s}") + ("" if g is None else f"@{g:g}")
                    for k, f, s, g in normalize_phases(phases))


def phase_starts(phases: Sequence[Sequence]) -> list[int]:
    """First training step of each phase when every phase runs its full step count (for a
    gated phase: the latest step at which the next phase can start)."""
    starts, at = [], 0
    for p in phases:
        starts.append(at)
        at += p[2] or 0
    return starts


def phase_at(phases: Sequence[Sequence], step: int) -> int:
    """Index of the phase that the update after ``step`` completed updates belongs to, when
    no gate ends a phase early (:func:`phase_starts`)."""
    index = 0
    for i, start in enumerate(phase_starts(phases)):
        if step >= start:
            index = i
    return index


@dataclass(frozen=True)
class PhaseChange:
    """The start of a curriculum phase: at ``step``, phase ``phase`` (objects x features, its
    step count and gate); ``reason`` why the previous one ended (``"steps"``, ``"accuracy"``, or
    None for the first phase of a run) and the previous phase's last gate accuracy."""

    step: int
    phase: int
    objects: int
    features: int
    steps: int | None
    gate: float | None
    reason: str | None
    previous_gate_acc: float | None

    def metrics_line(self, wall_time: float) -> dict:
        """The ``phase`` event of ``metrics.jsonl``."""
        return {"event": "phase", "step": self.step, "wall_time": wall_time,
                "phase": self.phase, "active_objects": self.objects,
                "active_features": self.features, "phase_steps": self.steps,
                "gate": self.gate, "reason": self.reason,
                "previous_gate_acc": self.previous_gate_acc}


class Curriculum:
    """The phase a run is in and its gate's accuracy window.

    ``advance(step)`` before each step moves on when the phase is over (its steps are done or
    its gate passed) and returns the :class:`PhaseChange`, else None; ``observe(correct, seen)``
    after each step feeds the gate.  ``state_dict()`` is what a checkpoint keeps.
    """

    def __init__(self, phases: Sequence[Sequence], *, phase: int | None = None,
                 state: Mapping | None = None):
        self.phases = normalize_phases(phases)
        self.phase = phase
        self.phase_start = None
        self.gate = {"steps": 0, "correct": 0, "seen": 0, "acc": None, "passed": False}
        if phase is not None:
            state = state or {}
            # Checkpoints written before gates existed hold no curriculum entry: their phases
            # began at fixed steps.
            self.phase_start = int(state.get("phase_start", phase_starts(self.phases)[phase]))
            self.gate.update(state.get("gate") or {})

    @property
    def task(self) -> tuple[int, int]:
        """(active objects, active features) of the current phase."""
        return self.phases[self.phase][:2]

    @property
    def at_full_task(self) -> bool:
        """Whether the current phase is the last, the full task."""
        return self.phase is not None and self.phase == len(self.phases) - 1

    def state_dict(self) -> dict:
        return {"phase_start": self.phase_start, "gate": dict(self.gate)}

    def advance(self, step: int) -> PhaseChange | None:
        """Enter the phase of ``step``: the first one of a run, or the next when the current
        one is over.  Returns the change, None if the phase stays."""
        reason = previous_acc = None
        if self.phase is None:
            self.phase = phase_at(self.phases, step)
            self.phase_start = phase_starts(self.phases)[self.phase]
        else:
            n_steps = self.phases[self.phase][2]
            if n_steps is None:
                return None
            if self.gate["passed"]:
                reason = "accuracy"
            elif step - self.phase_start >= n_steps:
                reason = "steps"
            else:
                return None
            previous_acc = self.gate["acc"]
            self.phase, self.phase_start = self.phase + 1, step
            self.gate.update(steps=0, correct=0, seen=0, acc=None, passed=False)
        return PhaseChange(step, self.phase, *self.phases[self.phase], reason, previous_acc)

    def observe(self, correct: int, seen: int) -> None:
        """Count one training step's ``correct`` answers out of ``seen`` toward the gate."""
        gate_acc = self.phases[self.phase][3]
        if gate_acc is None:
            return
        gate = self.gate
        gate["steps"] += 1
        gate["correct"] += correct
        gate["seen"] += seen
        if gate["steps"] == GATE_WINDOW:
            gate["acc"] = gate["correct"] / gate["seen"]
            gate["passed"] = gate["acc"] >= gate_acc
            gate.update(steps=0, correct=0, seen=0)

    def describe(self, change: PhaseChange) -> str | None:
        """The log line of a phase change (None without a curriculum)."""
        if len(self.phases) == 1:
            return None
        if change.steps is None:
            length = " until the end"
        elif change.gate is None:
            length = f" for {change.steps} steps"
        else:
            length = (f" until its training accuracy reaches {change.gate:g}, at most "
                      f"{change.steps} steps")
        why = ""
        if change.reason == "accuracy":
            why = (f" (the previous phase's training accuracy reached "
                   f"{change.previous_gate_acc:.3f} over {GATE_WINDOW} steps)")
        elif change.reason == "steps" and self.phases[change.phase - 1][3] is not None:
            # A gated phase that ends on its cap did not pass its gate: say so, or the log
            # reads as if the easier task had been learnt.
            _, _, cap, previous_gate = self.phases[change.phase - 1]
            last = "-" if change.previous_gate_acc is None else f"{change.previous_gate_acc:.3f}"
            why = (f" (the previous phase ran to its cap of {cap} steps below its gate"
                   f" {previous_gate:g}: last training accuracy {last} over {GATE_WINDOW} steps)")
        f = change.features
        return (f"step {change.step}: curriculum phase {change.phase + 1}/{len(self.phases)}: "
                f"{change.objects} objects x {f} feature{'s' if f > 1 else ''}{length}{why}")
