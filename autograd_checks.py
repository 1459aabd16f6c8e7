"""Proof of every hand-written backward pass: central finite differences in float64.

Run ``python autograd_checks.py`` for a table of every module of the library (module, tensor,
shape, max relative error, threshold, pass/fail); the exit code is non-zero on any failure.
``--only TEXT`` restricts the run to cases whose name contains TEXT; ``--list`` names the cases.

The checker is generic: for a module with forward ``outs, cache = forward(inputs)`` and backward
``dinputs = backward(douts, cache)`` it draws a random upstream gradient ``dout`` for every
output, forms the scalar ``f = sum(out * dout)``, and compares the analytic gradient of ``f``
against ``(f(x + h) - f(x - h)) / 2h`` for every entry of every parameter tensor and every input
(initial states included), each tensor reported separately.

Relative error of one tensor: ``max|a - n| / max(1e-8, max|a| + max|n|)``, with ``a`` the
analytic and ``n`` the numerical gradient.  Using the tensor's scale in the denominator (rather
than each entry's) keeps entries whose true gradient is ~0 from reporting rounding noise as error.
Thresholds: 1e-7 for single layers, 1e-6 for sequences unrolled over T >= 5 steps.

Tests import ``check_gradients`` and the case functions from here, so the command-line proof and
the test suite run the same code.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

import layers

LAYER_TOL = 1e-7
SEQUENCE_TOL = 1e-6
STEP = 1e-5


@dataclass
class CheckResult:
    """One tensor's comparison of analytic against numerical gradient."""

    case: str
    tensor: str
    shape: tuple
    error: float
    threshold: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error) and self.error <= self.threshold)


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """``max|a - n| / max(1e-8, max|a| + max|n|)`` over one tensor."""
    if analytic.shape != numeric.shape:
        return float("inf")
    if analytic.size == 0:
        return 0.0
    diff = float(np.max(np.abs(analytic - numeric)))
    scale = float(np.max(np.abs(analytic)) + np.max(np.abs(numeric)))
    return diff / max(1e-8, scale)


def _as_tuple(outs):
    return outs if isinstance(outs, tuple) else (outs,)


def check_gradients(case: str, forward: Callable, backward: Callable, inputs: dict,
                    module: layers.Module | None = None, *, threshold: float = LAYER_TOL,
                    step: float = STEP, seed: int = 0) -> list[CheckResult]:
    """Check the gradients of every parameter of ``module`` and every floating input.

    forward(inputs) -> (outs, cache), outs an array or a tuple of arrays (None entries ignored)
    backward(douts, cache) -> dict mapping each floating input's name to its gradient
    inputs: dict of float64 arrays (non-float entries are passed through, not checked)

    Parameters and inputs are perturbed in place and restored exactly.
    """
    rng = np.random.default_rng(seed)
    outs, cache = forward(inputs)
    douts = tuple(None if o is None else rng.standard_normal(np.shape(o)) for o in _as_tuple(outs))

    def objective() -> float:
        o, _ = forward(inputs)
        return float(sum(np.sum(a * d) for a, d in zip(_as_tuple(o), douts) if a is not None))

    if module is not None:
        module.zero_grad()
    outs, cache = forward(inputs)
    dinputs = backward(douts if len(douts) > 1 else douts[0], cache)
    targets = []
    if module is not None:
        targets += [(name, p, g.copy()) for name, p, g in module.named_parameters()]
    for name, x in inputs.items():
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            if name not in dinputs or dinputs[name] is None:
                targets.append((name, x, None))
            else:
                targets.append((name, x, np.asarray(dinputs[name])))

    results = []
    for name, x, analytic in targets:
        if analytic is None:  # the backward forgot an input: that is a failure, not a skip
            results.append(CheckResult(case, name, x.shape, float("inf"), threshold))
            continue
        numeric = np.zeros_like(x)
        flat, nflat = x.reshape(-1), numeric.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + step
            f_plus = objective()
            flat[i] = old - step
            f_minus = objective()
            flat[i] = old
            nflat[i] = (f_plus - f_minus) / (2 * step)
        results.append(CheckResult(case, name, x.shape, relative_error(analytic, numeric),
                                   threshold))
    return results


# --------------------------------------------------------------------------------------------
# Cases: one function per module; each returns its list of CheckResult.
# --------------------------------------------------------------------------------------------

CASES: dict[str, Callable[[], list[CheckResult]]] = {}


def case(name: str):
    """Register a gradient-check case under ``name`` (also used by the tests)."""
    def register(fn):
        CASES[name] = fn
        return fn
    return register


def module_case(name: str, module: layers.Module, inputs: dict, threshold: float = LAYER_TOL,
                seed: int = 0):
    """Check a module with the standard ``forward(x) / backward(dout, cache)`` contract."""
    key = next(iter(inputs))
    return check_gradients(
        name, lambda inp: module.forward(inp[key]),
        lambda d, c: {key: module.backward(d, c)}, inputs, module,
        threshold=threshold, seed=seed)


@case("layers.Linear")
def check_linear():
    rng = np.random.default_rng(1)
    lin = layers.Linear(5, 4, rng=rng)
    lin.params["b"][...] = rng.standard_normal(4)
    return module_case("layers.Linear", lin, {"x": rng.standard_normal((3, 2, 5))})


@case("layers.LayerNorm")
def check_layernorm():
    rng = np.random.default_rng(2)
    ln = layers.LayerNorm(6)
    ln.params["g"][...] = rng.uniform(0.5, 1.5, 6)
    ln.params["b"][...] = rng.standard_normal(6)
    return module_case("layers.LayerNorm", ln, {"x": rng.standard_normal((4, 3, 6))})


@case("layers.MLP")
def check_mlp():
    rng = np.random.default_rng(3)
    mlp = layers.MLP([5, 7, 6, 3], rng=rng)
    for _, p, _ in mlp.named_parameters():
        p[...] = rng.standard_normal(p.shape) * 0.5
    return module_case("layers.MLP", mlp, {"x": rng.standard_normal((4, 5))})


@case("layers.activations")
def check_activations():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5))
    results = []
    pairs = {
        "sigmoid": (layers.sigmoid, layers.sigmoid_backward),
        "tanh": (np.tanh, layers.tanh_backward),
        "relu": (layers.relu_forward, layers.relu_backward),
        "softmax": (layers.softmax, layers.softmax_backward),
    }
    for fname, (fwd, bwd) in pairs.items():
        results += check_gradients(
            f"layers.{fname}", lambda inp, f=fwd: (f(inp["x"]),) * 2,
            lambda d, y, b=bwd: {"x": b(d, y)}, {"x": x.copy()})
    return results


@case("layers.softmax_cross_entropy")
def check_cross_entropy():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=6)

    def fwd(inp):
        loss, dlogits, _ = layers.softmax_cross_entropy(inp["logits"], labels)
        return np.array(loss), dlogits

    return check_gradients("layers.softmax_cross_entropy", fwd,
                           lambda d, dlogits: {"logits": d * dlogits},
                           {"logits": rng.standard_normal((6, 4))})


@case("attention.MultiHeadAttention")
def check_attention():
    from attention import MultiHeadAttention
    rng = np.random.default_rng(6)
    results = []
    # key_size differs from head_size in the second configuration.
    for H, head, key in ((1, 3, None), (2, 3, 2)):
        attn = MultiHeadAttention(4, H, head, key, rng=rng)
        attn.params["b_qkv"][...] = rng.standard_normal(attn.params["b_qkv"].shape) * 0.1
        attn.params["ln_g"][...] = rng.uniform(0.5, 1.5, attn.params["ln_g"].shape)
        attn.params["ln_b"][...] = rng.standard_normal(attn.params["ln_b"].shape) * 0.1
        results += module_case(f"attention.MultiHeadAttention H={H} key={key or head}", attn,
                               {"x": rng.standard_normal((2, 5, 4))})
    return results


def _lstm_jitter_bias(rng, module):
    """Random biases (all cells of ``module``) so no gate sits at a special point."""
    for name, p, _ in module.named_parameters():
        if name.endswith("b"):
            p += rng.standard_normal(p.shape) * 0.5


@case("lstm.LSTMCell")
def check_lstm_cell():
    from lstm_baseline import LSTMCell
    rng = np.random.default_rng(7)
    cell = LSTMCell(3, 4, rng=rng)
    _lstm_jitter_bias(rng, cell)
    return check_gradients(
        "lstm.LSTMCell", lambda inp: cell.forward(inp["x"], inp["h_prev"], inp["c_prev"]),
        lambda d, c: dict(zip(("x", "h_prev", "c_prev"), cell.backward(d[0], d[1], c))),
        {"x": rng.standard_normal((2, 3)), "h_prev": rng.standard_normal((2, 4)),
         "c_prev": rng.standard_normal((2, 4))}, cell, threshold=LAYER_TOL)


@case("lstm.LSTM")
def check_lstm_sequence():
    from lstm_baseline import LSTM
    rng = np.random.default_rng(8)
    lstm = LSTM(3, 4, rng=rng)
    _lstm_jitter_bias(rng, lstm)

    def fwd_state(inp):  # outputs (B, T, H), h_T, c_T: the checker draws a dout for each
        *outs, cache = lstm.forward(inp["x"], inp["h0"], inp["c0"], return_state=True,
                                    return_cache=True)
        return tuple(outs), cache

    results = check_gradients(
        "lstm.LSTM", fwd_state,
        lambda d, c: dict(zip(("x", "h0", "c0"), lstm.backward(d[0], c, d[1], d[2]))),
        {"x": rng.standard_normal((2, 6, 3)), "h0": rng.standard_normal((2, 4)),
         "c0": rng.standard_normal((2, 4))}, lstm, threshold=SEQUENCE_TOL)
    # Last step only, zero initial state (backward then returns dx alone).
    results += check_gradients(
        "lstm.LSTM last-step", lambda inp: lstm.forward(inp["x"], return_sequences=False,
                                                         return_cache=True),
        lambda d, c: {"x": lstm.backward(d, c)},
        {"x": rng.standard_normal((2, 5, 3))}, lstm, threshold=SEQUENCE_TOL)
    return results


@case("lstm.LSTMClassifier")
def check_lstm_classifier():
    from lstm_baseline import LSTMClassifier
    rng = np.random.default_rng(9)
    model = LSTMClassifier(3, 4, 3, mlp_hidden=(5,), rng=rng)
    _lstm_jitter_bias(rng, model)
    return module_case("lstm.LSTMClassifier", model, {"x": rng.standard_normal((2, 5, 3))},
                       threshold=SEQUENCE_TOL)


def _randomise(module: layers.Module, rng: np.random.Generator, scale: float = 0.3) -> None:
    """Move every parameter off its initial value (LayerNorm gains stay positive), so that no
    gradient is checked only at a special point such as zero biases or unit gains."""
    for name, p, _ in module.named_parameters():
        if name.endswith(("ln_g", ".g")):
            p[...] = rng.uniform(0.5, 1.5, p.shape)
        else:
            p += rng.standard_normal(p.shape) * scale * (1.0 if p.ndim == 1 else 0.3)


# (N slots, H heads, head_size, key_size, num_blocks, gate_style): every gate style, one and
# three blocks, key_size != head_size, N from 1 to 8, H from 1 to 4.
RMC_CONFIGS = [
    (1, 1, 3, None, 1, "unit"),
    (2, 2, 2, 3, 3, "memory"),
    (3, 4, 2, None, 1, None),
    (8, 2, 2, 1, 1, "unit"),
]


def _rmc(config, input_size, rng):
    from relational_memory import RelationalMemory
    N, H, hs, ks, blocks, gate = config
    core = RelationalMemory(input_size, N, hs, H, key_size=ks, num_blocks=blocks,
                            gate_style=gate, rng=rng)
    _randomise(core, rng)
    return core


@case("relational_memory.RelationalMemory step")
def check_rmc_step():
    rng = np.random.default_rng(7)
    results = []
    for config in RMC_CONFIGS[:3]:
        core = _rmc(config, 3, rng)
        name = "RMC step N={} H={} hs={} ks={} blocks={} gate={}".format(*config)
        inputs = {"x": rng.standard_normal((2, 3)),
                  "memory": rng.standard_normal((2, core.mem_slots, core.mem_size))}
        results += check_gradients(
            name, lambda inp: core.forward(inp["x"], inp["memory"]),
            lambda d, c: dict(zip(("x", "memory"), core.backward(d, c))), inputs, core)
    return results


@case("relational_memory.RelationalMemory sequence")
def check_rmc_sequence():
    rng = np.random.default_rng(8)
    results = []
    for config in RMC_CONFIGS:
        core = _rmc(config, 3, rng)
        name = "RMC T=5 N={} H={} hs={} ks={} blocks={} gate={}".format(*config)
        inputs = {"x": rng.standard_normal((2, 5, 3)),
                  "memory0": rng.standard_normal((2, core.mem_slots, core.mem_size))}
        results += check_gradients(
            name, lambda inp: core.forward_sequence(inp["x"], inp["memory0"]),
            lambda d, c: dict(zip(("x", "memory0"), core.backward_sequence(d, c))),
            inputs, core, threshold=SEQUENCE_TOL)
    return results


@case("relational_memory.RMCClassifier")
def check_rmc_classifier():
    from relational_memory import RMCClassifier
    rng = np.random.default_rng(9)
    model = RMCClassifier(4, 3, mem_slots=2, head_size=2, num_heads=2, mlp_hidden=(5, 4), rng=rng)
    _randomise(model, rng)
    return module_case("RMCClassifier T=5", model, {"x": rng.standard_normal((2, 5, 4))},
                       threshold=SEQUENCE_TOL)


# What the RelationalRNN's memory reads, in the case names: h_t, or x_t beside it.
_SHORT = {"hidden": "h", "input_and_hidden": "x+h"}


@case("relational_rnn.RelationalRNNCell")
def check_relational_rnn_cell():
    from relational_rnn_cell import RelationalRNNCell
    rng = np.random.default_rng(10)
    results = []
    # The last two configurations prove the options: the memory reading [x ; h], and the
    # read-out of all slots side by side.
    for gate, blocks, reads, readout in (("unit", 1, "hidden", "mean"),
                                         ("memory", 2, "hidden", "mean"),
                                         ("unit", 1, "input_and_hidden", "mean"),
                                         ("memory", 1, "hidden", "slots")):
        cell = RelationalRNNCell(2, 3, num_slots=2, slot_size=4, num_heads=2,
                                 num_blocks=blocks, gate_style=gate, memory_input=reads,
                                 memory_readout=readout, rng=rng)
        _randomise(cell, rng)
        inputs = {"x": rng.standard_normal((2, 2)), "h": rng.standard_normal((2, 3)),
                  "c": rng.standard_normal((2, 3)), "memory": rng.standard_normal((2, 2, 4))}

        def fwd(inp, cell=cell):  # outputs out, h, c, memory: the checker draws a dout for each
            out, state, cache = cell.forward(inp["x"], (inp["h"], inp["c"], inp["memory"]))
            return (out, *state), cache

        def bwd(d, cache, cell=cell):
            dx, dstate = cell.backward(d[0], d[1:], cache)
            return dict(zip(("x", "h", "c", "memory"), (dx, *dstate)))

        results += check_gradients(f"RelationalRNNCell gate={gate} blocks={blocks} "
                                   f"{_SHORT[reads]} {readout}", fwd, bwd, inputs, cell,
                                   threshold=LAYER_TOL)
    return results


@case("relational_rnn.RelationalRNN")
def check_relational_rnn():
    from relational_rnn_cell import RelationalRNN
    rng = np.random.default_rng(11)
    results = []
    # key_size 1 differs from head_size 2 in the second configuration; the third has both
    # options: the memory reads [x_t ; h_t] and r_t reads all slots.
    for gate, blocks, key_size, options in (
            ("unit", 1, None, {}), (None, 2, 1, {}),
            ("unit", 1, None, dict(memory_input="input_and_hidden", memory_readout="slots"))):
        model = RelationalRNN(2, 3, 2, num_slots=2, slot_size=4, num_heads=2,
                              num_blocks=blocks, key_size=key_size, gate_style=gate, rng=rng,
                              **options)
        _randomise(model, rng)
        inputs = {"x": rng.standard_normal((2, 5, 2)), "h0": rng.standard_normal((2, 3)),
                  "c0": rng.standard_normal((2, 3)), "memory0": rng.standard_normal((2, 2, 4))}

        def fwd(inp, model=model):  # outputs (B, T, O), h_T, c_T, memory_T
            *outs, cache = model.forward(inp["x"], inp["h0"], inp["c0"], inp["memory0"],
                                         return_state=True, return_cache=True)
            return tuple(outs), cache

        def bwd(d, cache, model=model):
            return dict(zip(("x", "h0", "c0", "memory0"), model.backward(d[0], cache, *d[1:])))

        results += check_gradients(
            f"RelationalRNN T=5 gate={gate} blocks={blocks}"
            + "".join(f" {_SHORT.get(v, v)}" for v in options.values()),
            fwd, bwd, inputs, model, threshold=SEQUENCE_TOL)
    return results


@case("relational_rnn.RelationalRNNClassifier")
def check_relational_rnn_classifier():
    # Also covers RelationalRNN with return_sequences=False and the default initial state.
    from relational_rnn_cell import RelationalRNNClassifier
    rng = np.random.default_rng(12)
    results = []
    for reads, readout in (("hidden", "mean"), ("input_and_hidden", "slots")):
        model = RelationalRNNClassifier(2, 3, hidden_size=3, num_slots=2, slot_size=4,
                                        num_heads=2, memory_input=reads, memory_readout=readout,
                                        mlp_hidden=(4,), rng=rng)
        _randomise(model, rng)
        model.readout.layers[0].params["b"] += 1.0   # keep the ReLUs active: no zero gradients
        results += module_case(f"RelationalRNNClassifier T=5 {_SHORT[reads]} {readout}", model,
                               {"x": rng.standard_normal((2, 5, 2))}, threshold=SEQUENCE_TOL)
    return results


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def run_cases(names=None, out=sys.stdout) -> list[CheckResult]:
    """Run the named cases (all by default), print the table, and return every result."""
    names = list(CASES) if names is None else names
    results = []
    header = f"{'module':52s} {'tensor':28s} {'shape':16s} {'max rel err':>11s} {'limit':>7s}  ok"
    print(header, file=out)
    print("-" * len(header), file=out)
    for name in names:
        t0 = time.perf_counter()
        rows = CASES[name]()
        for r in rows:
            print(f"{r.case:52s} {r.tensor:28s} {str(r.shape):16s} {r.error:11.2e} "
                  f"{r.threshold:7.0e}  {'pass' if r.passed else 'FAIL'}", file=out)
        results += rows
        if not rows:
            print(f"{name:52s} (no tensors checked: FAIL)", file=out)
            results.append(CheckResult(name, "<none>", (), float("inf"), 0.0))
        out.flush()
        _ = time.perf_counter() - t0
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Prove every hand-written backward pass of the library against central "
                    "finite differences in float64, and print one row per checked tensor.")
    parser.add_argument("--only", metavar="TEXT", default=None,
                        help="run only the cases whose name contains TEXT")
    parser.add_argument("--list", action="store_true", help="list the case names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    names = [n for n in CASES if args.only is None or args.only in n]
    if not names:
        parser.error(f"--only {args.only!r} matches no case; see --list")
    t0 = time.perf_counter()
    results = run_cases(names)
    failed = [r for r in results if not r.passed]
    worst = max((r.error for r in results), default=float("nan"))
    print(f"\n{len(results)} tensors in {len(names)} cases checked in "
          f"{time.perf_counter() - t0:.1f} s; worst relative error {worst:.2e}; "
          f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
