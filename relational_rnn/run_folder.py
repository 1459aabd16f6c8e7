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


def _usual_mode() -> int:
    """The permissions ``open()`` gives a new file under the user's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    The temporary file is ``.<name>.<random>.tmp``; a kill can leave one behind, which
    :func:`remove_stale_temporaries` clears.  The file gets the usual permissions (mkstemp's
    are 0600, which would keep a colleague on a shared machine from reading a run)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        os.fchmod(fd, _usual_mode())
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

def _parse_metrics(path) -> tuple[list[dict], str | None]:
    """``(lines, torn)``: the JSON objects of a metrics file, and its torn last line if any.

    A torn last line (not valid JSON and not ended by a newline) is what a crash or a full disk
    leaves in the middle of an append: it lies past the last checkpoint and carries nothing
    that the next evaluation does not write again.  A bad line anywhere else is damage:
    RunFolderError naming the file and the line.
    """
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    rows = text.split("\n")
    lines = []
    for number, row in enumerate(rows, 1):
        if not row.strip():
            continue
        try:
            lines.append(json.loads(row))
        except json.JSONDecodeError as exc:
            if number == len(rows):           # the last row, with no newline after it
                return lines, row
            raise RunFolderError(f"{path}: line {number} is not valid JSON ({exc}): the file "
                                 "is damaged") from None
    return lines, None


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Parse a ``metrics.jsonl`` file: one JSON object per non-empty line (a torn last line,
    see :func:`torn_metrics_line`, is left out).  RunFolderError for a damaged file."""
    return _parse_metrics(path)[0]


def torn_metrics_line(path: str | os.PathLike) -> str | None:
    """The torn last line of a metrics file (what a crash leaves mid-append), else None;
    RunFolderError for a file damaged elsewhere."""
    return _parse_metrics(path)[1] if os.path.exists(path) else None


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


def trained_past(lines: Sequence[Mapping]) -> int:
    """The last step that a metrics history records training at (0 for none)."""
    return max((int(e.get("step") or 0) for e in lines), default=0)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the ``.<name>.*.tmp`` files that a killed atomic write left in ``folder`` and its
    model folders; return their names.  Only for a folder no other process is writing."""
    removed = []
    for sub in ["", *MODEL_KINDS]:
        where = os.path.join(folder, sub)
        if not os.path.isdir(where):
            continue
        for name in sorted(os.listdir(where)):
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(os.path.join(where, name))
                removed.append(os.path.join(sub, name))
    return removed


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
