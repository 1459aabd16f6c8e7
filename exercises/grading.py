"""The grading machinery shared by the five exercises.

Each exercise file declares its checks as a list of :class:`Part` (a name, a check function, a
limit and a hint) and makes its ``grade`` function with :func:`grader`, which runs
:func:`grade_parts` on the module to grade: the exercise itself, the matching module of
``exercises/solutions/``, or (in ``tests/test_exercises.py``) a copy of a solution with a bug
planted in it.  Every part reports one :class:`Result`; :func:`main` is the command line of every
exercise (``--solution`` grades the solution instead), and :func:`run` its
``if __name__ == "__main__":`` block.

A check function receives the module and a :class:`Measure`, and measures errors through it:

* ``measure.close(label, got, expected)``: the relative error of an array against the library's
  answer (``autograd_checks.relative_error``), after checking its shape and finiteness;
* ``measure.gradients(case, forward, backward, inputs)``: every gradient against central finite
  differences, through ``autograd_checks.check_gradients`` (the library's one checker);
* ``measure.require(condition, message)``: a structural condition (a shape, a dtype, a bound).

The part's error is the worst one measured; it passes when that is within the part's limit and
no requirement failed.  A function that still raises ``NotImplementedError`` is named as the
thing to write next.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                  # the library's modules live at the checkout root
    sys.path.insert(0, str(ROOT))

from autograd_checks import (LAYER_TOL, SEQUENCE_TOL, check_gradients,  # noqa: E402
                             relative_error)

FORWARD_TOL = 1e-9       # float64 forward passes against the library: the same sums, reordered
__all__ = ["FORWARD_TOL", "LAYER_TOL", "SEQUENCE_TOL", "Mismatch", "Measure", "Part", "Result",
           "grade_parts", "grader", "main", "randomise", "report", "run"]


class Mismatch(Exception):
    """A check that fails before any number can be compared (shape, dtype, NaN, a bound)."""


@dataclass
class Result:
    """The outcome of one part."""

    part: str
    passed: bool
    error: float                  # the worst error measured (inf when a requirement failed)
    limit: float
    where: str = ""               # what the worst error (or the failure) was measured on
    hint: str = ""                # printed on failure
    todo: str | None = None       # a function that still raises NotImplementedError

    def line(self) -> str:
        """One line: PASS/FAIL, the part, the worst error and its limit."""
        status = "PASS" if self.passed else "FAIL"
        if self.todo is not None:
            return f"{status}  {self.part:<62s} {self.where}"
        head = f"{status}  {self.part:<62s} worst {self.error:8.1e} (limit {self.limit:.0e})"
        return head if self.passed else f"{head}  {self.where}"


class Measure:
    """Collects the errors of one part and remembers the worst."""

    def __init__(self):
        self.worst = 0.0
        self.where = ""

    def error(self, label: str, err: float) -> None:
        """Record one error (NaN counts as infinite)."""
        err = float("inf") if not np.isfinite(err) else float(err)
        if err > self.worst or not self.where:
            self.worst, self.where = err, label

    def require(self, condition, message: str) -> None:
        """Fail the part with ``message`` unless ``condition`` holds."""
        if not condition:
            raise Mismatch(message)

    def close(self, label: str, got, expected) -> float:
        """Relative error of ``got`` against the reference ``expected`` (same shape, finite)."""
        self.require(isinstance(got, np.ndarray), f"{label} must be a numpy array, "
                                                  f"got {type(got).__name__}")
        expected = np.asarray(expected)
        self.require(got.shape == expected.shape,
                     f"{label} has shape {got.shape}, expected {expected.shape}")
        self.require(np.isfinite(got).all(), f"{label} holds NaN or Inf")
        err = relative_error(np.asarray(got, np.float64), expected.astype(np.float64))
        self.error(label, err)
        return err

    def gradients(self, case: str, forward: Callable, backward: Callable, inputs: dict,
                  threshold: float = LAYER_TOL) -> None:
        """Every gradient returned by ``backward`` against central finite differences.

        ``forward(inputs) -> (outs, cache)`` and ``backward(douts, cache) -> {name: grad}``, as
        ``autograd_checks.check_gradients`` wants them; a missing gradient or one of the wrong
        shape fails the part with a message naming it.
        """
        # fresh contiguous copies: the checker perturbs each array through a flat view of it
        inputs = {name: np.array(x, dtype=np.float64) if isinstance(x, np.ndarray)
                  and x.dtype.kind == "f" else x for name, x in inputs.items()}

        def checked_backward(douts, cache):
            grads = backward(douts, cache)
            for name, x in inputs.items():
                if not (isinstance(x, np.ndarray) and x.dtype.kind == "f"):
                    continue
                self.require(grads.get(name) is not None,
                             f"{case}: the backward returned no gradient for {name}")
                shape = np.shape(grads[name])
                self.require(shape == x.shape,
                             f"{case}: d{name} has shape {shape}, expected {x.shape}")
            return grads

        for r in check_gradients(case, forward, checked_backward, inputs, threshold=threshold):
            self.error(f"{case}: d{r.tensor}", r.error)


@dataclass
class Part:
    """One graded part: ``check(module, measure)`` measures; ``limit`` bounds the worst error."""

    name: str
    check: Callable[[ModuleType, Measure], None]
    limit: float
    hint: str


def _raised_at(exc: BaseException) -> traceback.FrameSummary:
    """Where an exception was raised: the innermost frame in an exercise or solution file
    (the line to look at), or the innermost frame of all when none is."""
    frames = traceback.extract_tb(exc.__traceback__)
    here = Path(__file__).resolve()
    ours = [f for f in frames if Path(f.filename).resolve().parent in (here.parent,
                                                                          here.parent / "solutions")
            and Path(f.filename).resolve() != here]
    return (ours or frames)[-1]


def run_part(part: Part, module: ModuleType) -> Result:
    """Run one part on ``module``; every exception becomes a failed result, never a crash."""
    measure = Measure()
    try:
        with np.errstate(all="ignore"):
            part.check(module, measure)
    except NotImplementedError as exc:
        frame = _raised_at(exc)
        return Result(part.name, False, float("inf"), part.limit,
                      f"NotImplementedError: write {frame.name}() "
                      f"({Path(frame.filename).name}:{frame.lineno})",
                      todo=f"{frame.name}() in {Path(frame.filename).name}")
    except Mismatch as exc:
        return Result(part.name, False, float("inf"), part.limit, str(exc), part.hint)
    except Exception as exc:                                    # the student's code crashed
        frame = _raised_at(exc)
        message = str(exc).splitlines()[0] if str(exc) else ""
        message = message if len(message) <= 100 else message[:97] + "..."
        return Result(part.name, False, float("inf"), part.limit,
                      f"{type(exc).__name__}: {message} (in {frame.name}(), "
                      f"{Path(frame.filename).name}:{frame.lineno})", part.hint)
    passed = measure.worst <= part.limit
    return Result(part.name, passed, measure.worst, part.limit,
                  "" if passed else f"[{measure.where}]", part.hint)


def grade_parts(parts: list[Part], module: ModuleType, only: str | None = None) -> list[Result]:
    """Grade every part on ``module`` (each independently), in order; with ``only``, just the
    parts whose name contains that text (a function's name, say)."""
    return [run_part(part, module) for part in parts if only is None or only in part.name]


def grader(parts: list[Part]) -> Callable[..., list[Result]]:
    """The ``grade(module, only=None)`` function of an exercise whose checks are ``parts``."""
    def grade(module: ModuleType, only: str | None = None) -> list[Result]:
        """Grade the functions of ``module`` (the exercise, its solution, or a modified copy);
        with ``only``, just the parts whose name contains that text."""
        return grade_parts(parts, module, only)
    return grade


def report(results: list[Result], seconds: float, out=sys.stdout) -> None:
    """Print one line per part (and a hint under each failure), then the verdict."""
    for r in results:
        print(r.line(), file=out)
        if not r.passed and r.todo is None and r.hint:
            print(f"      hint: {r.hint}", file=out)
    passed = sum(r.passed for r in results)
    print(f"\n{passed} of {len(results)} parts pass ({seconds:.1f} s).", file=out)
    todo = next((r.todo for r in results if r.todo is not None), None)
    if todo is not None:
        print(f"Next: implement {todo} (it still raises NotImplementedError).", file=out)
    elif passed == len(results):
        print("Every part passes.", file=out)


def load_solution(module: ModuleType) -> ModuleType:
    """The module of ``exercises/solutions/`` named like the exercise ``module``'s file."""
    return importlib.import_module(f"exercises.solutions.{Path(module.__file__).stem}")


def main(title: str, grade: Callable[..., list[Result]], module: ModuleType,
         argv=None, experiment: Callable[[ModuleType], None] | None = None) -> int:
    """The command line of an exercise: grade it (or its solution) and return the exit status.

    ``experiment``, when given, adds an ``--experiment`` flag that runs it after the grading.
    """
    parser = argparse.ArgumentParser(description=f"{title}: grade the exercise part by part.")
    parser.add_argument("--solution", action="store_true",
                        help="grade the solution in exercises/solutions/ instead")
    parser.add_argument("--only", metavar="TEXT", default=None,
                        help="grade only the parts whose name contains TEXT (e.g. a function)")
    if experiment is not None:
        parser.add_argument("--experiment", action="store_true",
                            help="after grading, run the short experiment of this exercise")
    args = parser.parse_args(argv)
    target = load_solution(module) if args.solution else module
    print(f"{title}: grading {Path(target.__file__).relative_to(ROOT)}\n", flush=True)
    t0 = time.perf_counter()
    results = grade(target, only=args.only)
    if not results:
        print(f"--only {args.only!r} matches no part: see the part names in --solution's output")
        return 2
    report(results, time.perf_counter() - t0)
    if experiment is not None and args.experiment:
        print()
        experiment(target)
    return 0 if all(r.passed for r in results) else 1


def run(title: str, module_name: str,
        experiment: Callable[[ModuleType], None] | None = None) -> NoReturn:
    """An exercise's ``if __name__ == "__main__":`` block: grade the module ``module_name`` (or,
    with ``--solution``, its solution) with its ``grade`` and exit with :func:`main`'s status."""
    module = sys.modules[module_name]
    sys.exit(main(title, module.grade, module, experiment=experiment))


def randomise(module, rng: np.random.Generator, scale: float = 0.3) -> None:
    """Move every parameter of a library module off its initial value (LayerNorm gains stay
    positive), so that no check runs only at a special point such as zero biases."""
    for name, p, _ in module.named_parameters():
        if name.endswith(("ln_g", ".g")) or name == "g":
            p[...] = rng.uniform(0.5, 1.5, p.shape)
        else:
            p += rng.standard_normal(p.shape) * scale * (1.0 if p.ndim == 1 else 0.3)
