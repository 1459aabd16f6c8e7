"""LSTM baseline: gradient proofs, forward values, initialisation, API shapes and bad input."""
import json

import numpy as np
import pytest

import autograd_checks as ac
from lstm_baseline import LSTM, LSTMCell, LSTMClassifier

B, T, I, H = 3, 7, 5, 4


def _rand(rng, *shape):
    return rng.standard_normal(shape)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# -- gradient proofs --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in ac.CASES if n.startswith("lstm.")])
def test_lstm_gradients(name):
    results = ac.CASES[name]()
    assert results, "no tensor was checked"
    bad = [(r.case, r.tensor, r.error) for r in results if not r.passed]
    assert not bad, bad


def test_lstm_cases_are_registered():
    assert {"lstm.LSTMCell", "lstm.LSTM", "lstm.LSTMClassifier"} <= set(ac.CASES)


def test_sequence_case_checks_initial_states():
    tensors = {r.tensor for r in ac.CASES["lstm.LSTM"]() if r.case == "lstm.LSTM"}
    assert {"x", "h0", "c0", "cell.W_x", "cell.W_h", "cell.b"} <= tensors


# -- forward values ---------------------------------------------------------------------------


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_cell_forward_matches_hand_written_equations(rng):
    cell = LSTMCell(2, 3, rng=rng)
    for p in cell.params.values():
        p[...] = rng.standard_normal(p.shape)
    x, h_prev, c_prev = _rand(rng, 2, 2), _rand(rng, 2, 3), _rand(rng, 2, 3)
    Wx, Wh, b = cell.params["W_x"], cell.params["W_h"], cell.params["b"]

    def gate(k):  # gate k of [i, f, g, o], each its own (.., 3) slice of the 12 columns
        cols = slice(3 * k, 3 * k + 3)
        return x @ Wx[:, cols] + h_prev @ Wh[:, cols] + b[cols]

    i, f, g, o = _sig(gate(0)), _sig(gate(1)), np.tanh(gate(2)), _sig(gate(3))
    c_ref = f * c_prev + i * g
    h_ref = o * np.tanh(c_ref)

    (h, c), _ = cell.forward(x, h_prev, c_prev)
    np.testing.assert_allclose(c, c_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h, h_ref, rtol=1e-12, atol=1e-12)


def test_cell_forward_scalar_example():
    # One unit, one input, all weights chosen so every gate is easy to evaluate by hand.
    cell = LSTMCell(1, 1, rng=np.random.default_rng(0))
    cell.params["W_x"][...] = [[1.0, 0.0, 2.0, -1.0]]
    cell.params["W_h"][...] = [[0.0, 0.5, 0.0, 0.0]]
    cell.params["b"][...] = [0.0, 0.0, 0.0, 0.0]
    x, h_prev, c_prev = np.array([[0.5]]), np.array([[2.0]]), np.array([[-1.0]])
    i, f, g, o = _sig(0.5), _sig(1.0), np.tanh(1.0), _sig(-0.5)
    c_ref = f * -1.0 + i * g
    (h, c), _ = cell.forward(x, h_prev, c_prev)
    assert c[0, 0] == pytest.approx(c_ref, abs=1e-14)
    assert h[0, 0] == pytest.approx(o * np.tanh(c_ref), abs=1e-14)


def test_sequence_equals_cell_unrolled(rng):
    lstm = LSTM(I, H, rng=rng)
    x, h0, c0 = _rand(rng, B, T, I), _rand(rng, B, H), _rand(rng, B, H)
    outs, hT, cT = lstm.forward(x, h0, c0, return_state=True)
    h, c = h0, c0
    for t in range(T):
        (h, c), _ = lstm.cell.forward(x[:, t], h, c)
        np.testing.assert_allclose(outs[:, t], h, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hT, h, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(cT, c, rtol=1e-12, atol=1e-13)


def test_default_state_is_zero(rng):
    lstm = LSTM(I, H, rng=rng)
    x = _rand(rng, B, T, I)
    zeros = np.zeros((B, H))
    np.testing.assert_array_equal(lstm.forward(x), lstm.forward(x, zeros, zeros))


def test_forward_does_not_modify_inputs(rng):
    lstm = LSTM(I, H, rng=rng)
    x, h0, c0 = _rand(rng, B, T, I), _rand(rng, B, H), _rand(rng, B, H)
    copies = [a.copy() for a in (x, h0, c0)]
    outs, cache = lstm.forward(x, h0, c0, return_cache=True)
    lstm.backward(np.ones_like(outs), cache)
    for a, a0 in zip((x, h0, c0), copies):
        np.testing.assert_array_equal(a, a0)


def test_continuing_from_returned_state(rng):
    lstm = LSTM(I, H, rng=rng)
    x, h0, c0 = _rand(rng, B, T, I), _rand(rng, B, H), _rand(rng, B, H)
    full, h_full, c_full = lstm.forward(x, h0, c0, return_state=True)
    T1 = 3
    first, h1, c1 = lstm.forward(x[:, :T1], h0, c0, return_state=True)
    second, h2, c2 = lstm.forward(x[:, T1:], h1, c1, return_state=True)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, rtol=1e-12,
                               atol=1e-14)
    np.testing.assert_allclose(h2, h_full, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c2, c_full, rtol=1e-12, atol=1e-14)


# -- initialisation ---------------------------------------------------------------------------


def test_forget_bias_is_one_and_other_biases_zero():
    cell = LSTMCell(I, H, rng=np.random.default_rng(1))
    b = cell.params["b"]
    np.testing.assert_array_equal(b[H:2 * H], 1.0)
    np.testing.assert_array_equal(b[:H], 0.0)
    np.testing.assert_array_equal(b[2 * H:], 0.0)


def test_recurrent_gate_blocks_are_orthogonal_and_distinct():
    cell = LSTMCell(I, 6, rng=np.random.default_rng(2))
    Wh = cell.params["W_h"]
    assert Wh.shape == (6, 24)
    blocks = [Wh[:, 6 * k:6 * k + 6] for k in range(4)]
    for blk in blocks:
        np.testing.assert_allclose(blk.T @ blk, np.eye(6), atol=1e-12)
        np.testing.assert_allclose(blk @ blk.T, np.eye(6), atol=1e-12)
    for k in range(1, 4):
        assert not np.allclose(blocks[0], blocks[k])


def test_input_weights_truncated_normal_fan_in():
    cell = LSTMCell(16, 8, rng=np.random.default_rng(3))
    Wx = cell.params["W_x"]
    assert Wx.shape == (16, 32)
    assert np.abs(Wx).max() <= 2 / np.sqrt(16)          # cut at 2 stddev
    assert np.abs(Wx).max() > 1.5 / np.sqrt(16)         # spread over the whole range, not tiny


def test_same_rng_seed_same_weights():
    a = LSTM(I, H, rng=np.random.default_rng(5)).state_dict()
    b = LSTM(I, H, rng=np.random.default_rng(5)).state_dict()
    assert a.keys() == b.keys() == {"cell.W_x", "cell.W_h", "cell.b"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# -- API shapes -------------------------------------------------------------------------------


def test_return_flags_shapes(rng):
    lstm = LSTM(I, H, rng=rng)
    x = _rand(rng, B, T, I)
    out = lstm.forward(x)
    assert isinstance(out, np.ndarray) and out.shape == (B, T, H)
    last = lstm.forward(x, return_sequences=False)
    assert isinstance(last, np.ndarray) and last.shape == (B, H)
    np.testing.assert_array_equal(last, out[:, -1])
    outs, h, c = lstm.forward(x, return_state=True)
    assert outs.shape == (B, T, H) and h.shape == c.shape == (B, H)
    np.testing.assert_array_equal(h, outs[:, -1])
    outs, cache = lstm.forward(x, return_cache=True)
    assert outs.shape == (B, T, H) and isinstance(cache, dict)
    res = lstm.forward(x, return_sequences=False, return_state=True, return_cache=True)
    assert len(res) == 4 and res[0].shape == res[1].shape == res[2].shape == (B, H)
    assert res[0] is not res[1]


def test_backward_returns_initial_state_grads_only_if_state_given(rng):
    lstm = LSTM(I, H, rng=rng)
    x, h0, c0 = _rand(rng, B, T, I), _rand(rng, B, H), _rand(rng, B, H)
    outs, cache = lstm.forward(x, return_cache=True)
    dx = lstm.backward(np.ones_like(outs), cache)
    assert isinstance(dx, np.ndarray) and dx.shape == x.shape
    outs, cache = lstm.forward(x, h0, c0, return_cache=True)
    dx, dh0, dc0 = lstm.backward(np.ones_like(outs), cache)
    assert dx.shape == x.shape and dh0.shape == dc0.shape == (B, H)


def test_last_step_gradient_equals_dh_T(rng):
    # With return_sequences=False the output is h_T, so a gradient on it equals one on h_T.
    lstm = LSTM(I, H, rng=rng)
    x, d = _rand(rng, B, T, I), _rand(rng, B, H)
    last, cache = lstm.forward(x, return_sequences=False, return_cache=True)
    dx1 = lstm.backward(d, cache)
    g1 = {k: v.copy() for k, v in lstm.gradients().items()}
    lstm.zero_grad()
    dx2 = lstm.backward(np.zeros_like(d), cache, dh_T=d)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-12, atol=1e-15)
    for k, v in lstm.gradients().items():
        np.testing.assert_allclose(v, g1[k], rtol=1e-12, atol=1e-15)


def test_gradients_accumulate_over_two_backward_calls(rng):
    lstm = LSTM(I, H, rng=rng)
    x = _rand(rng, B, T, I)
    outs, cache = lstm.forward(x, return_cache=True)
    d = _rand(rng, *outs.shape)
    dx1 = lstm.backward(d, cache)
    once = {k: v.copy() for k, v in lstm.gradients().items()}
    assert all(np.abs(v).max() > 0 for v in once.values())
    dx2 = lstm.backward(d, cache)
    np.testing.assert_array_equal(dx1, dx2)
    for k, v in lstm.gradients().items():
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-13)
    lstm.zero_grad()
    assert not any(v.any() for v in lstm.gradients().values())


def test_cell_gradients_accumulate(rng):
    cell = LSTMCell(I, H, rng=rng)
    (h, c), cache = cell.forward(_rand(rng, B, I), _rand(rng, B, H), _rand(rng, B, H))
    cell.backward(np.ones_like(h), None, cache)
    once = {k: v.copy() for k, v in cell.grads.items()}
    cell.backward(np.ones_like(h), None, cache)
    for k, v in cell.grads.items():
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-13)


def test_cell_split_api_matches_forward(rng):
    cell = LSTMCell(I, H, rng=rng)
    x, h_prev, c_prev = _rand(rng, B, I), _rand(rng, B, H), _rand(rng, B, H)
    (h, c), cache = cell.forward(x, h_prev, c_prev)
    dh, dc = _rand(rng, B, H), _rand(rng, B, H)
    dx, dh_prev, dc_prev = cell.backward(dh, dc, cache)
    full = {k: v.copy() for k, v in cell.grads.items()}
    cell.zero_grad()
    xw, lin_cache = cell.project_input(x)
    (h2, c2), step_cache = cell.step(xw, h_prev, c_prev)
    dxw, dh_prev2, dc_prev2 = cell.step_backward(dh, dc, step_cache)
    dx2 = cell.project_input_backward(dxw, lin_cache)
    for a, b in ((h, h2), (c, c2), (dx, dx2), (dh_prev, dh_prev2), (dc_prev, dc_prev2)):
        np.testing.assert_array_equal(a, b)
    for k in full:
        np.testing.assert_allclose(cell.grads[k], full[k], rtol=1e-14)


# -- dtypes -----------------------------------------------------------------------------------


def test_float32_stays_float32(rng):
    lstm = LSTM(I, H, rng=rng, dtype=np.float32)
    assert all(p.dtype == np.float32 for p in lstm.parameters().values())
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    outs, h, c, cache = lstm.forward(x, h0, h0, return_state=True, return_cache=True)
    assert outs.dtype == h.dtype == c.dtype == np.float32
    dx, dh0, dc0 = lstm.backward(np.ones_like(outs), cache, dh_T=np.ones_like(h),
                                 dc_T=np.ones_like(c))
    assert dx.dtype == dh0.dtype == dc0.dtype == np.float32
    assert all(g.dtype == np.float32 for g in lstm.gradients().values())
    # float64 upstream gradients do not upcast a float32 model either
    dx64 = lstm.backward(np.ones(outs.shape), cache)[0]
    assert dx64.dtype == np.float32


def test_float32_close_to_float64(rng):
    l64 = LSTM(I, H, rng=np.random.default_rng(4))
    l32 = LSTM(I, H, rng=np.random.default_rng(4), dtype=np.float32)
    x = rng.standard_normal((B, T, I))
    np.testing.assert_allclose(l32.forward(x.astype(np.float32)), l64.forward(x), atol=1e-5)


def test_int_and_other_float_inputs_cast_to_model_dtype(rng):
    lstm = LSTM(I, H, rng=rng, dtype=np.float32)
    x_int = rng.integers(-2, 3, size=(B, T, I))
    assert lstm.forward(x_int).dtype == np.float32
    assert lstm.forward(x_int.astype(np.float64)).dtype == np.float32
    np.testing.assert_array_equal(lstm.forward(x_int), lstm.forward(x_int.astype(np.float32)))
    l64 = LSTM(I, H, rng=rng)
    assert l64.forward(x_int.astype(np.float32)).dtype == np.float64


def test_classifier_float32(rng):
    model = LSTMClassifier(I, H, 3, mlp_hidden=(6,), rng=rng, dtype=np.float32)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    logits, cache = model.forward(x)
    assert logits.dtype == np.float32
    assert model.backward(np.ones_like(logits), cache).dtype == np.float32


# -- classifier -------------------------------------------------------------------------------


def test_classifier_interface_and_children(rng):
    model = LSTMClassifier(I, H, 4, mlp_hidden=(8, 6), rng=rng)
    names = set(model.parameters())
    assert {"lstm.cell.W_x", "lstm.cell.W_h", "lstm.cell.b", "readout.fc0.W", "readout.fc1.W",
            "readout.fc2.W", "readout.fc2.b"} == names - {"readout.fc0.b", "readout.fc1.b"}
    assert model.readout.sizes == [H, 8, 6, 4]
    x = _rand(rng, B, T, I)
    logits, cache = model.forward(x)
    assert logits.shape == (B, 4)
    # logits come from the last hidden state
    h_T = model.lstm.forward(x, return_sequences=False)
    np.testing.assert_allclose(logits, model.readout.forward(h_T)[0], rtol=1e-13)
    dx = model.backward(np.ones_like(logits), cache)
    assert dx.shape == x.shape
    # logits carry no activation: they can be negative
    model.readout.layers[-1].params["b"][...] = -100.0
    assert (model.forward(x)[0] < 0).all()


def test_classifier_default_readout_is_paper_sized():
    model = LSTMClassifier(I, H, 8, rng=np.random.default_rng(0))
    assert model.readout.sizes == [H, 256, 256, 256, 256, 8]


def test_classifier_empty_mlp_hidden_is_one_linear(rng):
    model = LSTMClassifier(I, H, 3, mlp_hidden=(), rng=rng)
    assert len(model.readout.layers) == 1 and model.readout.sizes == [H, 3]
    logits, cache = model.forward(_rand(rng, B, T, I))
    assert logits.shape == (B, 3)


def test_classifier_config_rebuilds_the_model(rng):
    model = LSTMClassifier(I, H, 3, mlp_hidden=(7, 5), rng=rng)
    config = json.loads(json.dumps(model.config))
    assert config == {"input_size": I, "hidden_size": H, "num_classes": 3, "mlp_hidden": [7, 5]}
    clone = LSTMClassifier(**config, dtype=np.float64)
    clone.load_state_dict(model.state_dict())
    x = _rand(rng, B, T, I)
    np.testing.assert_array_equal(clone.forward(x)[0], model.forward(x)[0])


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(x=np.zeros((B, I))), ValueError, r"x must have 3 dimensions, got 2"),
    (dict(x=np.zeros((B, T, I + 1))), ValueError, rf"x must have last dimension {I}"),
    (dict(x=np.zeros((B, 0, I))), ValueError, r"x must have shape .*T >= 1.*\(3, 0, 5\)"),
    (dict(x=np.full((B, T, I), np.nan)), ValueError, r"x contains .* non-finite"),
    (dict(x=np.full((B, T, I), np.inf)), ValueError, r"x contains .* non-finite"),
    (dict(x="abc"), TypeError, r"x must"),
    (dict(x=np.zeros((B, T, I), dtype=complex)), TypeError, r"x must hold real numbers"),
    (dict(h0=np.zeros((B, H + 1))), ValueError, rf"h0 must have last dimension {H}"),
    (dict(h0=np.zeros((B, 1, H))), ValueError, r"h0 must have 2 dimensions"),
    (dict(c0=np.zeros((B, H + 1))), ValueError, rf"c0 must have last dimension {H}"),
    (dict(h0=np.zeros((B + 1, H))), ValueError, r"batch sizes must match.*h0"),
    (dict(c0=np.zeros((B + 1, H))), ValueError, r"batch sizes must match.*c0"),
    (dict(h0=np.full((B, H), np.nan)), ValueError, r"h0 contains"),
])
def test_lstm_bad_input(kwargs, err, match):
    lstm = LSTM(I, H, rng=np.random.default_rng(0))
    args = dict(x=np.zeros((B, T, I)), h0=None, c0=None)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        lstm.forward(args["x"], args["h0"], args["c0"])


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(x=np.zeros((B, T, I))), ValueError, r"x must have 2 dimensions"),
    (dict(x=np.zeros((B, I - 1))), ValueError, rf"x must have last dimension {I}"),
    (dict(h_prev=np.zeros((B, H - 1))), ValueError, r"h_prev must have last dimension"),
    (dict(c_prev=np.zeros((B - 1, H))), ValueError, r"batch sizes must match.*c_prev"),
    (dict(c_prev=np.full((B, H), np.inf)), ValueError, r"c_prev contains"),
])
def test_cell_bad_input(kwargs, err, match):
    cell = LSTMCell(I, H, rng=np.random.default_rng(0))
    args = dict(x=np.zeros((B, I)), h_prev=np.zeros((B, H)), c_prev=np.zeros((B, H)))
    args.update(kwargs)
    with pytest.raises(err, match=match):
        cell.forward(args["x"], args["h_prev"], args["c_prev"])


def test_bad_upstream_gradients_raise_before_state_changes(rng):
    lstm = LSTM(I, H, rng=rng)
    outs, cache = lstm.forward(_rand(rng, B, T, I), return_cache=True)
    with pytest.raises(ValueError, match=rf"doutputs must have shape \({B}, {T}, {H}\)"):
        lstm.backward(np.ones((B, H)), cache)
    with pytest.raises(ValueError, match=r"dh_T must have shape"):
        lstm.backward(np.ones_like(outs), cache, dh_T=np.ones((B, H + 1)))
    with pytest.raises(ValueError, match=r"dc_T contains"):
        lstm.backward(np.ones_like(outs), cache, dc_T=np.full((B, H), np.nan))
    assert not any(g.any() for g in lstm.gradients().values())
    model = LSTMClassifier(I, H, 3, mlp_hidden=(4,), rng=rng)
    logits, cache = model.forward(_rand(rng, B, T, I))
    with pytest.raises(ValueError, match=r"dlogits must have shape \(3, 3\)"):
        model.backward(np.ones((B, 4)), cache)
    assert not any(g.any() for g in model.gradients().values())


def test_bad_input_leaves_state_untouched(rng):
    lstm = LSTM(I, H, rng=rng)
    before = lstm.state_dict()
    with pytest.raises(ValueError):
        lstm.forward(np.zeros((B, T, I)), np.zeros((B + 1, H)))
    for k, v in lstm.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("args, err, match", [
    ((0, H), ValueError, r"input_size must be an integer >= 1, got 0"),
    ((I, -2), ValueError, r"hidden_size must be an integer >= 1, got -2"),
    ((2.5, H), TypeError, r"input_size must be an integer"),
    ((I, True), TypeError, r"hidden_size must be an integer"),
])
def test_non_positive_sizes(args, err, match):
    for cls in (LSTMCell, LSTM):
        with pytest.raises(err, match=match):
            cls(*args)
    with pytest.raises(err, match=match):
        LSTMClassifier(*args, 3)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(num_classes=0), ValueError, r"num_classes must be an integer >= 1, got 0"),
    (dict(mlp_hidden=(8, 0)), ValueError, r"mlp_hidden\[1\] must be an integer >= 1, got 0"),
    (dict(mlp_hidden=16), TypeError, r"mlp_hidden must be a sequence"),
    (dict(dtype=np.int32), TypeError, r"dtype must be float32 or float64"),
])
def test_classifier_bad_arguments(kwargs, err, match):
    args = dict(input_size=I, hidden_size=H, num_classes=3)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        LSTMClassifier(**args)


def test_two_live_caches_keep_their_own_buffers(rng):
    """The sequence buffers are reused from step to step (a workspace), but never while a
    cache of an earlier forward still holds them."""
    model = LSTM(I, H, rng=rng)
    x1, x2 = _rand(rng, B, T, I), _rand(rng, B, T, I)
    d = _rand(rng, B, T, H)
    out1, cache1 = model.forward(x1, return_cache=True)
    out1 = out1.copy()
    out2, cache2 = model.forward(x2, return_cache=True)          # cache1 still alive
    model.zero_grad()
    dx1 = model.backward(d, cache1)
    grads1 = {n: g.copy() for n, g in model.gradients().items()}
    fresh = LSTM(I, H, rng=np.random.default_rng(1))
    fresh.load_state_dict(model.state_dict())
    ref_out, ref_cache = fresh.forward(x1, return_cache=True)
    np.testing.assert_array_equal(out1, ref_out)
    np.testing.assert_array_equal(dx1, fresh.backward(d, ref_cache))
    for name, g in fresh.gradients().items():
        np.testing.assert_array_equal(grads1[name], g)
    del cache1, cache2
    _, cache3 = model.forward(x1, return_cache=True)
    assert cache3["act"].base is not None                        # a view of a reused buffer
