"""The memory-evolution demo's models: small classifiers trained to be traced.

:func:`build_demo_models` gives a small RelationalRNN classifier and an LSTM classifier of the
same hidden size and read-out for the 4 x 4 N-th Farthest layout (:data:`DEMO_TASK`,
:data:`DEMO_SIZES`); :func:`train_classifier` trains either with Adam on fresh batches of that
task (:data:`DEMO_BATCH`, :data:`DEMO_LR`, :data:`DEMO_CLIP`).  One seed gives the models'
initialisation and the training data as independent streams, so a run is reproducible.  The
demo (``test_relational_rnn_demo.py``) traces the trained models with
:mod:`relational_rnn.memory_trace` and prints them with :mod:`relational_rnn.memory_report`.
"""
from __future__ import annotations

import time

import numpy as np

import nth_farthest as nf
from lstm_baseline import LSTMClassifier
from optimizer import Adam
from relational_rnn.parallel import batch_gradient
from relational_rnn_cell import RelationalRNNClassifier

# The demo task without a checkpoint: the 4 x 4 layout with 4 active objects and 1 active feature
# (easy enough to learn well above chance in a few hundred steps).
DEMO_TASK = dict(num_objects=4, num_features=4, active_objects=4, active_features=1)
# The demo models: RelationalRNN (4 slots x 32 = 2 heads x 16) and an LSTM, both hidden size 32.
DEMO_SIZES = dict(hidden_size=32, num_slots=4, slot_size=32, num_heads=2, mlp_hidden=(64,))
# Training: Adam on fresh batches of this batch size, learning rate and clip norm.
DEMO_BATCH, DEMO_LR, DEMO_CLIP = 32, 3e-3, 5.0


def _seed_streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent streams of a demo seed: RelationalRNN init, LSTM init, training data."""
    return np.random.SeedSequence(seed).spawn(3)


def build_demo_models(seed: int, dtype=np.float32):
    """The demo's RelationalRNN classifier and LSTM classifier of the same hidden size and
    read-out, for the 4 x 4 N-th Farthest layout."""
    K, F = DEMO_TASK["num_objects"], DEMO_TASK["num_features"]
    width = nf.task_width(K, F)
    s = DEMO_SIZES
    rrnn_rng, lstm_rng = (np.random.default_rng(q) for q in _seed_streams(seed)[:2])
    rrnn = RelationalRNNClassifier(width, K, hidden_size=s["hidden_size"],
                                   num_slots=s["num_slots"], slot_size=s["slot_size"],
                                   num_heads=s["num_heads"], mlp_hidden=s["mlp_hidden"],
                                   rng=rrnn_rng, dtype=dtype)
    lstm = LSTMClassifier(width, s["hidden_size"], K, mlp_hidden=s["mlp_hidden"], rng=lstm_rng,
                          dtype=dtype)
    return rrnn, lstm


def train_classifier(model, *, steps: int, seed: int, batch_size: int = DEMO_BATCH,
                     lr: float = DEMO_LR) -> dict:
    """Adam on fresh batches of the demo task (the data stream depends only on ``seed``).

    Returns ``{"steps", "seconds", "loss"}`` (mean training loss of the last 20 steps, None
    without steps).
    """
    rng = np.random.default_rng(_seed_streams(seed)[2])
    optimizer = Adam(model, lr=lr, clip_norm=DEMO_CLIP)
    K, F = DEMO_TASK["num_objects"], DEMO_TASK["num_features"]
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y, _ = nf.make_batch(rng, batch_size, K, F, active_objects=DEMO_TASK["active_objects"],
                                active_features=DEMO_TASK["active_features"], dtype=model.dtype)
        optimizer.zero_grad()
        loss, _ = batch_gradient(model, x, y)
        optimizer.step()
        losses.append(loss)
    return {"steps": steps, "seconds": time.perf_counter() - t0,
            "loss": float(np.mean(losses[-20:])) if losses else None}
