"""Figures of N-th Farthest training runs, drawn with matplotlib's Agg backend.

The functions take plain data, so the training CLI, the demo and user scripts share them
(:func:`relational_rnn.run_folder.read_metrics` reads a ``metrics.jsonl``):

* :func:`plot_learning_curves` -- several models overlaid: held-out accuracy and loss against
  steps and against wall time, chance level, curriculum phase changes as vertical lines, and one
  panel per model with the held-out accuracy for each rank ``n``.
* :func:`plot_attention_heatmap` -- the attention of a relational memory core on one example:
  one panel per (head, time step), query rows = memory slots, columns = slots + the input row.

As a script it overlays the learning curves of models from several runs, e.g. two rows of the
summary's 8 x 16 table::

    python -m relational_rnn.plots runs/rmc-8x16 runs/rmc-8x16-4heads \\
        --label "2 heads" --label "4 heads" --out compare.png

Metrics lines are dicts with an ``"event"`` key:

* ``"eval"``: ``step``, ``wall_time`` (seconds), ``heldout_acc``, ``heldout_loss``,
  ``acc_per_n`` (list, one value per n, None where the held-out set has no example of that n),
  and optionally ``train_loss``;
* ``"phase"``: ``step`` (first step of the phase), ``wall_time``, ``active_objects``,
  ``active_features`` -- a curriculum phase change;
* ``"branch"``: ``step``, ``wall_time`` -- where a run branched from its parent's history with
  other optimisation settings (a black dash-dot line);
* anything else is ignored here.

No pyplot state is used (each figure is a :class:`matplotlib.figure.Figure` on its own Agg
canvas), so importing this module never changes the caller's matplotlib backend.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from relational_rnn.registry import KINDS
from relational_rnn.run_folder import METRICS_NAME, RUN_CONFIG_NAME, read_json, read_metrics

__all__ = ["plot_learning_curves", "plot_attention_heatmap", "MODEL_COLORS"]

# One colour per model kind (others cycle through the default palette).
MODEL_COLORS = {k.name: k.color for k in KINDS.values()}
_FALLBACK_COLORS = ["tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def _new_figure(**kwargs):
    """A Figure on its own Agg canvas (matplotlib is imported on first use only)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _color(kind: str, index: int) -> str:
    return MODEL_COLORS.get(kind, _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])


def _evals(lines: Sequence[Mapping]) -> list[Mapping]:
    return [e for e in lines if e.get("event") == "eval"]


def _phases(lines: Sequence[Mapping]) -> list[Mapping]:
    """Phase changes after the start (a phase starting at step 0 needs no line)."""
    return [e for e in lines if e.get("event") == "phase" and e.get("step", 0) > 0]


def _branches(lines: Sequence[Mapping]) -> list[Mapping]:
    return [e for e in lines if e.get("event") == "branch"]


def _series(evals: Sequence[Mapping], key: str) -> np.ndarray:
    return np.array([np.nan if e.get(key) is None else float(e[key]) for e in evals])


def _phase_label(event: Mapping) -> str:
    return f"{event.get('active_objects')}x{event.get('active_features')}"


def _time_scale(max_seconds: float) -> tuple[float, str]:
    if max_seconds > 2 * 3600:
        return 3600.0, "wall time (hours)"
    if max_seconds > 600:
        return 60.0, "wall time (minutes)"
    return 1.0, "wall time (seconds)"


def _draw_step_phases(ax, phases: Sequence[Mapping], *, label: bool) -> None:
    """Grey dashed vertical lines at the phase changes, named at the top of the panel."""
    for i, event in enumerate(phases):
        ax.axvline(event["step"], color="0.45", linestyle="--", linewidth=0.9,
                   label="curriculum phase change" if label and i == 0 else None)
        ax.annotate(_phase_label(event), xy=(event["step"], 1.0),
                    xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", fontsize=7, color="0.3")


def plot_learning_curves(metrics_by_model: Mapping[str, Sequence[Mapping]],
                         path: str | os.PathLike, *, chance: float | None = None,
                         title: str | None = None, labels: Mapping[str, str] | None = None,
                         levels: Mapping[str, float] | None = None, dpi: int = 110) -> str:
    """Draw the learning curves of several models into one PNG and return its path.

    Args:
        metrics_by_model: model kind (e.g. ``"rmc"``) -> its metrics lines (see module doc).
        path: output file (PNG).
        chance: chance accuracy (1 / num_objects); drawn as a dotted line on the accuracy
            panels, and ``-ln(chance)`` on the loss panels.
        title: figure title.
        labels: model kind -> legend label (default: the kind).
        levels: legend label -> accuracy, drawn as dashed lines on the accuracy panels (e.g.
            ``{"plateau (n = 0 solved)": 0.25}``).

    Layout: row 1 held-out accuracy vs steps and vs wall time; row 2 held-out loss (solid) and
    mean training loss since the previous evaluation (dotted) vs steps and vs wall time; row 3
    one panel per model with the held-out accuracy for each rank n.  Curriculum phase changes
    are vertical lines (grey on the step axes when all models changed phase at the same steps;
    otherwise, and on the wall-time axes, in each model's colour); a branch point is a black
    dash-dot line.
    """
    if not metrics_by_model:
        raise ValueError("metrics_by_model is empty: nothing to plot")
    labels = dict(labels or {})
    kinds = list(metrics_by_model)
    ncols_bottom = max(2, len(kinds))
    fig = _new_figure(figsize=(max(13.0, 4.4 * ncols_bottom), 12.5), dpi=dpi,
                      layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2, 1])
    panels = _Panels(*top.subplots(2, 2).ravel())
    bottom_axes = np.atleast_1d(bottom.subplots(1, ncols_bottom, sharey=True))
    max_time = max((float(e.get("wall_time") or 0.0) for lines in metrics_by_model.values()
                    for e in _evals(lines)), default=0.0)
    scale, time_label = _time_scale(max_time)

    # Phase lines on the step axes: grey when every model changed phase at the same steps (a
    # fixed curriculum), in each model's colour when gated phases ended at different steps.
    phase_steps = {tuple(e["step"] for e in _phases(lines)) for lines in metrics_by_model.values()}
    shared_phases = len(phase_steps) == 1
    if shared_phases:
        step_phases = next((_phases(lines) for lines in metrics_by_model.values()), [])
        for ax in (panels.acc_s, panels.loss_s):
            _draw_step_phases(ax, step_phases, label=ax is panels.acc_s)
    for i, kind in enumerate(kinds):
        lines = metrics_by_model[kind]
        if not _evals(lines):
            continue
        name, color = labels.get(kind, kind), _color(kind, i)
        _draw_model(panels, i, lines, name, color, scale, shared_phases)
        _draw_per_n(bottom_axes[i], lines, name, chance)
    for ax in bottom_axes[:1]:
        ax.set_ylabel("held-out accuracy")
    for ax in bottom_axes[len(kinds):]:
        ax.set_visible(False)
    for ax in (panels.acc_s, panels.acc_t, *bottom_axes[:len(kinds)]):
        for (label, value), style in zip((levels or {}).items(), ("--", "-.", (0, (1, 3)))):
            ax.axhline(value, color="0.4", linestyle=style, linewidth=1.0, label=label)
    _finish_panels(panels, chance, time_label)
    if title:
        # about 9 characters of the default title font per inch of figure width
        fig.suptitle(wrap_title(title, int(fig.get_figwidth() * 9)))
    path = os.fspath(path)
    fig.savefig(path)
    return path


@dataclass
class _Panels:
    """The four top panels: accuracy and loss, against steps (``_s``) and wall time (``_t``);
    ``labelled`` remembers which already show the legend entry of coloured phase lines."""

    acc_s: object
    acc_t: object
    loss_s: object
    loss_t: object
    labelled: dict = field(default_factory=dict)


def _draw_model(panels: _Panels, i: int, lines: Sequence[Mapping], name: str, color: str,
                scale: float, shared_phases: bool) -> None:
    """One model's curves on the four top panels, with its phase changes and branch points."""
    evals = _evals(lines)
    steps = _series(evals, "step")
    times = _series(evals, "wall_time") / scale
    acc, loss = _series(evals, "heldout_acc"), _series(evals, "heldout_loss")
    train_loss = _series(evals, "train_loss")
    p = panels
    p.acc_s.plot(steps, acc, color=color, label=name)
    p.acc_t.plot(times, acc, color=color, label=name)
    p.loss_s.plot(steps, loss, color=color, label=name)
    p.loss_t.plot(times, loss, color=color, label=name)
    p.loss_s.plot(steps, train_loss, color=color, linestyle=":", linewidth=1.0,
                  label="dotted: training loss" if i == 0 else None)
    p.loss_t.plot(times, train_loss, color=color, linestyle=":", linewidth=1.0)
    for event in _phases(lines):
        at = [(ax, float(event["wall_time"]) / scale) for ax in (p.acc_t, p.loss_t)
              if event.get("wall_time") is not None]
        if not shared_phases:
            at += [(ax, event["step"]) for ax in (p.acc_s, p.loss_s)]
        for ax, x in at:
            # the legend entry once on each accuracy panel (the loss panels never)
            labelled = p.labelled.get(ax, ax in (p.loss_s, p.loss_t))
            ax.axvline(x, color=color, linestyle="--", linewidth=0.8, alpha=0.6,
                       label=None if labelled else "phase change (model colour)")
            p.labelled[ax] = True
    for event in _branches(lines):
        at = [(ax, event["step"]) for ax in (p.acc_s, p.loss_s)]
        if event.get("wall_time") is not None:
            at += [(ax, float(event["wall_time"]) / scale) for ax in (p.acc_t, p.loss_t)]
        for ax, x in at:
            ax.axvline(x, color="k", linestyle="-.", linewidth=0.9,
                       label="branch: new settings from here" if i == 0 else None)


def _draw_per_n(ax_n, lines: Sequence[Mapping], name: str, chance: float | None) -> None:
    """One model's held-out accuracy for each rank n against steps."""
    evals = _evals(lines)
    steps = _series(evals, "step")
    per_n = [e.get("acc_per_n") or [] for e in evals]
    num_n = max((len(p) for p in per_n), default=0)
    cmap = _viridis()
    for n in range(num_n):
        values = np.array([np.nan if len(p) <= n or p[n] is None else float(p[n])
                           for p in per_n])
        tag = " (m itself)" if n == 0 else (" (farthest)" if n == num_n - 1 else "")
        ax_n.plot(steps, values, color=cmap(n / max(1, num_n - 1)), linewidth=1.1,
                  label=f"n={n}{tag}")
    _draw_step_phases(ax_n, _phases(lines), label=False)
    if chance is not None:
        ax_n.axhline(chance, color="k", linestyle=":", linewidth=1.0, label="chance")
    ax_n.set_title(f"{name}: held-out accuracy per rank n", fontsize=10)
    ax_n.set_xlabel("training step")
    ax_n.set_ylim(-0.02, 1.02)
    ax_n.grid(alpha=0.3)
    ax_n.legend(fontsize=7, loc="best", ncol=2 if num_n > 4 else 1)


def _finish_panels(p: _Panels, chance: float | None, time_label: str) -> None:
    """Chance lines, titles, labels, legends and the loss panels' log scale."""
    if chance is not None:
        for ax in (p.acc_s, p.acc_t):
            ax.axhline(chance, color="k", linestyle=":", linewidth=1.0,
                       label=f"chance (1/{round(1 / chance)})" if chance > 0 else "chance")
        if 0 < chance < 1:
            for ax in (p.loss_s, p.loss_t):
                ax.axhline(-math.log(chance), color="k", linestyle=":", linewidth=1.0,
                           label="chance loss ln K" if ax is p.loss_s else None)
    for ax, ttl, xl, yl in (
            (p.acc_s, "Held-out accuracy vs steps", "training step", "held-out accuracy"),
            (p.acc_t, "Held-out accuracy vs wall time", time_label, "held-out accuracy"),
            (p.loss_s, "Loss vs steps (solid: held-out; dotted: training, mean since the "
                       "previous evaluation)", "training step", "cross-entropy loss (log scale)"),
            (p.loss_t, "Loss vs wall time (solid: held-out; dotted: training)", time_label,
             "cross-entropy loss (log scale)")):
        ax.set_title(ttl, fontsize=10)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in (p.acc_s, p.acc_t):
        ax.set_ylim(-0.02, 1.02)
    # Log scale: during curriculum phases with fewer objects the held-out loss on the full
    # task can grow far above ln K, while the interesting part lies below it.
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter
    for ax in (p.loss_s, p.loss_t):
        ax.set_yscale("log")          # values <= 0 (a perfect float32 loss) are masked
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FuncFormatter(_label_2_and_5))
        ax.tick_params(axis="y", which="minor", labelsize=7)


def _label_2_and_5(value, _pos) -> str:
    """Minor tick labels of a log axis: every one labelled crowds it, so only 2x and 5x each
    power of ten."""
    mantissa = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
    return f"{value:g}" if mantissa in (2, 5) else ""


def wrap_title(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters, broken at spaces and after commas.

    A long curriculum spec has no spaces (``3x1:10000@0.9,3x4:...``), so commas are break points
    too; a single piece longer than ``width`` stays whole on its own line.
    """
    lines, line = [], ""
    for word in text.split(" "):
        # a word's pieces end after each comma; only its first piece follows a space
        for i, piece in enumerate(re.findall(r"[^,]*,|[^,]+", word) or [""]):
            joined = line + (" " if i == 0 and line else "") + piece
            if line and len(joined) > width:
                lines.append(line)
                joined = piece
            line = joined
    return "\n".join(lines + [line])


def _viridis():
    import matplotlib
    return matplotlib.colormaps["viridis"]


def plot_attention_heatmap(weights: np.ndarray, path: str | os.PathLike, *,
                           row_objects: Sequence[int] | None = None, title: str | None = None,
                           dpi: int = 100) -> str:
    """Draw the attention of the memory slots of one example and return the PNG's path.

    Args:
        weights: (T, H, N+1, N+1) attention weights of one example and one attention block
            (``RelationalMemory.attention_weights(cache)[:, block, example]``): at time step t
            and head h, row i holds the softmax over the N+1 keys (N memory slots, then the
            input row) for query i.  Only the N slot queries (rows 0..N-1) are drawn.
        path: output file (PNG).
        row_objects: optional (T,) object id shown at each time step, for the column titles.
        title: figure title.

    One panel per head (rows) and time step (columns); colour scale 0..1 shared by every panel.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4 or w.shape[2] != w.shape[3] or w.shape[2] < 2:
        raise ValueError(f"weights must have shape (T, H, N+1, N+1), got {w.shape}")
    T, H, N1, _ = w.shape
    N = N1 - 1
    if row_objects is not None and len(row_objects) != T:
        raise ValueError(f"row_objects must have length T={T}, got {len(row_objects)}")
    cell = 0.42
    fig_w = 1.6 + T * (N1 * cell + 0.45)
    fig_h = 1.3 + H * (N * cell + 0.55)
    fig = _new_figure(figsize=(max(fig_w, 5.0), max(fig_h, 3.0)), dpi=dpi,
                      layout="constrained")
    axes = np.array(fig.subplots(H, T, squeeze=False))
    key_labels = [f"s{j}" for j in range(N)] + ["in"]
    query_labels = [f"s{i}" for i in range(N)]
    image = None
    for h in range(H):
        for t in range(T):
            ax = axes[h, t]
            image = ax.imshow(w[t, h, :N, :], vmin=0.0, vmax=1.0, cmap="magma", aspect="equal")
            ax.set_xticks(range(N1), key_labels, fontsize=6)
            ax.set_yticks(range(N), query_labels, fontsize=6)
            ax.tick_params(length=1.5, pad=1)
            if h == 0:
                col = f"t={t}"
                if row_objects is not None:
                    col += f"\nobject {int(row_objects[t])}"
                ax.set_title(col, fontsize=8)
            if t == 0:
                ax.set_ylabel(f"head {h}\nquery: memory slot", fontsize=7)
            if h == H - 1:
                ax.set_xlabel("key: slot / input", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    fig.suptitle(title or "Relational memory attention (rows: memory-slot queries; "
                 "columns: slots + input row)", fontsize=10)
    path = os.fspath(path)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------------------------
# Command line: the learning curves of several runs on one figure
# --------------------------------------------------------------------------------------------

def _metrics_files(folder: str) -> list[str]:
    """The metrics file of ``folder`` when it is a model folder, else those of its model
    sub-folders (a run folder); ValueError naming the folder when there is none."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    if os.path.isfile(os.path.join(folder, METRICS_NAME)):
        return [os.path.join(folder, METRICS_NAME)]
    found = sorted(os.path.join(folder, name, METRICS_NAME) for name in os.listdir(folder)
                   if os.path.isfile(os.path.join(folder, name, METRICS_NAME)))
    if not found:
        raise ValueError(f"{folder}: neither a model folder (with {METRICS_NAME}) nor a run "
                         f"folder (with <model>/{METRICS_NAME})")
    return found


def _num_objects(metrics_file: str) -> int | None:
    """The run's number of objects from the run config two levels up, if readable."""
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(metrics_file)))
    try:
        value = read_json(os.path.join(run_dir, RUN_CONFIG_NAME)).get("num_objects")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def _level(text: str) -> tuple[str, float]:
    """--level 'ACC=TEXT' -> (TEXT, ACC) with ACC in [0, 1]."""
    value, sep, label = text.partition("=")
    try:
        acc = float(value)
    except ValueError:
        acc = math.nan
    if not sep or not label or not 0 <= acc <= 1:
        raise argparse.ArgumentTypeError(f"expected ACC=TEXT with ACC in [0, 1], got {text!r}")
    return label, acc


def _compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m relational_rnn.plots",
        description="Overlay the learning curves of models from several N-th Farthest runs on "
        "one figure (held-out accuracy and loss against steps and wall time, one "
        "accuracy-per-n panel per model), e.g. to compare two configurations.")
    p.add_argument("folders", nargs="+", metavar="FOLDER",
                   help="a run folder (every model in it) or a model folder (RUN/rmc)")
    p.add_argument("--out", required=True, metavar="PNG", help="the figure to write")
    p.add_argument("--label", action="append", metavar="TEXT",
                   help="legend label, once per model drawn, in order (default: RUN/MODEL)")
    p.add_argument("--title", help="figure title")
    p.add_argument("--level", action="append", type=_level, metavar="ACC=TEXT", default=[],
                   help="a dashed line at accuracy ACC on the accuracy panels, labelled TEXT, "
                        "e.g. '0.25=plateau (n = 0 solved)'; up to three")
    p.add_argument("--dpi", type=int, default=110, help="resolution (default 110)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m relational_rnn.plots FOLDER ... --out PNG``; returns the exit status
    (2: bad arguments)."""
    args = _compare_parser().parse_args(argv)
    try:
        files = [f for folder in args.folders for f in _metrics_files(folder)]
        # default label RUN/MODEL: the last two folders above each metrics file
        labels = args.label or ["/".join(os.path.abspath(f).split(os.sep)[-3:-1])
                                for f in files]
        if len(labels) != len(files):
            raise ValueError(f"--label: {len(labels)} given for {len(files)} models "
                             f"({', '.join(os.path.dirname(f) for f in files)})")
        if len(set(labels)) != len(labels):
            raise ValueError(f"--label: the labels must differ, got {labels}")
        if args.dpi <= 0:
            raise ValueError(f"--dpi must be positive, got {args.dpi}")
        if len(args.level) > 3:
            raise ValueError(f"--level: at most three, got {len(args.level)}")
        metrics = {label: read_metrics(f) for label, f in zip(labels, files)}
    except (OSError, ValueError) as exc:
        print(f"relational_rnn.plots: error: {exc}", file=sys.stderr)
        return 2
    objects = {_num_objects(f) for f in files}
    chance = 1.0 / objects.pop() if len(objects) == 1 and None not in objects else None
    path = plot_learning_curves(metrics, args.out, chance=chance, title=args.title,
                                levels=dict(args.level), dpi=args.dpi)
    print(f"wrote {path} ({len(files)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
