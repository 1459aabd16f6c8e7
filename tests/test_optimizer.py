"""Optimizer: Adam arithmetic, convergence, clipping, schedules, checkpoints and bad input."""
import math

import numpy as np
import pytest

import layers
import optimizer
from optimizer import (Adam, ConstantLR, ExponentialDecay, ExponentialMovingAverage, LinearDecay,
                       clip_global_norm)


class Vector(layers.Module):
    """One parameter vector ``p``; the loss sum((p - target)^2) has gradient 2 (p - target)."""

    def __init__(self, init, target=None, dtype=np.float64):
        super().__init__(dtype)
        self.add_param("p", np.asarray(init, dtype=float))
        self.target = np.zeros_like(self.params["p"]) if target is None else \
            np.asarray(target, dtype=self.dtype)

    def backward_quadratic(self) -> float:
        d = self.params["p"] - self.target
        self.grads["p"] += 2 * d
        return float(d @ d)


class Pair(layers.Module):
    """Two children so that parameter names are dotted: ``a.p`` and ``b.p``."""

    def __init__(self, dtype=np.float64):
        super().__init__(dtype)
        self.add_child("a", Vector([1.0, -2.0, 0.5], target=[0.0, 1.0, 2.0], dtype=dtype))
        self.add_child("b", Vector([[0.3, 0.1], [-0.4, 2.0]], dtype=dtype))

    def backward_quadratic(self) -> float:
        loss = self.children["a"].backward_quadratic()
        loss += float(np.sum(self.children["b"].params["p"] ** 2))
        self.children["b"].grads["p"] += 2 * self.children["b"].params["p"]
        return loss


def mse_backward(model: layers.MLP, x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error of an MLP on (x, y); accumulates the gradients into the model."""
    out, cache = model.forward(x)
    diff = out - y
    model.backward(2 * diff / diff.size, cache, need_dx=False)
    return float(np.mean(diff * diff))


def snapshot(model, opt):
    return ({n: p.copy() for n, p in model.parameters().items()},
            {n: a.copy() for n, a in opt.m.items()},
            {n: a.copy() for n, a in opt.v.items()}, opt.t)


def assert_same_snapshot(a, b):
    for da, db in zip(a[:3], b[:3]):
        assert da.keys() == db.keys()
        for name in da:
            assert np.array_equal(da[name], db[name]), name
    assert a[3] == b[3]


# --------------------------------------------------------------------------------------------
# Adam arithmetic
# --------------------------------------------------------------------------------------------


def test_adam_matches_two_steps_computed_by_hand():
    model = Vector([1.0, -2.0])
    opt = Adam(model, lr=0.1, betas=(0.9, 0.999), eps=1e-8)

    model.grads["p"][...] = [0.5, -1.0]                   # g1
    opt.step()
    # m1 = 0.1 g1 = [0.05, -0.1];  v1 = 0.001 g1^2 = [0.00025, 0.001]
    # m_hat = m1 / (1 - 0.9) = g1;  v_hat = v1 / (1 - 0.999) = g1^2
    p1 = np.array([1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 + 0.1 * 1.0 / (1.0 + 1e-8)])
    np.testing.assert_allclose(model.params["p"], p1, rtol=1e-13, atol=0)
    np.testing.assert_allclose(opt.m["p"], [0.05, -0.1], rtol=1e-13)
    np.testing.assert_allclose(opt.v["p"], [0.00025, 0.001], rtol=1e-13)

    model.zero_grad()
    model.grads["p"][...] = [0.25, 2.0]                   # g2
    opt.step()
    # m2 = 0.9 m1 + 0.1 g2 = [0.045 + 0.025, -0.09 + 0.2] = [0.07, 0.11]
    # v2 = 0.999 v1 + 0.001 g2^2 = [0.00024975 + 0.0000625, 0.000999 + 0.004]
    #    = [0.00031225, 0.004999]
    # bias corrections at t = 2: 1 - 0.9^2 = 0.19, 1 - 0.999^2 = 0.001999
    m_hat = np.array([0.07, 0.11]) / 0.19
    v_hat = np.array([0.00031225, 0.004999]) / 0.001999
    p2 = p1 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(opt.m["p"], [0.07, 0.11], rtol=1e-13)
    np.testing.assert_allclose(opt.v["p"], [0.00031225, 0.004999], rtol=1e-13)
    np.testing.assert_allclose(model.params["p"], p2, rtol=1e-13, atol=0)
    assert opt.t == 2


def test_first_step_moves_every_entry_by_lr_thanks_to_bias_correction():
    g = np.array([3.0, -0.2, 0.05, -40.0])
    for betas in [(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)]:
        model = Vector(np.zeros(4))
        model.grads["p"][...] = g
        Adam(model, lr=0.01, betas=betas).step()
        np.testing.assert_allclose(model.params["p"], -0.01 * np.sign(g), rtol=1e-6)


def test_zero_gradient_with_weight_decay_shrinks_parameters():
    model = Vector([2.0, -1.0, 0.5])
    opt = Adam(model, lr=0.01, weight_decay=0.1)
    for _ in range(3):
        opt.step()                                       # gradient stays zero
    np.testing.assert_allclose(model.params["p"], np.array([2.0, -1.0, 0.5]) * 0.999 ** 3,
                               rtol=1e-12)
    # no weight decay and no gradient: nothing moves
    model = Vector([2.0, -1.0, 0.5])
    Adam(model, lr=0.01).step()
    np.testing.assert_array_equal(model.params["p"], [2.0, -1.0, 0.5])


def test_weight_decay_is_decoupled_from_the_moments():
    g = np.array([0.5, -0.25])
    plain, decayed = Vector([1.0, 1.0]), Vector([1.0, 1.0])
    opt_plain, opt_decayed = Adam(plain, lr=0.1), Adam(decayed, lr=0.1, weight_decay=0.5)
    for model, opt in [(plain, opt_plain), (decayed, opt_decayed)]:
        model.grads["p"][...] = g
        opt.step()
    np.testing.assert_array_equal(opt_plain.m["p"], opt_decayed.m["p"])
    np.testing.assert_array_equal(opt_plain.v["p"], opt_decayed.v["p"])
    # p1 = p0 - lr (adam + wd p0)
    np.testing.assert_allclose(decayed.params["p"], plain.params["p"] - 0.1 * 0.5 * 1.0,
                               rtol=1e-14)


def test_minimises_a_convex_quadratic():
    target = np.array([1.5, -3.0, 0.25, 7.0])
    model = Vector(np.zeros(4), target=target)
    opt = Adam(model, lr=0.1,
               schedule=ExponentialDecay(0.1, decay_rate=0.5, decay_steps=200, min_lr=1e-5))
    losses = []
    for _ in range(3000):
        opt.zero_grad()
        losses.append(model.backward_quadratic())
        opt.step()
    assert losses[-1] < 1e-10
    np.testing.assert_allclose(model.params["p"], target, atol=1e-5)


def test_fits_a_linear_least_squares_problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 + 0.01 * rng.standard_normal((64, 1))
    model = layers.MLP([3, 1], rng=rng)                  # parameters fc0.W, fc0.b
    opt = Adam(model, lr=0.05,
               schedule=ExponentialDecay(0.05, decay_rate=0.5, decay_steps=300, min_lr=1e-6))
    for _ in range(3000):
        opt.zero_grad()
        mse_backward(model, x, y)
        opt.step()
    design = np.hstack([x, np.ones((64, 1))])
    best = np.linalg.lstsq(design, y, rcond=None)[0]
    fc0 = model.children["fc0"]
    fitted = np.vstack([fc0.params["W"], fc0.params["b"][None]])
    np.testing.assert_allclose(fitted, best, atol=1e-5)


def test_updates_are_in_place_and_float32_stays_float32():
    model = Pair(dtype=np.float32)
    opt = Adam(model, lr=1e-2, weight_decay=1e-3, clip_norm=0.5)
    held = model.parameters()                            # the arrays, not copies
    before = {n: p.copy() for n, p in held.items()}
    moments = dict(opt.m)
    for _ in range(3):
        opt.zero_grad()
        model.backward_quadratic()
        info = opt.step()
    for name, p in model.parameters().items():
        assert p is held[name] and p.dtype == np.float32
        assert not np.array_equal(p, before[name])
        assert opt.m[name] is moments[name]
        assert opt.m[name].dtype == np.float32 and opt.v[name].dtype == np.float32
        assert model.gradients()[name].dtype == np.float32
    assert set(opt.m) == {"a.p", "b.p"}
    assert all(type(info[k]) is float for k in ("lr", "grad_norm"))
    assert type(info["clipped"]) is bool


def test_float32_step_tracks_float64_step():
    runs = {}
    for dtype in (np.float32, np.float64):
        model = Pair(dtype=dtype)
        opt = Adam(model, lr=1e-2)
        for _ in range(20):
            opt.zero_grad()
            model.backward_quadratic()
            opt.step()
        runs[dtype] = model.parameters()
    for name, p32 in runs[np.float32].items():
        np.testing.assert_allclose(p32, runs[np.float64][name], atol=1e-5)


def test_zero_grad_delegates_to_the_model():
    model = Pair()
    model.backward_quadratic()
    Adam(model).zero_grad()
    assert not any(g.any() for g in model.gradients().values())


# --------------------------------------------------------------------------------------------
# Clipping
# --------------------------------------------------------------------------------------------


def test_clip_global_norm_scales_to_max_norm_and_returns_pre_clip_norm():
    grads = [np.array([3.0, 4.0]), np.array([[12.0]])]  # norm sqrt(9 + 16 + 144) = 13
    norm = clip_global_norm(grads, 6.5)
    assert norm == pytest.approx(13.0, rel=1e-15)
    np.testing.assert_allclose(grads[0], [1.5, 2.0], rtol=1e-15)
    np.testing.assert_allclose(grads[1], [[6.0]], rtol=1e-15)
    assert math.sqrt(sum(float(np.sum(g * g)) for g in grads)) == pytest.approx(6.5)


def test_clip_global_norm_leaves_small_gradients_alone():
    grads = [np.array([0.3, -0.4], np.float32)]
    assert clip_global_norm(grads, 1.0) == pytest.approx(0.5, rel=1e-7)
    np.testing.assert_array_equal(grads[0], np.array([0.3, -0.4], np.float32))


def test_clip_global_norm_accumulates_float32_in_float64():
    g = np.full(1_000_003, 0.1, np.float32)
    exact = math.sqrt(g.size) * float(np.float32(0.1))
    norm = clip_global_norm([g], 1.0)
    assert abs(norm - exact) / exact < 1e-12
    assert g.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(g.astype(np.float64)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clip_global_norm_raises_on_non_finite_and_changes_nothing(bad):
    grads = [np.array([30.0, 40.0]), np.array([1.0, bad])]
    copies = [g.copy() for g in grads]
    with pytest.raises(FloatingPointError, match="norm"):
        clip_global_norm(grads, 1.0)
    for g, c in zip(grads, copies):
        np.testing.assert_array_equal(g, c)


def test_clip_global_norm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_norm"):
        clip_global_norm([np.ones(2)], 0.0)
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        clip_global_norm([np.ones(2), np.ones(2, int)], 1.0)


def test_adam_clips_gradients_and_reports_it():
    model = Vector([0.0, 0.0])
    opt = Adam(model, lr=0.1, clip_norm=1.0)
    model.grads["p"][...] = [3.0, 4.0]
    info = opt.step()
    assert info["grad_norm"] == pytest.approx(5.0) and info["clipped"] is True
    np.testing.assert_allclose(model.grads["p"], [0.6, 0.8])
    np.testing.assert_allclose(opt.m["p"], [0.06, 0.08])      # moments saw the clipped grads
    model.grads["p"][...] = [0.3, 0.4]
    info = opt.step()
    assert info["grad_norm"] == pytest.approx(0.5) and info["clipped"] is False
    np.testing.assert_allclose(model.grads["p"], [0.3, 0.4])


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


def test_exponential_decay_values_and_floor():
    # the paper's schedule: 1e-4 decaying to a floor of 8e-5 (decay speed illustrative)
    sched = ExponentialDecay(1e-4, decay_rate=0.95, decay_steps=10_000, min_lr=8e-5)
    assert sched(0) == 1e-4
    assert sched(5_000) == pytest.approx(1e-4 * 0.95 ** 0.5, rel=1e-14)
    assert sched(10_000) == pytest.approx(9.5e-5, rel=1e-14)
    assert sched(40_000) == pytest.approx(1e-4 * 0.95 ** 4, rel=1e-14)  # still above floor
    assert sched(50_000) == 8e-5 and sched(10 ** 9) == 8e-5
    values = [sched(s) for s in range(0, 60_000, 500)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert min(values) == 8e-5
    # defaults: no decay
    assert ExponentialDecay(0.3)(12345) == 0.3
    assert ConstantLR(2e-3)(0) == ConstantLR(2e-3)(10 ** 6) == 2e-3


def test_linear_decay_values_and_floor():
    sched = LinearDecay(3e-4, decay_steps=1000, min_lr=1e-5)
    assert sched(0) == 3e-4
    assert sched(250) == pytest.approx(0.75 * 3e-4 + 0.25 * 1e-5, rel=1e-14)
    assert sched(500) == pytest.approx(1.55e-4, rel=1e-14)
    assert sched(1000) == 1e-5 and sched(10 ** 9) == 1e-5     # exactly the floor, then flat
    values = [sched(s) for s in range(0, 1200, 10)]
    steps = np.diff(values[:101])                             # a straight line until the floor
    assert np.allclose(steps, steps[0], rtol=1e-9, atol=0) and steps[0] < 0
    assert LinearDecay(1e-3, decay_steps=10)(10) == 0.0       # default floor: zero


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(initial_lr=0.0, decay_steps=10), ValueError, "initial_lr"),
    (dict(initial_lr=1e-3, decay_steps=0), ValueError, "decay_steps"),
    (dict(initial_lr=1e-3, decay_steps=2.5), TypeError, "decay_steps"),
    (dict(initial_lr=1e-3, decay_steps=10, min_lr=-1e-5), ValueError, "min_lr"),
    (dict(initial_lr=1e-3, decay_steps=10, min_lr=1e-2), ValueError, "min_lr"),
])
def test_linear_decay_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LinearDecay(**kwargs)
    with pytest.raises(ValueError, match="step"):
        LinearDecay(1e-3, 10)(-1)


def test_schedule_configs_rebuild_the_same_schedule():
    for sched in (ExponentialDecay(1e-3, 0.5, 7, 1e-5), ConstantLR(0.01),
                  LinearDecay(1e-3, 50, 1e-5)):
        again = optimizer.schedule_from_config(sched.config())
        assert type(again) is type(sched)
        assert [again(s) for s in range(0, 100, 9)] == [sched(s) for s in range(0, 100, 9)]
    with pytest.raises(ValueError, match="type"):
        optimizer.schedule_from_config({"type": "Cosine"})


def test_adam_uses_schedule_of_previous_step_count():
    sched = ExponentialDecay(0.1, decay_rate=0.5, decay_steps=1)
    model = Vector([0.0])
    opt = Adam(model, lr=123.0, schedule=sched)
    seen = []
    for _ in range(3):
        model.grads["p"][...] = 1.0
        seen.append(opt.step()["lr"])
    assert seen == [0.1, 0.05, 0.025]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(initial_lr=0.0), ValueError, "initial_lr"),
    (dict(initial_lr=-1e-3), ValueError, "initial_lr"),
    (dict(initial_lr=float("nan")), ValueError, "initial_lr"),
    (dict(initial_lr=1e-3, decay_rate=0.0), ValueError, "decay_rate"),
    (dict(initial_lr=1e-3, decay_rate=1.5), ValueError, "decay_rate"),
    (dict(initial_lr=1e-3, decay_steps=0), ValueError, "decay_steps"),
    (dict(initial_lr=1e-3, decay_steps=2.5), TypeError, "decay_steps"),
    (dict(initial_lr=1e-3, min_lr=-1e-5), ValueError, "min_lr"),
    (dict(initial_lr=1e-3, min_lr=1e-2), ValueError, "min_lr"),
    (dict(initial_lr="0.1"), TypeError, "initial_lr"),
])
def test_exponential_decay_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ExponentialDecay(**kwargs)


def test_schedules_reject_bad_steps_and_rates():
    with pytest.raises(ValueError, match="step"):
        ExponentialDecay(1e-3)(-1)
    with pytest.raises(TypeError, match="step"):
        ConstantLR(1e-3)(1.5)
    with pytest.raises(ValueError, match="lr"):
        ConstantLR(0.0)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _mlp_problem(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    model = layers.MLP([4, 6, 2], rng=rng, dtype=dtype)
    data = np.random.default_rng(100)
    x = data.standard_normal((16, 4)).astype(dtype)
    y = data.standard_normal((16, 2)).astype(dtype)
    return model, x, y


def _train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        mse_backward(model, x, y)
        opt.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_round_trip_resumes_bit_exactly(dtype):
    model, x, y = _mlp_problem(0, dtype)
    opt = Adam(model, lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2, clip_norm=0.5,
               schedule=ExponentialDecay(3e-2, decay_rate=0.7, decay_steps=3, min_lr=1e-2))
    _train(model, opt, x, y, 5)
    model_state, opt_state = model.state_dict(), opt.state_dict()
    saved_m = {n: a.copy() for n, a in opt_state["m"].items()}
    _train(model, opt, x, y, 4)                         # continue uninterrupted
    for name, a in opt_state["m"].items():               # the checkpoint holds copies
        assert np.array_equal(a, saved_m[name])

    fresh, _, _ = _mlp_problem(1, dtype)                 # different initial weights
    fresh.load_state_dict(model_state)
    resumed = Adam(fresh)                                # default hyperparameters ...
    resumed.load_state_dict(opt_state)                   # ... replaced by the checkpoint's
    assert resumed.t == 5 and resumed.betas == (0.8, 0.99) and resumed.clip_norm == 0.5
    _train(fresh, resumed, x, y, 4)

    assert resumed.t == opt.t == 9
    for name, p in model.parameters().items():
        q = fresh.parameters()[name]
        assert q.dtype == dtype
        assert np.array_equal(p, q), name
        assert np.array_equal(opt.m[name], resumed.m[name])
        assert np.array_equal(opt.v[name], resumed.v[name])


def test_state_dict_contents():
    model = Pair()
    opt = Adam(model, lr=2e-3, schedule=ConstantLR(1e-3))
    state = opt.state_dict()
    assert state["t"] == 0 and state["lr"] == 2e-3 and state["betas"] == (0.9, 0.999)
    assert state["schedule"] == {"type": "ConstantLR", "lr": 1e-3}
    assert set(state["m"]) == set(state["v"]) == {"a.p", "b.p"}
    assert state["m"]["a.p"] is not opt.m["a.p"]


def _bad_states(opt):
    good = opt.state_dict()

    def variant(**changes):
        state = dict(good)
        state.update(changes)
        return state

    extra = dict(good["m"], **{"c.p": np.zeros(3)})
    missing = {k: v for k, v in good["v"].items() if k != "a.p"}
    wrong_shape = dict(good["m"], **{"a.p": np.zeros(4)})
    negative_v = dict(good["v"], **{"b.p": -np.ones((2, 2))})
    nan_m = dict(good["m"], **{"a.p": np.full(3, np.nan)})
    no_t = {k: v for k, v in good.items() if k != "t"}
    return [
        (variant(m=extra), "unexpected \\['c.p'\\]"),
        (variant(v=missing), "missing \\['a.p'\\]"),
        (variant(m=wrong_shape), "shape"),
        (variant(v=negative_v), ">= 0"),
        (variant(m=nan_m), "finite"),
        (variant(t=-1), "t"),
        (variant(lr=-1.0), "lr"),
        (variant(betas=(0.9, 1.0)), "betas"),
        (variant(schedule={"type": "Nope"}), "type"),
        (no_t, "t"),
    ]


def test_mismatched_state_dicts_raise_and_change_nothing():
    model = Pair()
    opt = Adam(model, lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model.backward_quadratic()
        opt.step()
    bad_states = _bad_states(opt)
    before = snapshot(model, opt)
    for state, match in bad_states:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(state)
        assert_same_snapshot(snapshot(model, opt), before)
        assert opt.lr == 1e-2 and opt.schedule is None


def test_state_dict_of_another_model_is_rejected():
    opt = Adam(Vector([1.0, 2.0]))
    other = Adam(Pair()).state_dict()
    with pytest.raises(ValueError, match="missing \\['p'\\]"):
        opt.load_state_dict(other)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=0.0), ValueError, "lr"),
    (dict(lr=-1e-3), ValueError, "lr"),
    (dict(lr=float("inf")), ValueError, "lr"),
    (dict(lr=True), TypeError, "lr"),
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (dict(betas=(0.9,)), ValueError, "betas"),
    (dict(betas=0.9), TypeError, "betas"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(clip_norm=0.0), ValueError, "clip_norm"),
    (dict(clip_norm=float("nan")), ValueError, "clip_norm"),
    (dict(schedule=0.01), TypeError, "schedule"),
])
def test_adam_rejects_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        Adam(Vector([1.0]), **kwargs)


def test_adam_rejects_models_without_the_module_seam():
    with pytest.raises(TypeError, match="model"):
        Adam({"p": np.ones(2)})
    with pytest.raises(ValueError, match="no parameters"):
        Adam(layers.Module())


def test_schedule_returning_a_bad_rate_raises_before_any_change():
    model = Vector([1.0, 2.0])
    opt = Adam(model, schedule=lambda step: float("nan"))
    model.grads["p"][...] = 1.0
    with pytest.raises(ValueError, match="schedule"):
        opt.step()
    assert opt.t == 0 and not opt.m["p"].any()
    np.testing.assert_array_equal(model.params["p"], [1.0, 2.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_raises_and_leaves_everything_untouched(bad):
    model = Pair(dtype=np.float32)
    opt = Adam(model, lr=1e-2, weight_decay=1e-2, clip_norm=0.1)
    for _ in range(3):
        opt.zero_grad()
        model.backward_quadratic()
        opt.step()
    opt.zero_grad()
    model.backward_quadratic()
    model.children["b"].grads["p"][1, 0] = bad
    grads_before = {n: g.copy() for n, g in model.gradients().items()}
    before = snapshot(model, opt)
    with pytest.raises(FloatingPointError, match="'b.p'"):
        opt.step()
    assert_same_snapshot(snapshot(model, opt), before)
    for name, g in model.gradients().items():
        np.testing.assert_array_equal(g, grads_before[name])


# --------------------------------------------------------------------------------------------
# Packed parameters: one flat vector behind the model's tensors
# --------------------------------------------------------------------------------------------


def _unpacked_copy(model):
    """A copy whose parameters and gradients are separate arrays (not views of a flat one)."""
    import copy
    twin = copy.deepcopy(model)
    for m in twin.modules():
        m.params = {n: p.copy() for n, p in m.params.items()}
        m.grads = {n: g.copy() for n, g in m.grads.items()}
    assert twin.flat_buffers() is None
    return twin


def test_a_constructed_model_is_packed_in_named_order():
    model = layers.MLP([3, 4, 2], rng=np.random.default_rng(0), dtype=np.float32)
    flat = model.flat_buffers()
    assert flat is not None and flat.params.dtype == np.float32
    start = 0
    for name, p, g in model.named_parameters():
        assert p.base is flat.params and g.base is flat.grads
        assert np.shares_memory(p, flat.params[start:start + p.size])
        start += p.size
    assert start == flat.params.size == model.num_parameters()
    assert model.children["fc0"].flat_buffers() is None          # superseded by the parent's
    for g in model.gradients().values():
        g += 1.0
    model.zero_grad()
    assert not flat.grads.any()


@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_adam_and_the_average_on_a_packed_model_match_the_per_tensor_path(clip_norm):
    rng = np.random.default_rng(1)
    packed = layers.MLP([5, 7, 3], rng=rng, dtype=np.float32)
    twin = _unpacked_copy(packed)
    opts = [Adam(m, lr=1e-2, clip_norm=clip_norm, weight_decay=0.01) for m in (packed, twin)]
    emas = [ExponentialMovingAverage(m, decay=0.9) for m in (packed, twin)]
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y = rng.standard_normal((6, 3)).astype(np.float32)
    for _ in range(4):
        for model, opt, ema in zip((packed, twin), opts, emas):
            opt.zero_grad()
            mse_backward(model, x, y)
            opt.step()
            ema.update()
    for name, p in packed.parameters().items():
        q = twin.parameters()[name]
        if clip_norm is None:                       # the same operations, element by element
            assert np.array_equal(p, q), name
            assert np.array_equal(emas[0].average[name], emas[1].average[name]), name
        else:                                       # the norm is summed in another order
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6, err_msg=name)
    state = opts[0].state_dict()
    opts[1].load_state_dict(state)
    for name in state["m"]:
        assert np.array_equal(opts[1].m[name], state["m"][name])


def test_a_parameter_added_after_packing_is_still_cleared_and_stepped():
    model = Pair()
    model.children["a"].add_param("extra", np.ones(2))
    assert model.flat_buffers() is None
    for g in model.gradients().values():
        g += 1.0
    model.zero_grad()
    assert all(not g.any() for g in model.gradients().values())
    opt = Adam(model, lr=0.1)
    model.backward_quadratic()
    before = model.parameters()["a.extra"].copy()
    model.children["a"].grads["extra"] += 1.0
    opt.step()
    assert not np.array_equal(model.parameters()["a.extra"], before)


def test_changed_parameter_set_is_detected():
    model = Pair()
    opt = Adam(model)
    model.children["a"].add_param("extra", np.ones(2))
    with pytest.raises(RuntimeError, match="changed"):
        opt.step()


# --------------------------------------------------------------------------------------------
# Parameter averaging
# --------------------------------------------------------------------------------------------


def test_moving_average_matches_the_update_rule_by_hand():
    model = Vector([1.0, -2.0])
    ema = ExponentialMovingAverage(model, decay=0.95)
    p = model.params["p"]
    expected = p.copy()
    for t, value in enumerate(([3.0, 0.0], [5.0, 4.0], [-1.0, 2.0])):
        p[...] = value
        d = min(0.95, (1 + t) / (10 + t))                 # 0.1, 2/11, 3/12
        expected = expected + (1 - d) * (np.array(value) - expected)
        ema.update()
        np.testing.assert_allclose(ema.average["p"], expected, rtol=0, atol=1e-15)
    assert ema.t == 3 and ema.current_decay(10 ** 6) == 0.95


def test_moving_average_of_a_constant_stays_put_and_smooths_noise():
    rng = np.random.default_rng(0)
    model = Vector(np.zeros(200))
    ema = ExponentialMovingAverage(model, decay=0.99)
    for _ in range(3000):
        model.params["p"][...] = 1.0 + rng.standard_normal(200)   # iterates jitter around 1
        ema.update()
    # the average's spread is about sqrt((1 - d) / (1 + d)) ~ 0.07 of one iterate's
    assert abs(ema.average["p"].mean() - 1.0) < 0.02
    assert ema.average["p"].std() < 0.15


def test_applied_swaps_in_the_average_and_restores_even_on_error():
    model = Pair(dtype=np.float32)
    ema = ExponentialMovingAverage(model, decay=0.9)
    trained = {n: p.copy() for n, p in model.parameters().items()}
    ema.average["a.p"][...] = 7.0
    arrays = model.parameters()
    with ema.applied() as inside:
        assert inside is model
        assert np.all(model.parameters()["a.p"] == 7.0)
        assert model.parameters()["a.p"] is arrays["a.p"]           # in place, same arrays
    for name, value in trained.items():
        assert np.array_equal(model.parameters()[name], value)
    with pytest.raises(KeyError):
        with ema.applied():
            raise KeyError("boom")
    for name, value in trained.items():
        assert np.array_equal(model.parameters()[name], value)
    assert model.parameters()["a.p"].dtype == np.float32


def test_moving_average_state_dict_round_trips_and_bad_states_change_nothing():
    model = Pair()
    ema = ExponentialMovingAverage(model, decay=0.99)
    for _ in range(5):
        for p in model.parameters().values():
            p += 0.1
        ema.update()
    state = ema.state_dict()
    other = ExponentialMovingAverage(Pair(), decay=0.5)
    other.load_state_dict(state)
    assert other.t == 5 and other.decay == 0.99
    for name in state["average"]:
        assert np.array_equal(other.average[name], ema.average[name])
    fresh = ExponentialMovingAverage(Pair(), decay=0.5)
    before = {n: a.copy() for n, a in fresh.average.items()}
    bad_states = [
        ({**state, "average": {"a.p": state["average"]["a.p"]}}, ValueError, "missing"),
        ({**state, "average": {**state["average"], "b.p": np.zeros(3)}}, ValueError, "shape"),
        ({**state, "average": {**state["average"], "a.p": np.full(3, np.nan)}}, ValueError,
         "finite"),
        ({**state, "decay": 1.0}, ValueError, "decay"),
        ({**state, "t": -1}, ValueError, "t"),
        ({"decay": 0.9}, ValueError, "lacks"),
    ]
    for bad, error, match in bad_states:
        with pytest.raises(error, match=match):
            fresh.load_state_dict(bad)
    assert fresh.t == 0 and fresh.decay == 0.5
    for name, value in before.items():
        assert np.array_equal(fresh.average[name], value)


@pytest.mark.parametrize("decay, error", [(1.0, ValueError), (0.0, ValueError),
                                          (float("nan"), ValueError), ("0.9", TypeError)])
def test_moving_average_rejects_bad_decay(decay, error):
    with pytest.raises(error, match="decay"):
        ExponentialMovingAverage(Vector([1.0]), decay=decay)
