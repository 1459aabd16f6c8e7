"""PyTorch reference implementations for parity tests and benchmarks (needs ``torch``).

Shared by every engineer of the library: add your own functions/classes below, one section
per module, without rewriting the others'.
"""
from __future__ import annotations

import numpy as np
import torch

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def torch_dtype(dtype) -> "torch.dtype":
    """The torch dtype matching a NumPy float32/float64 dtype."""
    return _TORCH_DTYPES[np.dtype(dtype)]


# --------------------------------------------------------------------------------------------
# lstm_baseline
# --------------------------------------------------------------------------------------------


def torch_lstm_from_numpy(lstm) -> "torch.nn.LSTM":
    """A ``torch.nn.LSTM`` (batch_first, one layer, same dtype) holding the weights of ``lstm``.

    ``lstm`` is an ``lstm_baseline.LSTM`` (or its ``LSTMCell``).  Both use the gate order
    [i, f, g, o]; torch stores weights as (4H, in) so ours are transposed, and torch has two
    biases whose sum acts like our single ``b``: ours goes to ``bias_ih_l0`` and ``bias_hh_l0`` is
    zero.  Gradients map back the same way: ``grad W_x = weight_ih_l0.grad.T``,
    ``grad W_h = weight_hh_l0.grad.T``, ``grad b = bias_ih_l0.grad`` (= ``bias_hh_l0.grad``).
    """
    cell = getattr(lstm, "cell", lstm)
    p = cell.params
    module = torch.nn.LSTM(cell.input_size, cell.hidden_size, num_layers=1, bias=True,
                           batch_first=True, dtype=torch_dtype(cell.dtype))
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(p["W_x"].T)))
        module.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(p["W_h"].T)))
        module.bias_ih_l0.copy_(torch.from_numpy(p["b"].copy()))
        module.bias_hh_l0.zero_()
    return module
