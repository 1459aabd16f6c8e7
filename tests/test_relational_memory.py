"""Relational memory core: gradient proofs, Sonnet-style behaviour, bad input."""
import numpy as np
import pytest

import autograd_checks as ac
from relational_memory import RelationalMemory, RMCClassifier


@pytest.mark.parametrize("name", [n for n in ac.CASES if n.startswith("relational_memory.")])
def test_rmc_gradients(name):
    results = ac.CASES[name]()
    assert results
    bad = [(r.case, r.tensor, r.error) for r in results if not r.passed]
    assert not bad, bad


def make_core(**kw):
    args = dict(input_size=3, mem_slots=4, head_size=4, num_heads=2, rng=np.random.default_rng(0))
    args.update(kw)
    return RelationalMemory(**args)


def test_memory_unchanged_when_forget_gate_saturated_open_and_input_closed():
    core = make_core(forget_bias=np.inf, input_bias=-np.inf)
    rng = np.random.default_rng(1)
    memory = rng.standard_normal((2, 4, 8))
    new_memory, _ = core.forward(rng.standard_normal((2, 3)), memory)
    np.testing.assert_array_equal(new_memory, memory)


@pytest.mark.parametrize("gate_style", ["unit", "memory", None])
def test_memory_changes_after_a_step(gate_style):
    core = make_core(gate_style=gate_style)
    memory = core.initial_state(2)
    new_memory, _ = core.forward(np.random.default_rng(1).standard_normal((2, 3)), memory)
    assert new_memory.shape == memory.shape
    assert not np.allclose(new_memory, memory)


def test_gate_shapes_per_style():
    x = np.random.default_rng(1).standard_normal((2, 5, 3))
    for style, G in (("unit", 8), ("memory", 1)):
        core = make_core(gate_style=style)
        _, cache = core.forward_sequence(x)
        i, f = RelationalMemory.gate_values(cache)
        assert i.shape == f.shape == (5, 2, 4, G)
        assert ((i > 0) & (i < 1)).all()
    _, cache = make_core(gate_style=None).forward_sequence(x)
    assert RelationalMemory.gate_values(cache) is None


def test_attention_weights_are_distributions_over_slots_and_input():
    core = make_core(num_blocks=2)
    _, cache = core.forward_sequence(np.random.default_rng(2).standard_normal((3, 6, 3)))
    w = RelationalMemory.attention_weights(cache)
    assert w.shape == (6, 2, 3, 2, 5, 5)       # T, blocks, B, H, N+1, N+1
    np.testing.assert_allclose(w.sum(-1), 1)


def test_initial_state_is_padded_or_truncated_identity():
    core = make_core(mem_slots=3, head_size=2, num_heads=2)      # d = 4 > N
    m = core.initial_state(2)
    np.testing.assert_array_equal(m[1], np.eye(3, 4))
    core = make_core(mem_slots=6, head_size=2, num_heads=2)      # d = 4 < N
    np.testing.assert_array_equal(core.initial_state(1)[0], np.eye(6, 4))


def test_same_seed_same_trajectory_and_sequence_equals_steps():
    x = np.random.default_rng(3).standard_normal((2, 4, 3))
    a, _ = make_core(rng=np.random.default_rng(5)).forward_sequence(x)
    core = make_core(rng=np.random.default_rng(5))
    b, _ = core.forward_sequence(x)
    np.testing.assert_array_equal(a, b)
    memory = None
    for t in range(4):
        memory, _ = core.forward(x[:, t], memory)
        np.testing.assert_allclose(memory, b[:, t], rtol=1e-12, atol=1e-12)
    c, _ = make_core(rng=np.random.default_rng(6)).forward_sequence(x)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("N, head_size, H", [(1, 2, 1), (2, 3, 4), (5, 4, 2), (8, 2, 3)])
def test_five_blocks_run_for_several_sizes(N, head_size, H):
    core = make_core(mem_slots=N, head_size=head_size, num_heads=H, num_blocks=5)
    m, cache = core.forward_sequence(np.random.default_rng(0).standard_normal((2, 3, 3)))
    assert m.shape == (2, 3, N, head_size * H)
    assert np.isfinite(m).all()
    dx, dm0 = core.backward_sequence(np.ones_like(m), cache)
    assert dx.shape == (2, 3, 3) and dm0.shape == (2, N, head_size * H)


def test_key_size_different_from_head_size():
    core = make_core(key_size=7)
    assert core.params["W_gx"].shape == (8, 16)
    assert core.children["attn0"].params["W_qkv"].shape == (8, 2 * (2 * 7 + 4))
    m, _ = core.forward_sequence(np.ones((1, 2, 3)))
    assert np.isfinite(m).all()


def test_float32_stays_float32():
    core = make_core(dtype=np.float32)
    m, cache = core.forward_sequence(np.ones((2, 3, 3), np.float32))
    assert m.dtype == np.float32
    dx, dm0 = core.backward_sequence(np.ones_like(m), cache)
    assert dx.dtype == np.float32 and dm0.dtype == np.float32
    assert all(g.dtype == np.float32 for g in core.gradients().values())


def test_classifier_shapes_config_and_rebuild():
    model = RMCClassifier(6, 4, mem_slots=2, head_size=3, num_heads=2, mlp_hidden=(8,),
                          rng=np.random.default_rng(0))
    logits, cache = model.forward(np.ones((5, 3, 6)))
    assert logits.shape == (5, 4)
    assert model.backward(np.ones_like(logits), cache).shape == (5, 3, 6)
    clone = RMCClassifier(**model.config)
    assert clone.parameters().keys() == model.parameters().keys()
    assert all(clone.parameters()[k].shape == v.shape for k, v in model.parameters().items())


def test_bad_input_is_rejected_before_any_change():
    core = make_core()
    before = core.state_dict()
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        core.forward(np.ones((2, 1, 3)))
    with pytest.raises(ValueError, match="x must have last dimension 3"):
        core.forward(np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"memory must have shape \(B, N, d\)"):
        core.forward(np.ones((2, 3)), np.ones((2, 4, 7)))
    with pytest.raises(ValueError, match=r"memory must have shape"):
        core.forward(np.ones((2, 3)), np.ones((3, 4, 8)))
    with pytest.raises(ValueError, match="non-finite"):
        core.forward_sequence(np.full((2, 2, 3), np.inf))
    with pytest.raises(ValueError, match="x must not be empty"):
        core.forward_sequence(np.ones((2, 0, 3)))
    for k, v in core.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match="gate_style"):
        make_core(gate_style="lstm")
    with pytest.raises(ValueError, match="mem_slots"):
        make_core(mem_slots=0)
    with pytest.raises(ValueError, match="forget_bias"):
        make_core(forget_bias=float("nan"))
