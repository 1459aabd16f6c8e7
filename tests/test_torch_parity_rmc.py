"""Attention, relational memory core and RMC classifier against independent PyTorch references.

float64: outputs and every gradient (inputs, initial memory and each parameter, by our dotted
names) agree to 1e-10 relative.  float32: the same comparisons at a looser tolerance.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attention import MultiHeadAttention  # noqa: E402
from relational_memory import RelationalMemory, RMCClassifier  # noqa: E402
from torch_reference import (  # noqa: E402
    copy_numpy_params, torch_attention_from_numpy, torch_grads_as_numpy,
    torch_rmc_classifier_from_numpy, torch_rmc_from_numpy)

RTOL64 = 1e-10
RTOL32 = 1e-4

# (B, R, D, H, head_size, key_size)
ATTENTION_CONFIGS = [
    (2, 1, 3, 1, 4, None),
    (3, 5, 6, 2, 3, 5),
    (2, 9, 8, 4, 2, 1),
    (1, 4, 5, 3, 4, 2),
]

# RelationalMemory keyword arguments; together they cover gate styles unit/memory/None,
# 1 and 3 blocks, key_size != head_size, N 1..8, H 1..4, 1-3 MLP layers, N > d, other biases.
RMC_CONFIGS = [
    dict(mem_slots=1, head_size=4, num_heads=1, num_blocks=1, gate_style="unit"),
    dict(mem_slots=3, head_size=3, num_heads=2, num_blocks=3, key_size=5, gate_style="memory"),
    dict(mem_slots=8, head_size=2, num_heads=4, num_blocks=1, key_size=3, gate_style=None),
    dict(mem_slots=4, head_size=4, num_heads=3, num_blocks=3, key_size=2, gate_style="unit",
         attention_mlp_layers=1),
    dict(mem_slots=2, head_size=4, num_heads=2, num_blocks=1, gate_style="memory",
         attention_mlp_layers=3, forget_bias=0.5, input_bias=-0.3),
    dict(mem_slots=6, head_size=2, num_heads=2, num_blocks=3, key_size=3, gate_style=None),
]
B, T, I = 3, 5, 5


def _ids(configs):
    return [",".join(f"{k}={v}" for k, v in c.items()) if isinstance(c, dict) else str(c)
            for c in configs]


def _perturb(module, rng):
    """Move every weight (LayerNorm gains and zero biases included) off its initial value."""
    for _, p, _ in module.named_parameters():
        p += (rng.standard_normal(p.shape) * 0.3).astype(p.dtype)


def _leaf(a):
    return torch.from_numpy(np.array(a)).requires_grad_(True)


def _close(ours, theirs, name, rtol):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} vs torch {theirs.shape}"
    assert ours.dtype == theirs.dtype, f"{name}: dtype {ours.dtype} vs torch {theirs.dtype}"
    scale = max(float(np.abs(theirs).max()), 1e-30)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale, err_msg=name)


def _compare_param_grads(ours_module, ref, rtol):
    """Every parameter gradient, by dotted name; returns the set of names compared."""
    ours = ours_module.gradients()
    names = ref.numpy_names()
    for name, (tparam, _) in names.items():
        assert tparam.grad is not None, f"torch gave no gradient for {name}"
    theirs = torch_grads_as_numpy(ref)
    assert set(ours) == set(theirs), (sorted(set(ours) ^ set(theirs)))
    for name in ours:
        _close(ours[name], theirs[name], f"grad {name}", rtol)
    assert any(np.abs(g).max() > 0 for g in ours.values()), "all our gradients are zero"
    return set(theirs)


# --------------------------------------------------------------------------------------------
# Weight copying helpers
# --------------------------------------------------------------------------------------------


def test_copy_maps_every_dotted_name_and_transposes_linear_weights():
    rng = np.random.default_rng(0)
    model = RMCClassifier(I, 4, mem_slots=3, head_size=2, num_heads=2, num_blocks=2,
                          key_size=3, mlp_hidden=(7, 5), rng=rng)
    _perturb(model, rng)
    ref = torch_rmc_classifier_from_numpy(model)
    names = ref.numpy_names()
    assert set(names) == set(model.parameters())
    # every torch parameter is reachable from exactly one of our names
    assert {id(p) for p, _ in names.values()} == {id(p) for p in ref.parameters()}
    for name, value in model.parameters().items():
        tparam, transposed = names[name]
        np.testing.assert_array_equal(tparam.detach().numpy(), value.T if transposed else value)
    assert names["core.attn1.W_qkv"][1] and not names["core.attn1.ln_g"][1]


def test_copy_refuses_a_module_with_other_names():
    rng = np.random.default_rng(1)
    core = RelationalMemory(I, 2, 2, 2, gate_style="unit", rng=rng)
    ref = torch_rmc_from_numpy(RelationalMemory(I, 2, 2, 2, gate_style=None, rng=rng))
    with pytest.raises(KeyError, match="W_gx"):
        copy_numpy_params(ref, core)


@pytest.mark.parametrize("mem_slots,head_size,num_heads", [(3, 4, 2), (8, 2, 2), (4, 2, 2)])
def test_initial_state_matches(mem_slots, head_size, num_heads):
    core = RelationalMemory(I, mem_slots, head_size, num_heads, rng=np.random.default_rng(2))
    ref = torch_rmc_from_numpy(core)
    np.testing.assert_array_equal(core.initial_state(2), ref.initial_state(2).numpy())


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------


def _attention_case(cfg, dtype, seed):
    Bb, R, D, H, hs, ks = cfg
    rng = np.random.default_rng(seed)
    attn = MultiHeadAttention(D, H, hs, ks, rng=rng, dtype=dtype)
    _perturb(attn, rng)
    x = rng.standard_normal((Bb, R, D)).astype(dtype)
    dout = rng.standard_normal((Bb, R, H * hs)).astype(dtype)
    return attn, x, dout


@pytest.mark.parametrize("fast_path", [False, True], ids=["explicit", "sdpa"])
@pytest.mark.parametrize("cfg", ATTENTION_CONFIGS, ids=_ids(ATTENTION_CONFIGS))
def test_attention_float64_outputs_weights_and_all_gradients(cfg, fast_path):
    attn, x, dout = _attention_case(cfg, np.float64, 10)
    out, cache = attn.forward(x)
    attn.zero_grad()
    dx = attn.backward(dout, cache)

    ref = torch_attention_from_numpy(attn)
    tx = _leaf(x)
    if fast_path:
        tout = ref(tx)
    else:
        tout, tweights = ref(tx, return_weights=True)
        _close(cache["weights"], tweights.detach().numpy(), "weights", RTOL64)
    (tout * torch.from_numpy(dout)).sum().backward()

    _close(out, tout.detach().numpy(), "out", RTOL64)
    _close(dx, tx.grad.numpy(), "dx", RTOL64)
    assert _compare_param_grads(attn, ref, RTOL64) == {"W_qkv", "b_qkv", "ln_g", "ln_b"}


@pytest.mark.parametrize("cfg", ATTENTION_CONFIGS[1:3], ids=_ids(ATTENTION_CONFIGS[1:3]))
def test_attention_float32_matches_torch_float32(cfg):
    attn, x, dout = _attention_case(cfg, np.float32, 11)
    out, cache = attn.forward(x)
    dx = attn.backward(dout, cache)
    ref = torch_attention_from_numpy(attn)
    assert ref.qkv.weight.dtype == torch.float32
    tx = _leaf(x)
    tout, tweights = ref(tx, return_weights=True)
    (tout * torch.from_numpy(dout)).sum().backward()
    _close(out, tout.detach().numpy(), "out", RTOL32)
    _close(cache["weights"], tweights.detach().numpy(), "weights", RTOL32)
    _close(dx, tx.grad.numpy(), "dx", RTOL32)
    _compare_param_grads(attn, ref, RTOL32)


# --------------------------------------------------------------------------------------------
# Relational memory core
# --------------------------------------------------------------------------------------------


def _core_case(cfg, dtype, seed):
    rng = np.random.default_rng(seed)
    core = RelationalMemory(I, rng=rng, dtype=dtype, **cfg)
    _perturb(core, rng)
    mem_shape = (B, core.mem_slots, core.mem_size)
    return core, rng, mem_shape


def _step_parity(cfg, dtype, rtol, seed):
    core, rng, mem_shape = _core_case(cfg, dtype, seed)
    x = rng.standard_normal((B, I)).astype(dtype)
    memory = rng.standard_normal(mem_shape).astype(dtype)
    dnew = rng.standard_normal(mem_shape).astype(dtype)

    new, cache = core.forward(x, memory)
    core.zero_grad()
    dx, dmemory = core.backward(dnew, cache)

    ref = torch_rmc_from_numpy(core)
    tx, tmem = _leaf(x), _leaf(memory)
    tnew, tweights = ref(tx, tmem, return_weights=True)
    (tnew * torch.from_numpy(dnew)).sum().backward()

    _close(new, tnew.detach().numpy(), "new memory", rtol)
    ours_w = cache[1]["weights"]
    assert len(ours_w) == len(tweights) == core.num_blocks
    for b, (w, tw) in enumerate(zip(ours_w, tweights)):
        _close(w, tw.detach().numpy(), f"block {b} weights", rtol)
    _close(dx, tx.grad.numpy(), "dx", rtol)
    _close(dmemory, tmem.grad.numpy(), "dmemory", rtol)
    compared = _compare_param_grads(core, ref, rtol)
    assert compared == set(core.parameters())


@pytest.mark.parametrize("cfg", RMC_CONFIGS, ids=_ids(RMC_CONFIGS))
def test_rmc_one_step_float64_memory_and_all_gradients(cfg):
    _step_parity(cfg, np.float64, RTOL64, 20)


@pytest.mark.parametrize("cfg", RMC_CONFIGS[:4], ids=_ids(RMC_CONFIGS[:4]))
def test_rmc_one_step_float32(cfg):
    _step_parity(cfg, np.float32, RTOL32, 21)


def _sequence_parity(cfg, dtype, rtol, seed):
    core, rng, mem_shape = _core_case(cfg, dtype, seed)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    memory0 = rng.standard_normal(mem_shape).astype(dtype)
    dmemories = rng.standard_normal((B, T) + mem_shape[1:]).astype(dtype)

    memories, cache = core.forward_sequence(x, memory0)
    core.zero_grad()
    dx, dmemory0 = core.backward_sequence(dmemories, cache)

    ref = torch_rmc_from_numpy(core)
    tx, tmem0 = _leaf(x), _leaf(memory0)
    tmemories = ref.forward_sequence(tx, tmem0)
    (tmemories * torch.from_numpy(dmemories)).sum().backward()

    _close(memories, tmemories.detach().numpy(), "memories", rtol)
    _close(dx, tx.grad.numpy(), "dx", rtol)
    _close(dmemory0, tmem0.grad.numpy(), "dmemory0", rtol)
    assert _compare_param_grads(core, ref, rtol) == set(core.parameters())


@pytest.mark.parametrize("cfg", RMC_CONFIGS, ids=_ids(RMC_CONFIGS))
def test_rmc_sequence_float64_all_memories_and_all_gradients(cfg):
    _sequence_parity(cfg, np.float64, RTOL64, 30)


@pytest.mark.parametrize("cfg", RMC_CONFIGS[:4], ids=_ids(RMC_CONFIGS[:4]))
def test_rmc_sequence_float32(cfg):
    _sequence_parity(cfg, np.float32, RTOL32, 31)


def test_rmc_sequence_from_initial_state_and_fast_path_step_match():
    core, rng, _ = _core_case(RMC_CONFIGS[1], np.float64, 32)
    x = rng.standard_normal((B, T, I))
    memories, _ = core.forward_sequence(x)
    ref = torch_rmc_from_numpy(core)
    with torch.no_grad():
        _close(memories, ref.forward_sequence(torch.from_numpy(x)).numpy(), "memories", RTOL64)
        one, _ = core.forward(x[:, 0])
        _close(one, ref(torch.from_numpy(x[:, 0])).numpy(), "one step (sdpa path)", RTOL64)


def test_rmc_saturated_gates_keep_memory_in_both():
    cfg = dict(mem_slots=3, head_size=2, num_heads=2, forget_bias=np.inf, input_bias=-np.inf)
    core, rng, mem_shape = _core_case(cfg, np.float64, 33)
    x, memory = rng.standard_normal((B, I)), rng.standard_normal(mem_shape)
    ref = torch_rmc_from_numpy(core)
    with torch.no_grad():
        tnew = ref(torch.from_numpy(x), torch.from_numpy(memory)).numpy()
    np.testing.assert_array_equal(tnew, memory)
    np.testing.assert_array_equal(core.forward(x, memory)[0], memory)


# --------------------------------------------------------------------------------------------
# RMC classifier
# --------------------------------------------------------------------------------------------

CLASSIFIER_CONFIGS = [
    dict(mem_slots=3, head_size=3, num_heads=2, num_blocks=1, key_size=4, gate_style="unit",
         mlp_hidden=(6, 5)),
    dict(mem_slots=4, head_size=2, num_heads=3, num_blocks=3, gate_style="memory",
         mlp_hidden=(8,)),
    dict(mem_slots=2, head_size=4, num_heads=1, num_blocks=1, gate_style=None, mlp_hidden=()),
]


def _classifier_parity(cfg, dtype, rtol, seed):
    rng = np.random.default_rng(seed)
    C = 4
    model = RMCClassifier(I, C, rng=rng, dtype=dtype, **cfg)
    _perturb(model, rng)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    dlogits = rng.standard_normal((B, C)).astype(dtype)

    logits, cache = model.forward(x)
    model.zero_grad()
    dx = model.backward(dlogits, cache)

    ref = torch_rmc_classifier_from_numpy(model)
    tx = _leaf(x)
    tlogits = ref(tx)
    (tlogits * torch.from_numpy(dlogits)).sum().backward()

    _close(logits, tlogits.detach().numpy(), "logits", rtol)
    _close(dx, tx.grad.numpy(), "dx", rtol)
    assert _compare_param_grads(model, ref, rtol) == set(model.parameters())


@pytest.mark.parametrize("cfg", CLASSIFIER_CONFIGS, ids=_ids(CLASSIFIER_CONFIGS))
def test_classifier_float64_logits_and_all_gradients(cfg):
    _classifier_parity(cfg, np.float64, RTOL64, 40)


@pytest.mark.parametrize("cfg", CLASSIFIER_CONFIGS[:2], ids=_ids(CLASSIFIER_CONFIGS[:2]))
def test_classifier_float32(cfg):
    _classifier_parity(cfg, np.float32, RTOL32, 41)


def test_classifier_loss_gradient_matches_torch_cross_entropy():
    """The fused softmax cross-entropy path of training, end to end in float64."""
    import layers
    rng = np.random.default_rng(42)
    model = RMCClassifier(I, 4, mem_slots=3, head_size=2, num_heads=2, mlp_hidden=(6,), rng=rng)
    _perturb(model, rng)
    x, labels = rng.standard_normal((B, T, I)), rng.integers(0, 4, size=B)
    logits, cache = model.forward(x)
    loss, dlogits = layers.softmax_cross_entropy(logits, labels)[:2]
    model.backward(dlogits, cache)
    ref = torch_rmc_classifier_from_numpy(model)
    tloss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(labels))
    tloss.backward()
    _close(np.float64(loss), tloss.detach().numpy(), "loss", RTOL64)
    _compare_param_grads(model, ref, RTOL64)
