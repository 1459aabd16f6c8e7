"""Shared layers: forward invariants, gradient proofs and bad input."""
import numpy as np
import pytest

import autograd_checks as ac
import layers


@pytest.mark.parametrize("name", [n for n in ac.CASES if n.startswith("layers.")])
def test_layer_gradients(name):
    results = ac.CASES[name]()
    assert results, "no tensor was checked"
    bad = [(r.case, r.tensor, r.error) for r in results if not r.passed]
    assert not bad, bad


def test_checker_catches_a_wrong_backward():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    results = ac.check_gradients("wrong", lambda inp: (np.tanh(inp["x"]),) * 2,
                                 lambda d, y: {"x": d * (1 - y)}, {"x": x})
    assert not results[0].passed


def test_checker_fails_an_input_the_backward_forgot():
    x = np.ones((2, 2))
    results = ac.check_gradients("forgot", lambda inp: (inp["x"] * 2, None),
                                 lambda d, c: {}, {"x": x})
    assert not results[0].passed


def test_layernorm_rows_have_zero_mean_unit_variance():
    x = np.random.default_rng(0).standard_normal((5, 7, 16)) * 3 + 2
    y, _ = layers.LayerNorm(16).forward(x)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1, rtol=1e-4)


def test_softmax_rows_sum_to_one_even_for_huge_logits():
    x = np.array([[1000.0, 1001.0, 999.0], [-1e4, 0.0, 1e4]])
    p = layers.softmax(x)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(-1), 1)


def test_sigmoid_is_stable_and_matches_definition():
    x = np.array([-800.0, -5.0, 0.0, 5.0, 800.0])
    with np.errstate(over="raise"):
        y = layers.sigmoid(x)
    np.testing.assert_allclose(y[1:4], 1 / (1 + np.exp(-x[1:4])))
    assert y[0] == 0.0 and y[-1] == 1.0
    assert layers.sigmoid(np.zeros(2, np.float32)).dtype == np.float32


def test_cross_entropy_value_and_gradient():
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    loss, dlogits, probs = layers.softmax_cross_entropy(logits, np.array([0, 2]))
    assert loss == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2)
    np.testing.assert_allclose(dlogits, (probs - np.eye(3)[[0, 2]]) / 2)


def test_linear_forward_value():
    lin = layers.Linear(2, 2, rng=np.random.default_rng(0))
    lin.params["W"][...] = [[1, 2], [3, 4]]
    lin.params["b"][...] = [0.5, -0.5]
    y, _ = lin.forward(np.array([[1.0, 1.0]]))
    np.testing.assert_allclose(y, [[4.5, 5.5]])


def test_gradients_accumulate_and_zero_grad_clears():
    rng = np.random.default_rng(0)
    lin = layers.Linear(3, 2, rng=rng)
    x = rng.standard_normal((4, 3))
    y, cache = lin.forward(x)
    lin.backward(np.ones_like(y), cache)
    once = lin.grads["W"].copy()
    lin.backward(np.ones_like(y), cache)
    np.testing.assert_allclose(lin.grads["W"], 2 * once)
    lin.zero_grad()
    assert not lin.grads["W"].any()


def test_dotted_names_and_state_dict_round_trip():
    mlp = layers.MLP([3, 4, 2], rng=np.random.default_rng(0))
    assert list(mlp.parameters()) == ["fc0.W", "fc0.b", "fc1.W", "fc1.b"]
    assert list(mlp.gradients()) == list(mlp.parameters())
    state = mlp.state_dict()
    before = mlp.parameters()["fc0.W"]
    before[...] = 0
    mlp.load_state_dict(state)
    np.testing.assert_array_equal(mlp.parameters()["fc0.W"], state["fc0.W"])
    with pytest.raises(ValueError, match="fc0.W"):
        mlp.load_state_dict({**state, "fc0.W": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="missing"):
        mlp.load_state_dict({"fc0.W": state["fc0.W"]})


def test_float32_modules_stay_float32():
    mlp = layers.MLP([3, 4, 2], rng=np.random.default_rng(0), dtype=np.float32)
    y, cache = mlp.forward(np.ones((2, 3), np.float32))
    assert y.dtype == np.float32
    dx = mlp.backward(np.ones_like(y), cache)
    assert dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in mlp.gradients().values())


@pytest.mark.parametrize("bad, err, text", [
    (0, ValueError, "in_features"), (-3, ValueError, "in_features"),
    (2.5, TypeError, "in_features"), (True, TypeError, "in_features")])
def test_constructor_rejects_bad_sizes(bad, err, text):
    with pytest.raises(err, match=text):
        layers.Linear(bad, 2)


def test_bad_dtype_and_mlp_sizes():
    with pytest.raises(TypeError, match="dtype"):
        layers.Linear(2, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="sizes"):
        layers.MLP([3])
    with pytest.raises(ValueError, match=r"sizes\[1\]"):
        layers.MLP([3, 0, 2])


def test_check_array_names_argument_and_problem():
    with pytest.raises(ValueError, match="x must have 3 dimensions, got 2"):
        layers.check_array("x", np.zeros((2, 2)), ndim=3)
    with pytest.raises(ValueError, match="x must have last dimension 5"):
        layers.check_array("x", np.zeros((2, 4)), last_dim=5)
    with pytest.raises(ValueError, match="non-finite"):
        layers.check_array("x", np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        layers.check_array("x", np.zeros((0, 3)))
    with pytest.raises(TypeError, match="real numbers"):
        layers.check_array("x", np.array(["a"]))
    with pytest.raises(TypeError, match="numpy array"):
        layers.check_array("x", object())
    with pytest.raises(ValueError, match="batch sizes must match"):
        layers.check_same_batch(x=np.zeros((2, 3)), h0=np.zeros((3, 3)))


def test_cross_entropy_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must lie in"):
        layers.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels must be integers"):
        layers.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))


def test_init_fan_in_is_a_truncated_normal_of_stddev_one_over_sqrt_fan_in():
    w = layers.init_fan_in(np.random.default_rng(0), 64, (64, 4096))
    scaled = w * np.sqrt(64)
    assert np.abs(scaled).max() <= 2.0                      # nothing beyond 2 stddev
    assert np.abs(scaled).max() > 1.99                      # but the whole range is used
    # stddev of a standard normal truncated at +-2: 0.8796
    assert abs(scaled.std() - 0.8796) < 0.01
    assert abs(scaled.mean()) < 0.01


def test_workspace_reuses_an_array_only_once_nothing_else_holds_it():
    ws = layers.Workspace()
    a = ws.empty("x", (3, 4), np.float32)
    view = a[1:]
    del a
    b = ws.empty("x", (3, 4), np.float32)
    assert b.base is None and not np.shares_memory(b, view)    # a view of the first is alive
    first = id(b)
    del b
    assert id(ws.empty("x", (3, 4), np.float32)) == first      # held by nothing else now
    assert ws.empty("x", (2, 4), np.float32).shape == (2, 4)   # another shape: a new one
    assert ws.empty("x", (2, 4), np.float64).dtype == np.float64
