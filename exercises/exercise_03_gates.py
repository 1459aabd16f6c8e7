"""Exercise 3: the gated memory update.

After attention and the MLP have proposed a new memory M~ (B, N, d), the RMC does not simply
replace its memory: like an LSTM it keeps a part of the old one, with an input gate i and a
forget gate f computed from the projected input x~ (B, d) and the old memory M (B, N, d):

    g = x~ W_gx + b_g  (broadcast over the N slots)  +  tanh(M) W_gm        (B, N, 2G)
    i = sigmoid(g[..., :G] + input_bias)                                     (B, N, G)
    f = sigmoid(g[..., G:] + forget_bias)                                    (B, N, G)
    M_new = i * tanh(M~) + f * M                                             (B, N, d)

Parameters: W_gx (d, 2G), W_gm (d, 2G), b_g (2G,).  input_bias and forget_bias are constants
(Sonnet: 0 and 1), not trained: a forget bias of 1 starts the memory half-remembering.
Two gate styles:

* 'unit': G = d, a gate for every unit of every slot;
* 'memory': G = 1, one gate per slot, broadcast over the d units (so its gradient sums over d).

The style follows from the shapes: G = W_gx.shape[1] // 2.  With forget_bias = +inf and
input_bias = -inf the gates are exactly f = 1 and i = 0 and the memory never changes.

Write the forward/backward pairs below in the style of the library (``layers.py``).  You may use
``layers.linear_forward/backward``, ``layers.sigmoid``, ``layers.sigmoid_backward`` and
``layers.tanh_backward``.  The old memory M reaches M_new along two paths (through f * M and
through the gates): its gradient is the sum of both.

Shape letters: B batch, N memory slots, d memory row width, G gate width (d or 1).

Grade your work:   python exercises/exercise_03_gates.py
The solution:      python exercises/exercise_03_gates.py --solution
Exercise 4 reuses memory_update_forward/backward.
"""
from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:     # run from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import layers  # noqa: E402,F401  (for your code: linear_forward, sigmoid, tanh_backward, ...)
from exercises import grading  # noqa: E402

# ============================================================================================
# Your code
# ============================================================================================


def gates_forward(xp, memory, params, input_bias=0.0, forget_bias=1.0):
    """The input and forget gates.

    xp (B, d), memory (B, N, d), params {"W_gx" (d, 2G), "W_gm" (d, 2G), "b_g" (2G,)} ->
    (i, f), each (B, N, G), and a cache:

        g = (xp W_gx + b_g)[:, None, :] + tanh(memory) W_gm
        i = sigmoid(g[..., :G] + input_bias),   f = sigmoid(g[..., G:] + forget_bias)
    """
    raise NotImplementedError


def gates_backward(di, df, cache):
    """di, df (B, N, G) -> dxp (B, d), dmemory (B, N, d), grads {"W_gx", "W_gm", "b_g"}.

    sigmoid' = s (1 - s) from the output s; the broadcast of xp's part over the N slots makes
    its gradient a sum over N; tanh' = 1 - tanh^2.
    """
    raise NotImplementedError


def gated_update_forward(m_tilde, memory, i, f):
    """M_new = i * tanh(m_tilde) + f * memory.

    m_tilde, memory (B, N, d); i, f (B, N, G) with G = d or 1 (broadcast over d) ->
    M_new (B, N, d), cache.
    """
    raise NotImplementedError


def gated_update_backward(dnew, cache):
    """dnew (B, N, d) -> dm_tilde (B, N, d), dmemory (B, N, d), di (B, N, G), df (B, N, G).

    dmemory here is the direct path only (f * memory).  When G = 1, di and df sum over d
    (keepdims) because the forward broadcast them.
    """
    raise NotImplementedError


def memory_update_forward(m_tilde, memory, xp, params, input_bias=0.0, forget_bias=1.0):
    """The whole update: the gates of (xp, memory), then M_new = i * tanh(m_tilde) + f * memory.

    Returns M_new (B, N, d) and a cache.  Build it from the two pairs above.
    """
    raise NotImplementedError


def memory_update_backward(dnew, cache):
    """dnew (B, N, d) -> dm_tilde (B, N, d), dmemory (B, N, d), dxp (B, d), grads.

    dmemory sums the direct path and the path through the gates; grads has the keys of params.
    """
    raise NotImplementedError


# ============================================================================================
# Grader (do not edit): relational_memory.RelationalMemory is the answer key
# ============================================================================================

GATE_NAMES = ("W_gx", "W_gm", "b_g")


def _library_update(gate_style, seed, input_bias=0.0, forget_bias=1.0, N=3, H=2, hs=2, I=3):
    """A randomised library core; one step of it on random x and memory, and the parts of that
    step: x~, M~ (from a twin core without gates), the gates, the new memory, the gate params."""
    from relational_memory import RelationalMemory
    rng = np.random.default_rng(seed)
    core = RelationalMemory(I, N, hs, H, gate_style=gate_style, input_bias=input_bias,
                            forget_bias=forget_bias, rng=rng)
    grading.randomise(core, rng)
    twin = RelationalMemory(I, N, hs, H, gate_style=None, rng=rng)
    twin.load_state_dict({k: v for k, v in core.state_dict().items() if k not in GATE_NAMES})
    x, memory = rng.standard_normal((2, I)), rng.standard_normal((2, N, H * hs))
    new, (_, step_cache) = core.forward(x, memory)
    i, f = step_cache["gates"]
    return {"xp": core.project_inputs(x)[0], "memory": memory,
            "m_tilde": twin.forward(x, memory)[0], "i": i.copy(), "f": f.copy(), "new": new,
            "params": {k: core.params[k].copy() for k in GATE_NAMES}}


# (gate style, input_bias, forget_bias): Sonnet's constants, and others that tell them apart
CONFIGS = (("unit", 0.0, 1.0), ("memory", 0.0, 1.0), ("unit", 0.4, -0.7))


def check_gates_forward(m, measure):
    for k, (style, ib, fb) in enumerate(CONFIGS):
        ref = _library_update(style, 10 + k, ib, fb)
        (i, f), _ = m.gates_forward(ref["xp"], ref["memory"], ref["params"], ib, fb)
        measure.close(f"i ({style}, biases {ib}, {fb})", i, ref["i"])
        measure.close(f"f ({style}, biases {ib}, {fb})", f, ref["f"])


def _check_gate_gradients(measure, case, seed, names, forward, backward):
    """Every gradient of a function of the arrays ``names`` of :func:`_library_update` and of
    the gate parameters, against finite differences, in the 'unit' and 'memory' styles.

    ``forward(inp, params, input_bias, forget_bias) -> (outs, cache)`` with ``params`` the gate
    parameters taken from ``inp``; ``backward(douts, cache) -> {name: gradient}``.
    """
    for k, (style, ib, fb) in enumerate(CONFIGS[:2]):
        ref = _library_update(style, seed + k, ib, fb)

        def run(inp, ib=ib, fb=fb):
            return forward(inp, {n: inp[n] for n in GATE_NAMES}, ib, fb)

        measure.gradients(f"{case} {style}", run, backward,
                          {**{n: ref[n] for n in names}, **ref["params"]})


def check_gates_backward(m, measure):
    def backward(d, c):
        dxp, dmemory, grads = m.gates_backward(d[0], d[1], c)
        return {"xp": dxp, "memory": dmemory, **grads}

    _check_gate_gradients(
        measure, "gates", 20, ("xp", "memory"),
        lambda inp, params, ib, fb: m.gates_forward(inp["xp"], inp["memory"], params, ib, fb),
        backward)


def check_update_forward(m, measure):
    for k, (style, ib, fb) in enumerate(CONFIGS[:2]):
        ref = _library_update(style, 30 + k, ib, fb)
        new, _ = m.gated_update_forward(ref["m_tilde"], ref["memory"], ref["i"], ref["f"])
        measure.close(f"M_new ({style})", new, ref["new"])


def check_update_backward(m, measure):
    rng = np.random.default_rng(40)
    for G in (4, 1):
        inputs = {"m_tilde": rng.standard_normal((2, 3, 4)),
                  "memory": rng.standard_normal((2, 3, 4)),
                  "i": rng.uniform(0.1, 0.9, (2, 3, G)), "f": rng.uniform(0.1, 0.9, (2, 3, G))}
        measure.gradients(
            f"gated update G={G}",
            lambda inp: m.gated_update_forward(inp["m_tilde"], inp["memory"], inp["i"], inp["f"]),
            lambda d, c: dict(zip(("m_tilde", "memory", "i", "f"), m.gated_update_backward(d, c))),
            inputs)


def check_memory_update_forward(m, measure):
    for k, (style, ib, fb) in enumerate(CONFIGS):
        ref = _library_update(style, 50 + k, ib, fb)
        new, _ = m.memory_update_forward(ref["m_tilde"], ref["memory"], ref["xp"],
                                         ref["params"], ib, fb)
        measure.close(f"M_new ({style}, biases {ib}, {fb})", new, ref["new"])


def check_memory_update_backward(m, measure):
    def backward(d, c):
        dm_tilde, dmemory, dxp, grads = m.memory_update_backward(d, c)
        return {"m_tilde": dm_tilde, "memory": dmemory, "xp": dxp, **grads}

    _check_gate_gradients(
        measure, "memory update", 60, ("m_tilde", "memory", "xp"),
        lambda inp, params, ib, fb: m.memory_update_forward(inp["m_tilde"], inp["memory"],
                                                            inp["xp"], params, ib, fb),
        backward)


def check_frozen_memory(m, measure):
    for k, style in enumerate(("unit", "memory")):
        ref = _library_update(style, 70 + k, input_bias=-np.inf, forget_bias=np.inf)
        new, _ = m.memory_update_forward(ref["m_tilde"], ref["memory"], ref["xp"],
                                         ref["params"], -np.inf, np.inf)
        measure.close(f"M_new == M ({style})", new, ref["memory"])


PARTS = [
    grading.Part("gates_forward: i, f vs RelationalMemory ('unit', 'memory')",
                 check_gates_forward, grading.FORWARD_TOL,
                 "input_bias goes into i (the first G columns), forget_bias into f (the last G)."),
    grading.Part("gates_backward: every gradient vs finite differences", check_gates_backward,
                 grading.LAYER_TOL,
                 "xp's gate term is broadcast over N in the forward: sum dgates over axis 1."),
    grading.Part("gated_update_forward: M_new vs RelationalMemory", check_update_forward,
                 grading.FORWARD_TOL, "M_new = i * tanh(m_tilde) + f * memory."),
    grading.Part("gated_update_backward: every gradient vs finite differences",
                 check_update_backward, grading.LAYER_TOL,
                 "with G = 1, sum di and df over the last axis (keepdims=True)."),
    grading.Part("memory_update_forward: M_new vs RelationalMemory", check_memory_update_forward,
                 grading.FORWARD_TOL, "compose gates_forward and gated_update_forward."),
    grading.Part("memory_update_backward: every gradient vs finite differences",
                 check_memory_update_backward, grading.LAYER_TOL,
                 "the memory's gradient adds its two paths: dmemory += the gates' dmemory."),
    grading.Part("memory_update_forward: forget +inf, input -inf keeps M", check_frozen_memory,
                 grading.FORWARD_TOL,
                 "use a sigmoid that gives exactly 0 and 1 at -inf and +inf (layers.sigmoid)."),
]


grade = grading.grader(PARTS)


if __name__ == "__main__":
    grading.run("Exercise 3 (gated memory update)", __name__)
