"""Data-parallel gradients (parallel.py): the sum over shards is the batch gradient."""
import numpy as np
import pytest

import nth_farthest as nf
from relational_rnn.registry import build_model
from relational_rnn.parallel import DataParallel, batch_gradient
from test_nth_farthest_training import TINY, QUIET, params_of, run_cli, strict_json_lines

K, F = 4, 4
SIZES = {"mem_slots": 2, "head_size": 4, "num_heads": 2, "num_blocks": 1, "key_size": None,
         "attention_mlp_layers": 2, "gate_style": "unit", "mlp_hidden": [16]}


def rmc(seed=0):
    return build_model("rmc", SIZES, K, F, dtype=np.float64,
                                rng=np.random.default_rng(seed))


def one_process_gradient(model, x, y):
    model.zero_grad()
    loss, correct = batch_gradient(model, x, y)
    return loss, correct, {n: g.copy() for n, g in model.gradients().items()}


def test_two_processes_give_the_batch_gradient_of_one_also_for_uneven_shards():
    model = rmc()
    # 7 examples: shards of 4 and 3 (weights 4/7 and 3/7), the worker's shard the smaller.
    x, y, _ = nf.make_batch(np.random.default_rng(1), 7, K, F, dtype=np.float64)
    loss1, correct1, grads1 = one_process_gradient(model, x, y)
    before = {n: p.copy() for n, p in model.parameters().items()}
    with DataParallel(model, "rmc", SIZES, K, F, workers=2) as parallel:
        for _ in range(2):          # twice: the second step must not add to the first
            loss2, correct2 = parallel.gradient(x, y)
            assert loss2 == pytest.approx(loss1, rel=1e-13)
            assert correct2 == correct1
            for name, g in model.gradients().items():
                np.testing.assert_allclose(g, grads1[name], rtol=1e-11, atol=1e-14,
                                           err_msg=name)
        # The workers follow the parameters: after an update the gradient is the new one.
        for p in model.parameters().values():
            p += 0.01
        loss3, _ = parallel.gradient(x, y)
        grads3 = {n: g.copy() for n, g in model.gradients().items()}
    loss4, _, grads4 = one_process_gradient(model, x, y)
    assert loss3 == pytest.approx(loss4, rel=1e-13) and loss3 != pytest.approx(loss1, rel=1e-6)
    for name in grads4:
        np.testing.assert_allclose(grads3[name], grads4[name], rtol=1e-11, atol=1e-14)
    for name, p in model.parameters().items():     # gradient() never changes the parameters
        np.testing.assert_array_equal(p, before[name] + 0.01)


def test_a_failing_worker_is_reported_and_bad_worker_counts_are_refused():
    model = rmc()
    x, y, _ = nf.make_batch(np.random.default_rng(1), 6, K, F, dtype=np.float64)
    y_bad = y.copy()
    y_bad[5] = K + 3                       # an out-of-range label in the worker's shard only
    with DataParallel(model, "rmc", SIZES, K, F, workers=2) as parallel:
        with pytest.raises(RuntimeError, match="worker 1 failed"):
            parallel.gradient(x, y_bad)
        with pytest.raises(ValueError, match="workers=2 exceeds the batch size 1"):
            parallel.gradient(x[:1], y[:1])
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        DataParallel(model, "rmc", SIZES, K, F, workers=0)
    with pytest.raises(TypeError, match="workers must be an integer"):
        DataParallel(model, "rmc", SIZES, K, F, workers=2.0)
    # Sizes that do not build this model: refused when the workers start, not at a step.
    with pytest.raises(RuntimeError, match="(?s)worker 1 failed.*does not match the parent's model"):
        DataParallel(model, "rmc", dict(SIZES, head_size=8), K, F, workers=2)


def test_a_run_with_two_workers_follows_the_one_process_run_and_resumes(tmp_path):
    argv = ["--model", "rmc,lstm", "--steps", 20, *TINY, "--dtype", "float64"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli([*argv, "--out", one]) == 0
    assert run_cli([*argv, "--out", two, "--workers", 2, "--steps", 12]) == 0
    assert run_cli(["--resume", two, "--steps", 20, "--workers", 2, *QUIET]) == 0
    for kind in ("rmc", "lstm"):
        p_one, info_one = params_of(one / kind)
        p_two, info_two = params_of(two / kind)
        assert info_one["step"] == info_two["step"] == 20
        # The same updates up to float rounding (sums in another order); atol for parameters
        # whose exact gradient is 0, where Adam scales the rounding noise up.
        for name in p_one:
            np.testing.assert_allclose(p_two[name], p_one[name], rtol=1e-9, atol=1e-9,
                                       err_msg=f"{kind} {name}")
    evals = [e for e in strict_json_lines(two / "rmc" / "metrics.jsonl")
             if e["event"] == "eval"]
    assert {e["workers"] for e in evals} == {2}
    one_evals = [e for e in strict_json_lines(one / "rmc" / "metrics.jsonl")
                 if e["event"] == "eval"]
    assert {e["workers"] for e in one_evals} == {1}
    # The split run evaluated once more, where its first invocation stopped (step 12).
    acc_two = {e["step"]: e["heldout_acc"] for e in evals}
    assert {e["step"]: e["heldout_acc"] for e in one_evals} == {
        step: acc for step, acc in acc_two.items() if step != 12}
