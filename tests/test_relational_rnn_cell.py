"""RelationalRNN (LSTM plus relational memory): gradient proofs, the documented usage,
agreement of the cell with the sequence model, state handling, dtypes and bad input."""
import json

import numpy as np
import pytest

import autograd_checks as ac
import relational_rnn_cell as rrc
from relational_rnn_cell import (RelationalMemory, RelationalRNN, RelationalRNNCell,
                                 RelationalRNNClassifier, RMCClassifier)

B, T, I, H, O = 3, 6, 5, 4, 2
N, D, HEADS = 3, 6, 2          # slots, slot size, heads (head_size 3)
SMALL = dict(num_slots=N, slot_size=D, num_heads=HEADS)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make_model(seed=0, **kw):
    args = dict(SMALL, rng=np.random.default_rng(seed))
    args.update(kw)
    return RelationalRNN(I, H, O, **args)


def make_cell(seed=0, **kw):
    args = dict(SMALL, rng=np.random.default_rng(seed))
    args.update(kw)
    return RelationalRNNCell(I, H, **args)


def random_state(rng, batch=B):
    return (rng.standard_normal((batch, H)), rng.standard_normal((batch, H)),
            rng.standard_normal((batch, N, D)))


# -- gradient proofs --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in ac.CASES if n.startswith("relational_rnn.")])
def test_gradients(name):
    results = ac.CASES[name]()
    assert results, "no tensor was checked"
    bad = [(r.case, r.tensor, r.error) for r in results if not r.passed]
    assert not bad, bad
    if name == "relational_rnn.RelationalRNN":   # every input and every child is checked
        assert {"x", "h0", "c0", "memory0", "cell.lstm.W_h", "cell.memory.input_proj.W",
                "cell.readout.W", "cell.combine.W", "output.W"} <= {r.tensor for r in results}


def test_gradient_cases_registered():
    names = {n for n in ac.CASES if n.startswith("relational_rnn.")}
    assert names == {"relational_rnn.RelationalRNNCell", "relational_rnn.RelationalRNN",
                     "relational_rnn.RelationalRNNClassifier"}


# -- documented usage -------------------------------------------------------------------------


def test_reference_usage_snippet():
    sequence = np.random.default_rng(1).standard_normal((2, 7, 32))
    model = RelationalRNN(input_size=32, hidden_size=64, output_size=16,
                          num_slots=4, slot_size=64, num_heads=2)
    outputs = model.forward(sequence, return_sequences=True)        # (B, T, output_size)
    outputs, h, c, memory = model.forward(sequence, return_state=True)
    # h, c: (B, hidden_size); memory: (B, num_slots, slot_size)
    assert outputs.shape == (2, 7, 16)
    assert h.shape == c.shape == (2, 64)
    assert memory.shape == (2, 4, 64)
    assert model.cell.memory.head_size == 32


def test_everything_importable_from_this_module():
    assert rrc.RelationalMemory is RelationalMemory
    assert rrc.RMCClassifier is RMCClassifier
    assert set(rrc.__all__) >= {"RelationalRNNCell", "RelationalRNN", "RelationalRNNClassifier",
                                "RelationalMemory", "RMCClassifier"}


def test_children_and_parameter_names():
    model = make_model()
    names = set(model.parameters())
    assert {"cell.lstm.W_x", "cell.lstm.W_h", "cell.lstm.b", "cell.memory.input_proj.W",
            "cell.memory.attn0.W_qkv", "cell.memory.W_gx", "cell.readout.W", "cell.combine.W",
            "output.W", "output.b"} <= names
    assert model.cell.memory.input_size == H
    assert model.parameters()["cell.readout.W"].shape == (D, H)
    assert model.parameters()["cell.combine.W"].shape == (2 * H, H)
    # LSTM forget-gate bias starts at 1
    np.testing.assert_array_equal(model.parameters()["cell.lstm.b"][H:2 * H], 1.0)


def test_return_flags(rng):
    model = make_model()
    x = rng.standard_normal((B, T, I))
    assert isinstance(model.forward(x), np.ndarray)
    assert model.forward(x, return_sequences=False).shape == (B, O)
    out, cache = model.forward(x, return_cache=True)
    assert out.shape == (B, T, O) and isinstance(cache, dict)
    out, h, c, m, cache = model.forward(x, return_state=True, return_cache=True)
    assert (out.shape, h.shape, c.shape, m.shape) == ((B, T, O), (B, H), (B, H), (B, N, D))


# -- agreement of the pieces ------------------------------------------------------------------


def test_return_sequences_false_equals_last_step(rng):
    model = make_model()
    x = rng.standard_normal((B, T, I))
    full, h1, c1, m1 = model.forward(x, return_state=True)
    last, h2, c2, m2 = model.forward(x, return_sequences=False, return_state=True)
    np.testing.assert_allclose(last, full[:, -1], rtol=1e-12, atol=1e-12)
    for a, b in ((h1, h2), (c1, c2), (m1, m2)):
        np.testing.assert_array_equal(a, b)


OPTIONS = [{}, dict(memory_input="input_and_hidden"), dict(memory_readout="slots"),
           dict(memory_input="input_and_hidden", memory_readout="slots")]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("given_state", [False, True])
def test_cell_loop_equals_sequence_model(rng, given_state, options):
    model = make_model(num_blocks=2, **options)
    x = rng.standard_normal((B, T, I))
    state0 = random_state(rng) if given_state else None
    args = state0 if given_state else ()
    outputs, h, c, memory = model.forward(x, *args, return_state=True)
    state, outs = state0, []
    for t in range(T):
        out, state, _ = model.cell.forward(x[:, t], state)
        outs.append(model.output.forward(out)[0])
    np.testing.assert_allclose(np.stack(outs, axis=1), outputs, rtol=1e-10, atol=1e-12)
    for a, b in zip(state, (h, c, memory)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options", OPTIONS)
def test_cell_loop_backward_equals_sequence_backward(rng, options):
    x = rng.standard_normal((B, T, I))
    state0 = random_state(rng)
    dy = rng.standard_normal((B, T, O))
    dfinal = random_state(rng)
    model = make_model(gate_style="memory", **options)
    *_, cache = model.forward(x, *state0, return_state=True, return_cache=True)
    dx, *dstate0 = model.backward(dy, cache, *dfinal)
    seq_grads = {k: v.copy() for k, v in model.gradients().items()}

    model.zero_grad()
    state, caches = state0, []
    for t in range(T):
        out, state, c = model.cell.forward(x[:, t], state)
        _, out_cache = model.output.forward(out)
        caches.append((c, out_cache))
    dstate, dxs = dfinal, []
    for t in range(T - 1, -1, -1):
        c, out_cache = caches[t]
        dout = model.output.backward(dy[:, t], out_cache)
        dx_t, dstate = model.cell.backward(dout, dstate, c)
        dxs.append(dx_t)
    np.testing.assert_allclose(np.stack(dxs[::-1], axis=1), dx, rtol=1e-9, atol=1e-12)
    for a, b in zip(dstate, dstate0):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    for name, g in model.gradients().items():
        np.testing.assert_allclose(g, seq_grads[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_state_continuation(rng):
    model = make_model()
    x = rng.standard_normal((B, T, I))
    full, h, c, m = model.forward(x, return_state=True)
    first, h1, c1, m1 = model.forward(x[:, :2], return_state=True)
    rest, h2, c2, m2 = model.forward(x[:, 2:], h1, c1, m1, return_state=True)
    np.testing.assert_allclose(np.concatenate([first, rest], axis=1), full, rtol=1e-12,
                               atol=1e-12)
    for a, b in ((h, h2), (c, c2), (m, m2)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_default_state_equals_zeros_and_identity_memory(rng):
    model = make_model()
    x = rng.standard_normal((B, T, I))
    zeros = np.zeros((B, H))
    memory0 = model.cell.memory.initial_state(B)
    np.testing.assert_array_equal(model.forward(x), model.forward(x, zeros, zeros, memory0))
    np.testing.assert_array_equal(memory0[0], np.eye(N, D))


def test_backward_returns_initial_state_grads_only_if_state_given(rng):
    model = make_model()
    x = rng.standard_normal((B, T, I))
    out, cache = model.forward(x, return_cache=True)
    dx = model.backward(np.ones_like(out), cache)
    assert isinstance(dx, np.ndarray) and dx.shape == x.shape
    out, cache = model.forward(x, *random_state(rng), return_cache=True)
    dx, dh0, dc0, dm0 = model.backward(np.ones_like(out), cache)
    assert (dx.shape, dh0.shape, dc0.shape, dm0.shape) == (x.shape, (B, H), (B, H), (B, N, D))


def test_gradients_accumulate(rng):
    model = make_model()
    x = rng.standard_normal((B, T, I))
    out, cache = model.forward(x, return_cache=True)
    dy = rng.standard_normal(out.shape)
    model.backward(dy, cache)
    once = {k: v.copy() for k, v in model.gradients().items()}
    model.backward(dy, cache)
    for k, g in model.gradients().items():
        np.testing.assert_allclose(g, 2 * once[k], rtol=1e-12, atol=1e-14)
    assert any(np.abs(g).max() > 0 for g in once.values())


def test_forward_does_not_modify_inputs(rng):
    model = make_model()
    x = rng.standard_normal((B, T, I))
    state = random_state(rng)
    copies = [a.copy() for a in (x, *state)]
    out, h, c, m, cache = model.forward(x, *state, return_state=True, return_cache=True)
    model.backward(np.ones_like(out), cache, np.ones_like(h), np.ones_like(c), np.ones_like(m))
    for a, b in zip((x, *state), copies):
        np.testing.assert_array_equal(a, b)


# -- behaviour --------------------------------------------------------------------------------


def test_same_seed_same_outputs_different_seed_different(rng):
    x = rng.standard_normal((B, T, I))
    a = make_model(seed=5).forward(x)
    b = make_model(seed=5).forward(x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, make_model(seed=6).forward(x))


@pytest.mark.parametrize("gate_style", ["unit", "memory", None])
def test_memory_changes_over_time(rng, gate_style):
    model = make_model(gate_style=gate_style)
    _, cache = model.forward(rng.standard_normal((B, T, I)), return_cache=True)
    memories = RelationalRNN.analysis(cache)["memory"]
    assert not np.allclose(memories[:, 0], model.cell.memory.initial_state(B))
    for t in range(1, T):
        assert not np.allclose(memories[:, t], memories[:, t - 1])


def test_memory_frozen_by_saturated_gates_does_not_move(rng):
    model = make_model(forget_bias=np.inf, input_bias=-np.inf)
    _, h, c, memory = model.forward(rng.standard_normal((B, T, I)), return_state=True)
    np.testing.assert_array_equal(memory, model.cell.memory.initial_state(B))


def test_outputs_depend_on_the_memory(rng):
    model = make_model()
    x = rng.standard_normal((B, T, I))
    h0, c0, _ = random_state(rng)
    a = model.forward(x, h0, c0, rng.standard_normal((B, N, D)))
    b = model.forward(x, h0, c0, rng.standard_normal((B, N, D)))
    assert not np.allclose(a, b)


def test_analysis_shapes_and_values(rng):
    model = make_model(num_blocks=2)
    x = rng.standard_normal((B, T, I))
    out, h, c, m, cache = model.forward(x, return_state=True, return_cache=True)
    info = RelationalRNN.analysis(cache)
    assert info["h"].shape == (B, T, H)
    np.testing.assert_array_equal(info["h"][:, -1], h)
    assert info["memory"].shape == (B, T, N, D)
    np.testing.assert_array_equal(info["memory"][:, -1], m)
    assert info["attention"].shape == (T, 2, B, HEADS, N + 1, N + 1)
    np.testing.assert_allclose(info["attention"].sum(-1), 1)
    assert info["input_gate"].shape == info["forget_gate"].shape == (T, B, N, D)
    assert ((info["forget_gate"] > 0) & (info["forget_gate"] < 1)).all()
    _, cache = make_model(gate_style="memory").forward(x, return_cache=True)
    assert RelationalRNN.analysis(cache)["input_gate"].shape == (T, B, N, 1)
    _, cache = make_model(gate_style=None).forward(x, return_cache=True)
    info = RelationalRNN.analysis(cache)
    assert info["input_gate"] is None and info["forget_gate"] is None


# -- dtypes -----------------------------------------------------------------------------------


def test_float32_stays_float32(rng):
    model = make_model(dtype=np.float32)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    state = tuple(a.astype(np.float32) for a in random_state(rng))
    out, h, c, m, cache = model.forward(x, *state, return_state=True, return_cache=True)
    assert all(a.dtype == np.float32 for a in (out, h, c, m))
    grads = model.backward(np.ones_like(out), cache, np.ones_like(h), np.ones_like(c),
                           np.ones_like(m))
    assert all(g.dtype == np.float32 for g in grads)
    assert all(g.dtype == np.float32 for g in model.gradients().values())
    # default state, last step only
    out, cache = model.forward(x, return_sequences=False, return_cache=True)
    assert out.dtype == np.float32 and model.backward(out, cache).dtype == np.float32

    cell = make_cell(dtype=np.float32)
    out, (h, c, m), cache = cell.forward(x[:, 0])
    assert all(a.dtype == np.float32 for a in (out, h, c, m))
    dx, dstate = cell.backward(np.ones_like(out), None, cache)
    assert dx.dtype == np.float32 and all(d.dtype == np.float32 for d in dstate)


def test_float32_close_to_float64(rng):
    x = rng.standard_normal((B, T, I))
    a = make_model(seed=3).forward(x)
    b = make_model(seed=3, dtype=np.float32).forward(x.astype(np.float32))
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_classifier_float32(rng):
    model = RelationalRNNClassifier(I, 3, **SMALL, hidden_size=H, mlp_hidden=(8,),
                                    rng=rng, dtype=np.float32)
    logits, cache = model.forward(rng.standard_normal((B, T, I)).astype(np.float32))
    assert logits.dtype == np.float32
    assert model.backward(np.ones_like(logits), cache).dtype == np.float32


# -- the cell ---------------------------------------------------------------------------------


def test_cell_default_state_and_backward_with_partial_dstate(rng):
    cell = make_cell()
    x = rng.standard_normal((B, I))
    out, (h, c, m), cache = cell.forward(x)
    out2, _, _ = cell.forward(x, cell.initial_state(B))
    np.testing.assert_array_equal(out, out2)
    assert out.shape == h.shape == c.shape == (B, H) and m.shape == (B, N, D)
    dx, (dh, dc, dm) = cell.backward(None, (None, None, np.ones((B, N, D))), cache)
    assert dx.shape == (B, I) and dh.shape == (B, H) and dm.shape == (B, N, D)
    dx0, _ = cell.backward(None, None, cache)
    np.testing.assert_array_equal(dx0, 0)


def test_default_options_are_the_reference_data_flow():
    # REFERENCE.md: the memory reads h_t; r_t reads the mean over slots (Linear d -> H).
    cell = make_cell()
    assert (cell.memory_input, cell.memory_readout) == ("hidden", "mean")
    assert cell.memory.input_proj.params["W"].shape == (H, D)
    assert cell.readout.params["W"].shape == (D, H)
    x = np.random.default_rng(1).standard_normal((B, I))
    h_prev, c_prev, memory_prev = random_state(np.random.default_rng(2))
    out, (h, c, memory), _ = cell.forward(x, (h_prev, c_prev, memory_prev))
    # the same step written out from the children
    xp, gx, _ = cell.memory.project_inputs(h)
    expect_memory, _ = cell.memory.step(xp, gx, memory_prev)
    np.testing.assert_array_equal(memory, expect_memory)
    r = memory.mean(axis=1) @ cell.readout.params["W"] + cell.readout.params["b"]
    pre = np.concatenate([h, r], axis=1) @ cell.combine.params["W"] + cell.combine.params["b"]
    np.testing.assert_allclose(out, np.tanh(pre), rtol=1e-12)


def test_options_change_what_the_memory_reads_and_how_it_is_read():
    cell = make_cell(memory_input="input_and_hidden", memory_readout="slots")
    assert cell.memory.input_proj.params["W"].shape == (I + H, D)
    assert cell.readout.params["W"].shape == (N * D, H)
    x = np.random.default_rng(1).standard_normal((B, I))
    h_prev, c_prev, memory_prev = random_state(np.random.default_rng(2))
    out, (h, c, memory), _ = cell.forward(x, (h_prev, c_prev, memory_prev))
    xp, gx, _ = cell.memory.project_inputs(np.concatenate([x, h], axis=1))
    expect_memory, _ = cell.memory.step(xp, gx, memory_prev)
    np.testing.assert_array_equal(memory, expect_memory)
    r = memory.reshape(B, N * D) @ cell.readout.params["W"] + cell.readout.params["b"]
    pre = np.concatenate([h, r], axis=1) @ cell.combine.params["W"] + cell.combine.params["b"]
    np.testing.assert_allclose(out, np.tanh(pre), rtol=1e-12)
    # the memory now sees x_t directly: with the LSTM's input weights zeroed, x still matters
    cell.lstm.params["W_x"][...] = 0.0
    out2, _, _ = cell.forward(x + 1.0, (h_prev, c_prev, memory_prev))
    out1, _, _ = cell.forward(x, (h_prev, c_prev, memory_prev))
    assert np.abs(out2 - out1).max() > 1e-3


def test_cell_config_rebuilds_the_cell():
    cell = make_cell(num_blocks=2, key_size=5, gate_style="memory",
                     memory_input="input_and_hidden", memory_readout="slots")
    clone = RelationalRNNCell(**json.loads(json.dumps(cell.config)))
    assert {k: v.shape for k, v in clone.parameters().items()} == \
        {k: v.shape for k, v in cell.parameters().items()}


# -- the classifier ---------------------------------------------------------------------------


def test_classifier_interface(rng):
    model = RelationalRNNClassifier(I, 3, **SMALL, hidden_size=H, mlp_hidden=(8, 7), rng=rng)
    assert set(model.children) == {"rnn", "readout"}
    assert model.rnn.output_size == H
    assert model.readout.sizes == [H, 8, 7, 3]
    x = rng.standard_normal((B, T, I))
    logits, cache = model.forward(x)
    assert logits.shape == (B, 3)
    # logits come from the RelationalRNN output of the last step
    last = model.rnn.forward(x, return_sequences=False)
    np.testing.assert_allclose(logits, model.readout.forward(last)[0], rtol=1e-12)
    dx = model.backward(np.ones_like(logits), cache)
    assert dx.shape == x.shape


def test_classifier_default_readout_is_paper_sized():
    model = RelationalRNNClassifier(I, 3, **SMALL, rng=np.random.default_rng(0))
    assert model.readout.sizes == [64, 256, 256, 256, 256, 3]


def test_classifier_config_rebuilds_the_model(rng):
    model = RelationalRNNClassifier(I, 3, hidden_size=H, num_slots=2, slot_size=6, num_heads=3,
                                    num_blocks=2, gate_style=None, forget_bias=0.5,
                                    memory_input="input_and_hidden", memory_readout="slots",
                                    mlp_hidden=(8,), rng=rng)
    config = json.loads(json.dumps(model.config))
    assert "rng" not in config and "dtype" not in config
    clone = RelationalRNNClassifier(**config, rng=np.random.default_rng(1))
    assert clone.config == model.config
    assert {k: v.shape for k, v in clone.parameters().items()} == \
        {k: v.shape for k, v in model.parameters().items()}
    clone.load_state_dict(model.state_dict())
    x = rng.standard_normal((B, T, I))
    np.testing.assert_array_equal(clone.forward(x)[0], model.forward(x)[0])


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(sequence=np.zeros((B, I))), ValueError, r"sequence must have 3 dimensions, got 2"),
    (dict(sequence=np.zeros((B, T, I + 1))), ValueError,
     rf"sequence must have last dimension {I}"),
    (dict(sequence=np.zeros((B, 0, I))), ValueError, r"sequence must have shape .*T >= 1"),
    (dict(sequence=np.full((B, T, I), np.nan)), ValueError, r"sequence contains .*non-finite"),
    (dict(sequence=np.full((B, T, I), np.inf)), ValueError, r"sequence contains .*non-finite"),
    (dict(sequence="abc"), TypeError, r"sequence must"),
    (dict(h0=np.zeros((B, H))), ValueError, r"got h0 but missing c0, memory0"),
    (dict(h0=np.zeros((B, H)), memory0=np.zeros((B, N, D))), ValueError, r"missing c0"),
    (dict(h0=np.zeros((B, H + 1)), c0=np.zeros((B, H)), memory0=np.zeros((B, N, D))),
     ValueError, rf"h0 must have last dimension {H}"),
    (dict(h0=np.zeros((B, H)), c0=np.zeros((B + 1, H)), memory0=np.zeros((B, N, D))),
     ValueError, r"batch sizes must match.*c0"),
    (dict(h0=np.zeros((B, H)), c0=np.zeros((B, H)), memory0=np.zeros((B, N, D + 1))),
     ValueError, r"memory0: memory must have shape"),
    (dict(h0=np.zeros((B, H)), c0=np.zeros((B, H)), memory0=np.zeros((B + 1, N, D))),
     ValueError, r"memory0: memory must have shape"),
    (dict(h0=np.zeros((B, H)), c0=np.full((B, H), np.nan), memory0=np.zeros((B, N, D))),
     ValueError, r"c0 contains"),
])
def test_sequence_bad_input(kwargs, err, match):
    model = make_model()
    before = model.state_dict()
    args = dict(sequence=np.zeros((B, T, I)), h0=None, c0=None, memory0=None)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        model.forward(args["sequence"], args["h0"], args["c0"], args["memory0"])
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("x, state, match", [
    (np.zeros((B, T, I)), None, r"x must have 2 dimensions"),
    (np.zeros((B, I - 1)), None, rf"x must have last dimension {I}"),
    (np.zeros((B, I)), (np.zeros((B, H)), np.zeros((B, H))), r"state must be None or a tuple"),
    (np.zeros((B, I)), (np.zeros((B, H)), None, np.zeros((B, N, D))), r"missing c"),
    (np.zeros((B, I)), (np.zeros((B, H)), np.zeros((B + 1, H)), np.zeros((B, N, D))),
     r"batch sizes must match"),
    (np.zeros((B, I)), (np.zeros((B, H)), np.zeros((B, H)), np.zeros((B, N + 1, D))),
     r"memory must have shape"),
])
def test_cell_bad_input(x, state, match):
    cell = make_cell()
    before = cell.state_dict()
    with pytest.raises(ValueError, match=match):
        cell.forward(x, state)
    for k, v in cell.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_bad_upstream_gradients_raise_before_state_changes(rng):
    model = make_model()
    x = rng.standard_normal((B, T, I))
    out, h, c, m, cache = model.forward(x, return_state=True, return_cache=True)
    with pytest.raises(ValueError, match=rf"doutputs must have shape \({B}, {T}, {O}\)"):
        model.backward(np.ones((B, O)), cache)
    with pytest.raises(ValueError, match=r"dh_T must have shape"):
        model.backward(np.ones_like(out), cache, dh_T=np.ones((B, H + 1)))
    with pytest.raises(ValueError, match=r"dmemory_T must have shape"):
        model.backward(np.ones_like(out), cache, dmemory_T=np.ones((B, N, D + 1)))
    with pytest.raises(ValueError, match=r"dc_T contains"):
        model.backward(np.ones_like(out), cache, dc_T=np.full((B, H), np.nan))
    assert not any(g.any() for g in model.gradients().values())

    cell = make_cell()
    out, _, cache = cell.forward(x[:, 0])
    with pytest.raises(ValueError, match=r"dmemory must have shape"):
        cell.backward(np.ones_like(out), (None, None, np.ones((B, N))), cache)
    with pytest.raises(ValueError, match=r"dout must have shape"):
        cell.backward(np.ones((B, H + 1)), None, cache)
    assert not any(g.any() for g in cell.gradients().values())

    clf = RelationalRNNClassifier(I, 3, **SMALL, hidden_size=H, mlp_hidden=(4,), rng=rng)
    logits, cache = clf.forward(x)
    with pytest.raises(ValueError, match=r"dlogits must have shape \(3, 3\)"):
        clf.backward(np.ones((B, 4)), cache)
    assert not any(g.any() for g in clf.gradients().values())


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(slot_size=6, num_heads=4), ValueError,
     r"slot_size must be divisible by num_heads.*slot_size=6, num_heads=4"),
    (dict(num_slots=0), ValueError, r"num_slots must be an integer >= 1, got 0"),
    (dict(slot_size=-4), ValueError, r"slot_size must be an integer >= 1, got -4"),
    (dict(num_heads=0), ValueError, r"num_heads must be an integer >= 1, got 0"),
    (dict(num_blocks=0), ValueError, r"num_blocks must be an integer >= 1, got 0"),
    (dict(key_size=0), ValueError, r"key_size must be an integer >= 1, got 0"),
    (dict(attention_mlp_layers=0), ValueError, r"attention_mlp_layers must be an integer"),
    (dict(gate_style="lstm"), ValueError, r"gate_style must be one of"),
    (dict(memory_input="input"), ValueError,
     r"memory_input must be one of \('hidden', 'input_and_hidden'\), got 'input'"),
    (dict(memory_readout="max"), ValueError,
     r"memory_readout must be one of \('mean', 'slots'\), got 'max'"),
    (dict(forget_bias=float("nan")), ValueError, r"forget_bias must be a number"),
    (dict(num_slots=2.5), TypeError, r"num_slots must be an integer"),
    (dict(dtype=np.int32), TypeError, r"dtype must be float32 or float64"),
])
def test_bad_memory_arguments(kwargs, err, match):
    args = dict(SMALL, rng=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(err, match=match):
        RelationalRNNCell(I, H, **args)
    with pytest.raises(err, match=match):
        RelationalRNN(I, H, O, **args)
    with pytest.raises(err, match=match):
        RelationalRNNClassifier(I, 3, hidden_size=H, **args)


@pytest.mark.parametrize("args, err, match", [
    ((0, H, O), ValueError, r"input_size must be an integer >= 1, got 0"),
    ((I, -1, O), ValueError, r"hidden_size must be an integer >= 1, got -1"),
    ((I, H, 0), ValueError, r"output_size must be an integer >= 1, got 0"),
    ((I, True, O), TypeError, r"hidden_size must be an integer"),
])
def test_non_positive_sizes(args, err, match):
    with pytest.raises(err, match=match):
        RelationalRNN(*args, **SMALL)
    if "output_size" not in match:
        with pytest.raises(err, match=match):
            RelationalRNNCell(*args[:2], **SMALL)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(num_classes=0), ValueError, r"num_classes must be an integer >= 1, got 0"),
    (dict(hidden_size=0), ValueError, r"hidden_size must be an integer >= 1, got 0"),
    (dict(input_size=-3), ValueError, r"input_size must be an integer >= 1, got -3"),
    (dict(mlp_hidden=(8, 0)), ValueError, r"mlp_hidden\[1\] must be an integer >= 1, got 0"),
    (dict(mlp_hidden=16), TypeError, r"mlp_hidden must be a sequence"),
])
def test_classifier_bad_arguments(kwargs, err, match):
    args = dict(input_size=I, num_classes=3, hidden_size=H, **SMALL)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        RelationalRNNClassifier(**args)
