"""The outputs of a run folder: learning curves, the RMC's attention heatmap, results.json and
the summary table, all made from the folder's metrics and checkpoints."""
from __future__ import annotations

import os
import platform
import shlex
from collections.abc import Mapping, Sequence

import numpy as np

import nth_farthest as nf
from relational_memory import RelationalMemory
from relational_rnn.checkpoint import load_checkpoint
from relational_rnn.config import RunConfig, option_name
from relational_rnn.plots import plot_attention_heatmap, plot_learning_curves
from relational_rnn.progress import fmt_duration, fmt_float
from relational_rnn.registry import KINDS, build_model
from relational_rnn.report import format_table
from relational_rnn.run_folder import (CHECKPOINT_NAME, CURVES_NAME, HEATMAP_NAME, METRICS_NAME,
                                       RESULTS_NAME, config_json, model_path, read_metrics,
                                       write_json)
from relational_rnn.threads import blas_threads


def model_summary(kind: str, lines: list[dict], run_dir: str, steps: int) -> dict:
    evals = [e for e in lines if e.get("event") == "eval"]
    stops = [e for e in lines if e.get("event") == "stop"]
    last = evals[-1] if evals else None
    best = max(evals, key=lambda e: e.get("heldout_acc") or -1.0) if evals else None
    ckpt = model_path(run_dir, kind, CHECKPOINT_NAME)
    summary = {
        "status": stops[-1]["reason"] if stops else "incomplete",
        "message": stops[-1].get("message", "") if stops else "",
        "steps_done": last["step"] if last else 0,
        "steps": steps,
        "wall_time": last["wall_time"] if last else 0.0,
        "final": ({k: last.get(k) for k in ("heldout_acc", "heldout_loss", "acc_per_n",
                                            "train_loss", "train_acc", "lr")}
                  if last else None),
        "best_heldout_acc": best["heldout_acc"] if best else None,
        "best_step": best["step"] if best else None,
        "checkpoint": os.path.join(kind, CHECKPOINT_NAME) if os.path.exists(ckpt) else None,
        "metrics": os.path.join(kind, METRICS_NAME),
    }
    if summary["status"] == "nan":
        summary["steps_done"] = stops[-1]["step"] - 1
    return summary


def attention_heatmap(run_dir: str, cfg: RunConfig, eval_set: nf.EvalSet | None) -> str | None:
    """Draw the RMC's attention on held-out example 0, if the run has an RMC checkpoint."""
    ckpt = model_path(run_dir, "rmc", CHECKPOINT_NAME)
    if not os.path.exists(ckpt):
        return None
    model, info = load_checkpoint(ckpt, expect_kind="rmc")
    t = cfg.train
    K, F = t.num_objects, t.num_features
    if eval_set is None:
        eval_set = nf.make_eval_set(t.eval_seed, t.eval_size, K, F, dtype=t.dtype)
    x = eval_set.inputs[:1]
    logits, cache = model.forward(x)
    weights = RelationalMemory.attention_weights(cache["core"])    # (T, blocks, B, H, N+1, N+1)
    blocks = weights.shape[1]
    ids = np.argmax(x[0, :, F:F + K], axis=1)
    m = int(np.argmax(x[0, 0, F + K:F + 2 * K]))
    n = int(eval_set.n[0])
    label, pred = int(eval_set.labels[0]), int(np.argmax(logits[0]))
    title = (f"RMC attention at step {info['step']} on held-out example 0 "
             f"(m={m}, n={n}: answer {label}, predicted {pred})"
             + (f"; last of {blocks} blocks" if blocks > 1 else "")
             + "\nrows: memory-slot queries; columns: keys = memory slots s0.. and the input "
               "row 'in'")
    return plot_attention_heatmap(weights[:, -1, 0], os.path.join(run_dir, HEATMAP_NAME),
                                        row_objects=ids, title=title)


def summary_table(results: Mapping) -> str:
    """The end-of-run table: one row per model."""
    header = ("model", "params", "steps", "wall time", "held-out acc", "held-out loss",
              "best acc", "status")
    rows = []
    for kind, r in results["models"].items():
        final = r.get("final") or {}
        rows.append((kind, f"{r.get('num_parameters', 0):,}",
                     f"{r['steps_done']}/{r['steps']}", fmt_duration(r["wall_time"]),
                     fmt_float(final.get("heldout_acc")), fmt_float(final.get("heldout_loss")),
                     fmt_float(r.get("best_heldout_acc")), r["status"]))
    lines = [format_table(header, rows)]
    chance = results.get("chance_accuracy")
    if chance is not None:
        lines.append(f"(chance accuracy 1/{results['config']['num_objects']} = {chance:.3f}; "
                     "evaluated on the full target task)")
    return "\n".join(lines)


def branch_changes(branch: Mapping) -> str:
    """'--lr 0.0003 -> 0.0005, ...': the settings a branch changed."""
    return ", ".join(f"{option_name(k)} {old} -> {new}" for k, (old, new) in
                     branch["changed"].items()) or "no optimisation setting"


def curves_title(cfg: RunConfig) -> str:
    """The learning-curve title of a run: task, preset, batch, curriculum, branch point."""
    t = cfg.train
    title = (f"N-th Farthest, {t.num_objects} objects x {t.num_features} features "
             f"(preset {cfg.preset}, batch {t.batch_size}"
             + (f", curriculum {t.curriculum}" if t.curriculum else ""))
    branch = cfg.branched_from
    if branch:
        steps = sorted(set(branch["steps"].values()))
        title += (f"; branched at step {', '.join(map(str, steps))} from another run, "
                  f"changed: {branch_changes(branch)}")
    return title + ")"


def write_run_outputs(run_dir: str, cfg: RunConfig, *, eval_set: nf.EvalSet | None = None,
                      command: Sequence[str] | None = None, make_plots: bool = True) -> dict:
    """Write learning_curves.png, attention_heatmap.png (RMC runs) and results.json of a run
    folder from its per-model metrics and checkpoints; return the results dict."""
    t = cfg.train
    metrics = {kind: read_metrics(path) for kind in cfg.models
               for path in [model_path(run_dir, kind, METRICS_NAME)] if os.path.exists(path)}
    K = t.num_objects
    results = {"config": config_json(cfg), "commands": list(cfg.commands),
               "chance_accuracy": 1.0 / K, "models": {},
               "environment": {"python": platform.python_version(), "numpy": np.__version__,
                               "platform": platform.platform(), "cpu_count": os.cpu_count(),
                               "blas_threads": blas_threads()}}
    if command is not None:
        results["command"] = shlex.join(command)
    for kind, lines in metrics.items():
        summary = model_summary(kind, lines, run_dir, t.steps)
        model = build_model(kind, cfg.sizes(kind), K, t.num_features, dtype=t.dtype)
        summary["num_parameters"] = model.num_parameters()
        summary["model_config"] = model.config
        results["models"][kind] = summary
    if metrics and make_plots:
        plot_learning_curves(metrics, os.path.join(run_dir, CURVES_NAME), chance=1.0 / K,
                             title=curves_title(cfg),
                             labels={k: KINDS[k].label for k in metrics})
        results["learning_curves"] = CURVES_NAME
        if attention_heatmap(run_dir, cfg, eval_set):
            results["attention_heatmap"] = HEATMAP_NAME
    write_json(os.path.join(run_dir, RESULTS_NAME), results)
    return results
