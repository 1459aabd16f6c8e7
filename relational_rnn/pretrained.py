"""Trained models shipped with the library, loaded in one line::

    from relational_rnn.pretrained import load_pretrained
    model = load_pretrained("rmc-4x4")          # ready for model.forward(x)

Each name is a model of a run folder under ``relational_rnn/pretrained/`` holding weights-only
float32 checkpoints (:func:`relational_rnn.export.export_weights`) and the run's metrics; the
folder also serves ``python nth_farthest.py --evaluate`` and the demo's ``--checkpoint``.
``relational_rnn/pretrained/README.md`` gives each model's held-out accuracy and the command
that trained it.
"""
from __future__ import annotations

import os

from relational_rnn.checkpoint import load_checkpoint
from relational_rnn.run_folder import CHECKPOINT_NAME, model_path

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
# name -> (run folder under PRETRAINED_DIR, model kind)
# rrnn-4x4 is the RelationalRNN of the curriculum preset (its memory reads x_t beside h_t and
# all its slots are read out); rrnn-4x4-default the model's default data flow, same recipe;
# rmc-4x4-small the preset's RMC with a read-out of 2 x 128 (89k parameters), the best 4 x 4.
PRETRAINED: dict[str, tuple[str, str]] = {
    "rmc-4x4": ("4x4", "rmc"), "lstm-4x4": ("4x4", "lstm"), "rrnn-4x4": ("4x4-rrnn", "rrnn"),
    "rrnn-4x4-default": ("4x4", "rrnn"), "rmc-8x16": ("8x16", "rmc"),
    "rmc-4x4-small": ("4x4-rmc-small", "rmc"),
}


def pretrained_path(name: str) -> str:
    """The checkpoint file of the shipped model ``name``."""
    if name not in PRETRAINED:
        raise ValueError(f"no shipped model {name!r}; the shipped models are "
                         f"{sorted(PRETRAINED) or 'none yet'}")
    run, kind = PRETRAINED[name]
    return model_path(os.path.join(PRETRAINED_DIR, run), kind, CHECKPOINT_NAME)


def load_pretrained(name: str, *, with_info: bool = False):
    """The shipped model ``name`` (e.g. ``"rmc-4x4"``), its trained weights loaded; with
    ``with_info=True``, ``(model, info)`` as :func:`load_checkpoint` gives them."""
    model, info = load_checkpoint(pretrained_path(name), expect_kind=PRETRAINED[name][1])
    return (model, info) if with_info else model
