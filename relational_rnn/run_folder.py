"""The run folder: its file names, and every read and write of its files.

A run folder ``DIR`` holds ``run_config.json`` (:class:`relational_rnn.config.RunConfig`), one
sub-folder per model (``DIR/rmc/metrics.jsonl``, ``DIR/rmc/checkpoint.npz``, ...) and the combined
outputs (``learning_curves.png``, ``attention_heatmap.png``, ``results.json``).  This module is
their one owner: training, resuming, branching, evaluation and the figures all go through it.

Files that are replaced are written atomically (a temporary file beside the target, flushed and
renamed over it), so a crash leaves the old file or the new one, never a mixture.  The metrics
file grows by appended lines (one JSON object each); a resume first cuts it back to the
checkpoint's step.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from relational_rnn.config import RunConfig
from relational_rnn.registry import MODEL_KINDS, SIZE_FIELDS_BY_KIND

RUN_CONFIG_NAME = "run_config.json"
RESULTS_NAME = "results.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.npz"
CURVES_NAME = "learning_curves.png"
HEATMAP_NAME = "attention_heatmap.png"


class RunFolderError(ValueError):
    """A run folder, or a file in it, that cannot be used as asked."""


class NoRunError(RunFolderError):
    """A folder that holds no run (no ``run_config.json``)."""


# -- JSON ------------------------------------------------------------------------------------

def json_safe(value):
    """Replace NaN/Inf floats by None (strict JSON) and numpy scalars by Python ones."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value, **kwargs) -> str:
    """Strict JSON text of ``value`` (NaN/Inf as null)."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def atomic_write_bytes(path: str, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path: str, value) -> None:
    """Write ``value`` as indented strict JSON, atomically."""
    text = dumps(value, indent=2) + "\n"
    atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8")))


def read_json(path: str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# -- the run configuration -------------------------------------------------------------------

def config_json(cfg: RunConfig) -> dict:
    """``cfg`` as the JSON object of ``run_config.json`` (and of every checkpoint's meta)."""
    return cfg.to_json(SIZE_FIELDS_BY_KIND)


def write_run_config(run_dir: str, cfg: RunConfig) -> None:
    write_json(os.path.join(run_dir, RUN_CONFIG_NAME), config_json(cfg))


def read_run_config(run_dir: str) -> RunConfig:
    """The :class:`RunConfig` of the run in ``run_dir``; RunFolderError saying what is wrong."""
    path = os.path.join(run_dir, RUN_CONFIG_NAME)
    if not os.path.isdir(run_dir):
        raise RunFolderError("no such folder")
    if not os.path.isfile(path):
        raise NoRunError(f"no {RUN_CONFIG_NAME} there")
    try:
        return RunConfig.from_json(read_json(path))
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"unreadable {RUN_CONFIG_NAME}: {exc}") from None


def run_files(folder: str) -> list[str]:
    """The run outputs already present in ``folder``."""
    names = [RUN_CONFIG_NAME, RESULTS_NAME, CURVES_NAME, HEATMAP_NAME]
    names += [os.path.join(k, n) for k in MODEL_KINDS for n in (METRICS_NAME, CHECKPOINT_NAME)]
    return [n for n in names if os.path.exists(os.path.join(folder, n))]


def model_path(run_dir: str, kind: str, name: str) -> str:
    """``run_dir/<kind>/<name>``: a file of one model of the run."""
    return os.path.join(run_dir, kind, name)


# -- metrics ---------------------------------------------------------------------------------

def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Parse a ``metrics.jsonl`` file: one JSON object per non-empty line."""
    lines = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number} is not valid JSON ({exc})") from exc
    return lines


def history_until(path: str, step: int) -> list[dict]:
    """The metrics lines of ``path`` up to a checkpoint at ``step`` (none if there is no file):
    evaluations and events at steps <= step, and phase changes at steps < step (a run continued
    from ``step`` announces the phase at ``step`` again if it starts there)."""
    if not os.path.exists(path):
        return []
    return [e for e in read_metrics(path)
            if e.get("step", 0) < step or (e.get("step", 0) == step and e.get("event") != "phase")]


def write_metrics(path: str, entries: Sequence[Mapping]) -> None:
    """Replace the metrics file ``path`` by ``entries``, atomically."""
    text = "".join(dumps(e) + "\n" for e in entries)
    atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8")))


def truncate_metrics(path: str, step: int) -> None:
    """Keep only the history up to a checkpoint at ``step`` (see :func:`history_until`)."""
    if os.path.exists(path):
        write_metrics(path, history_until(path, step))


class MetricsLog:
    """Appends lines to a ``metrics.jsonl``, each flushed as it is written (a context manager).

    ``fresh=True`` starts the file anew; else lines are added after the existing ones.
    """

    def __init__(self, path: str, *, fresh: bool):
        self.path, self.fresh = path, fresh
        self._file = None

    def __enter__(self) -> "MetricsLog":
        self._file = open(self.path, "w" if self.fresh else "a", encoding="utf-8")
        return self

    def write(self, entry: Mapping) -> None:
        self._file.write(dumps(entry) + "\n")
        self._file.flush()

    def __exit__(self, *exc) -> bool:
        self._file.close()
        return False
