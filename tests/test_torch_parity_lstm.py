"""The NumPy LSTM against torch.nn.LSTM: outputs, final states and every gradient."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lstm_baseline import LSTM  # noqa: E402
from torch_reference import torch_lstm_from_numpy  # noqa: E402

B, T, I, H = 3, 7, 5, 6


def _model(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    lstm = LSTM(I, H, rng=rng, dtype=dtype)
    for _, p, _ in lstm.named_parameters():  # move every weight off its initial value
        p += (rng.standard_normal(p.shape) * 0.3).astype(dtype)
    return lstm, rng


def _t(a):
    return torch.from_numpy(np.array(a)).requires_grad_(True)


def test_helper_copies_weights_in_torch_layout():
    lstm, _ = _model(0)
    ref = torch_lstm_from_numpy(lstm)
    assert ref.batch_first and ref.num_layers == 1 and ref.weight_ih_l0.dtype == torch.float64
    np.testing.assert_array_equal(ref.weight_ih_l0.detach().numpy(), lstm.cell.params["W_x"].T)
    np.testing.assert_array_equal(ref.weight_hh_l0.detach().numpy(), lstm.cell.params["W_h"].T)
    np.testing.assert_array_equal(ref.bias_ih_l0.detach().numpy(), lstm.cell.params["b"])
    assert not ref.bias_hh_l0.detach().numpy().any()


def test_forward_and_all_gradients_match_torch_with_initial_state():
    lstm, rng = _model(1)
    x, h0, c0 = rng.standard_normal((B, T, I)), rng.standard_normal((B, H)), \
        rng.standard_normal((B, H))
    dout, dhT, dcT = rng.standard_normal((B, T, H)), rng.standard_normal((B, H)), \
        rng.standard_normal((B, H))

    outs, hT, cT, cache = lstm.forward(x, h0, c0, return_state=True, return_cache=True)
    dx, dh0, dc0 = lstm.backward(dout, cache, dh_T=dhT, dc_T=dcT)

    ref = torch_lstm_from_numpy(lstm)
    tx, th0, tc0 = _t(x), _t(h0), _t(c0)
    touts, (thT, tcT) = ref(tx, (th0[None], tc0[None]))
    loss = ((touts * torch.from_numpy(dout)).sum() + (thT[0] * torch.from_numpy(dhT)).sum()
            + (tcT[0] * torch.from_numpy(dcT)).sum())
    loss.backward()

    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(outs, touts.detach().numpy(), **tol)
    np.testing.assert_allclose(hT, thT[0].detach().numpy(), **tol)
    np.testing.assert_allclose(cT, tcT[0].detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(dh0, th0.grad.numpy(), **tol)
    np.testing.assert_allclose(dc0, tc0.grad.numpy(), **tol)
    g = lstm.gradients()
    np.testing.assert_allclose(g["cell.W_x"], ref.weight_ih_l0.grad.numpy().T, **tol)
    np.testing.assert_allclose(g["cell.W_h"], ref.weight_hh_l0.grad.numpy().T, **tol)
    np.testing.assert_allclose(g["cell.b"], ref.bias_ih_l0.grad.numpy(), **tol)
    np.testing.assert_allclose(g["cell.b"], ref.bias_hh_l0.grad.numpy(), **tol)


def test_last_step_with_zero_state_matches_torch():
    lstm, rng = _model(2)
    x, d = rng.standard_normal((B, T, I)), rng.standard_normal((B, H))
    last, cache = lstm.forward(x, return_sequences=False, return_cache=True)
    dx = lstm.backward(d, cache)

    ref = torch_lstm_from_numpy(lstm)
    tx = _t(x)
    touts, _ = ref(tx)
    (touts[:, -1] * torch.from_numpy(d)).sum().backward()

    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(last, touts[:, -1].detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(lstm.gradients()["cell.W_h"], ref.weight_hh_l0.grad.numpy().T,
                               **tol)


def test_float32_model_matches_torch_float32():
    lstm, rng = _model(3, np.float32)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    ref = torch_lstm_from_numpy(lstm)
    assert ref.weight_ih_l0.dtype == torch.float32
    outs = lstm.forward(x)
    assert outs.dtype == np.float32
    np.testing.assert_allclose(outs, ref(torch.from_numpy(x))[0].detach().numpy(), atol=1e-5)
