"""Held-out evaluation: loss, accuracy and accuracy per rank n of a model on an EvalSet."""
from __future__ import annotations

import numpy as np

import layers
import nth_farthest as nf

EVAL_BATCH = 1000          # held-out examples per forward pass


def evaluate(model, eval_set: nf.EvalSet, num_objects: int, *,
             batch_size: int = EVAL_BATCH) -> dict:
    """Held-out metrics of ``model`` on ``eval_set`` (forward passes of ``batch_size``).

    Returns ``{"heldout_loss", "heldout_acc", "acc_per_n"}``: mean cross-entropy, accuracy, and
    a list with the accuracy on the examples of each rank n in [0, num_objects) (None for a rank
    with no example).
    """
    K = num_objects
    total_loss = 0.0
    correct = np.zeros(K)
    count = np.zeros(K)
    for x, y, n in eval_set.batches(batch_size):
        logits, _ = model.forward(x)
        loss, _, _ = layers.softmax_cross_entropy(logits, y)
        total_loss += loss * len(y)
        hit = (np.argmax(logits, axis=1) == y).astype(np.float64)
        correct += np.bincount(n, weights=hit, minlength=K)[:K]
        count += np.bincount(n, minlength=K)[:K]
    size = len(eval_set)
    return {"heldout_loss": total_loss / size,
            "heldout_acc": float(correct.sum() / size),
            "acc_per_n": [float(c / m) if m else None for c, m in zip(correct, count)]}


def evaluate_with_average(model, average, eval_set: nf.EvalSet, num_objects: int, *,
                          batch_size: int = EVAL_BATCH) -> tuple[dict, dict]:
    """``(metrics, also)``: the metrics of the averaged weights when there is an ``average``
    (``also`` then holds the last iterate's accuracy and loss), else of the model as it is."""
    if average is None:
        return evaluate(model, eval_set, num_objects, batch_size=batch_size), {}
    with average.applied():
        result = evaluate(model, eval_set, num_objects, batch_size=batch_size)
    last = evaluate(model, eval_set, num_objects, batch_size=batch_size)
    return result, {"last_iterate_acc": last["heldout_acc"],
                    "last_iterate_loss": last["heldout_loss"]}
