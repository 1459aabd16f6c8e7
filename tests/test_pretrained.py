"""The shipped models (relational_rnn.pretrained) load in one line and reproduce the held-out
accuracy recorded when they were trained."""
import os

import numpy as np
import pytest

import nth_farthest as nf
from relational_rnn.evaluation import evaluate
from relational_rnn.pretrained import PRETRAINED, load_pretrained, pretrained_path
from relational_rnn.run_folder import read_metrics, read_run_config


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_a_shipped_model_reproduces_its_recorded_accuracy(name):
    model, info = load_pretrained(name, with_info=True)
    assert model.dtype == np.float32 and info["weights_only"] == info["weights"]
    folder = os.path.dirname(pretrained_path(name))
    t = read_run_config(os.path.dirname(folder)).train
    recorded = [e for e in read_metrics(os.path.join(folder, "metrics.jsonl"))
                if e["event"] == "eval" and e["step"] == info["step"]][-1]
    eval_set = nf.make_eval_set(t.eval_seed, t.eval_size, t.num_objects, t.num_features,
                                dtype=t.dtype)
    measured = evaluate(model, eval_set, t.num_objects)
    key = "heldout_acc" if info["weights"] == recorded["weights"] else "last_iterate_acc"
    assert measured["heldout_acc"] == pytest.approx(recorded[key], abs=1.5 / t.eval_size)


def test_an_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="rmc-4x4"):
        load_pretrained("gru-4x4")
