"""Runs that outlive their machine: copy a run folder into the repository, or export its
trained weights as a small run folder of weights-only checkpoints (the shipped models of
:mod:`relational_rnn.pretrained`).

    python -m relational_rnn.export copy-run /scratch/rmc-8x16 experiments/rmc-8x16
    python -m relational_rnn.export weights runs/curriculum relational_rnn/pretrained/4x4

Both rewrite the run folder in the recorded command lines (``--out X`` and ``--resume X`` become
``--out DST`` and ``--resume DST`` in every line, whatever X was when the line ran), so no path of
the machine that trained it travels with the run and its history reads as one recipe.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Sequence

import numpy as np

from relational_rnn.checkpoint import (load_checkpoint, relabel_checkpoint, save_weights)
from relational_rnn.run_folder import (CHECKPOINT_NAME, METRICS_NAME, RESULTS_NAME, config_json,
                                       model_path, read_json, read_run_config, run_files,
                                       write_json, write_run_config)


#: the options whose value is the run's own folder; every line of a run's history names the
#: same run, so each is rewritten, whatever the folder was called when that line ran (a run
#: copied by hand and resumed has lines naming both the original and the copy)
_FOLDER_OPTIONS = ("--out", "--resume")
#: the option naming the run a branch started from: cut to that run's name, as the branch record
_PARENT_OPTION = "--branch-from"


def _relocated_command(command: str, dst: str) -> str:
    """``command`` with the value of each :data:`_FOLDER_OPTIONS` option set to ``dst`` and
    that of :data:`_PARENT_OPTION` cut to its last component."""
    def value(name: str, old: str) -> str:
        return os.path.basename(old.rstrip("/")) if name == _PARENT_OPTION else dst
    words = shlex.split(command)
    for i, word in enumerate(words):
        name, eq, old = word.partition("=")
        if eq and name in (*_FOLDER_OPTIONS, _PARENT_OPTION):
            words[i] = f"{name}={value(name, old)}"
        elif word in (*_FOLDER_OPTIONS, _PARENT_OPTION) and i + 1 < len(words):
            words[i + 1] = value(word, words[i + 1])
    return shlex.join(words)


def _relocated(cfg, src: str, dst: str):
    """``cfg`` with its folder (``--out``/``--resume``) set to ``dst`` in its command lines, any
    other mention of ``src`` (as given and absolute) replaced by ``dst``, and the run it was
    branched from (in the lines and the branch record) cut to that run's name."""
    def fix(text: str) -> str:
        for old in sorted({src.rstrip("/"), os.path.abspath(src)}, key=len, reverse=True):
            text = text.replace(old, dst)
        return _relocated_command(text, dst)
    branched = cfg.branched_from
    if branched is not None:
        branched = dict(branched, run=os.path.basename(branched["run"]))
    return cfg.replace(commands=tuple(fix(c) for c in cfg.commands), branched_from=branched)


def _check_target(dst: str) -> None:
    if os.path.exists(dst) and (not os.path.isdir(dst) or run_files(dst)):
        raise ValueError(f"{dst} exists and holds a run (or is a file): choose another place")


def copy_run(src: str, dst: str) -> list[str]:
    """Copy the run in ``src`` to ``dst`` (metrics, checkpoints with their full training state,
    run config, results, figures), the command lines relocated; returns the files written."""
    cfg = read_run_config(src)
    _check_target(dst)
    new = _relocated(cfg, src, dst)
    os.makedirs(dst, exist_ok=True)
    write_run_config(dst, new)
    written = [os.path.join(dst, "run_config.json")]
    for kind in cfg.models:
        ckpt = model_path(src, kind, CHECKPOINT_NAME)
        if not os.path.exists(ckpt):
            continue
        os.makedirs(os.path.join(dst, kind), exist_ok=True)
        shutil.copyfile(model_path(src, kind, METRICS_NAME), model_path(dst, kind, METRICS_NAME))
        _, info = load_checkpoint(ckpt, averaged=False)
        relabel_checkpoint(ckpt, model_path(dst, kind, CHECKPOINT_NAME),
                           run_config=config_json(new), optimizer=info["optimizer"])
        written += [model_path(dst, kind, n) for n in (METRICS_NAME, CHECKPOINT_NAME)]
    written += _copy_outputs(src, dst, new)
    return written


def _copy_outputs(src: str, dst: str, cfg) -> list[str]:
    """results.json (its config and commands relocated) and the figures."""
    written = []
    for name in sorted(os.listdir(src)):
        if name.endswith(".png"):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
            written.append(os.path.join(dst, name))
    if os.path.exists(os.path.join(src, RESULTS_NAME)):
        results = read_json(os.path.join(src, RESULTS_NAME))
        results.update(config=config_json(cfg), commands=list(cfg.commands))
        results.pop("command", None)
        write_json(os.path.join(dst, RESULTS_NAME), results)
        written.append(os.path.join(dst, RESULTS_NAME))
    return written


def export_weights(src: str, dst: str, kinds: Sequence[str] | None = None) -> list[str]:
    """Write ``dst`` as a run folder of weights-only float32 checkpoints of the run in ``src``
    (the averaged weights when the run kept an average), with each model's metrics; it loads
    with ``load_checkpoint`` and evaluates with ``--evaluate``, but does not resume."""
    cfg = read_run_config(src)
    kinds = list(kinds or cfg.models)
    _check_target(dst)
    new = _relocated(cfg, src, dst).replace(models=tuple(kinds))
    new = new.replace(model_sizes={k: new.model_sizes[k] for k in kinds})
    os.makedirs(dst, exist_ok=True)
    write_run_config(dst, new)
    written = [os.path.join(dst, "run_config.json")]
    for kind in kinds:
        model, info = load_checkpoint(model_path(src, kind, CHECKPOINT_NAME))
        if model.dtype != np.float32:
            raise ValueError(f"{kind}: the shipped weights are float32, the run's {model.dtype}")
        os.makedirs(os.path.join(dst, kind), exist_ok=True)
        save_weights(model_path(dst, kind, CHECKPOINT_NAME), kind=kind, model=model,
                     step=info["step"], run_config=config_json(new), weights=info["weights"],
                     extra={"wall_time": info.get("wall_time")})
        shutil.copyfile(model_path(src, kind, METRICS_NAME), model_path(dst, kind, METRICS_NAME))
        written += [model_path(dst, kind, n) for n in (CHECKPOINT_NAME, METRICS_NAME)]
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m relational_rnn.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("copy-run", "weights"),
                   help="copy-run: the whole resumable run; weights: weights-only checkpoints")
    p.add_argument("src", metavar="SRC", help="the run folder to read")
    p.add_argument("dst", metavar="DST", help="the folder to write (must hold no run)")
    p.add_argument("--model", action="append", metavar="KIND",
                   help="weights: only these models (repeatable; default all)")
    args = p.parse_args(argv)
    try:
        if args.what == "copy-run":
            written = copy_run(args.src, args.dst)
        else:
            written = export_weights(args.src, args.dst, args.model)
    except (OSError, ValueError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path} ({os.path.getsize(path):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
