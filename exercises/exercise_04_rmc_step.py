"""Exercise 4: one full RMC step from its parts, then the RMC unrolled over time.

One step of the Relational Memory Core, input x (B, I), memory M (B, N, d), d = H * head_size:

    x~  = x W_in + b_in                                      (B, d)
    L   = [M ; x~]                                           (B, N+1, d)   exercise 1
    repeat num_blocks times (block b: its own attention and LayerNorms; one MLP for all):
        L = LayerNorm_1(L + MultiHeadAttention(L))                         exercise 1
        L = LayerNorm_2(L + MLP(L))      MLP: Linear -> ReLU -> ... -> Linear (no final ReLU)
    M~  = L[:, :N]                                           drop the input row
    M'  = i * tanh(M~) + f * M, the gates of (x~, M)         exercise 3 ('unit' or 'memory')
          or M' = M~ when config["gate_style"] is None

Unrolled over a sequence x (B, T, I) from M_0 (the identity memory of exercise 2 when None),
M_t = step(x[:, t], M_{t-1}); the output is every M_t, (B, T, N, d).  Backprop through time
walks the steps in reverse: the gradient of M_t is its own plus what step t + 1 sends back, and
every parameter's gradient is the sum over all steps (and over all blocks, for the shared MLP).

``params`` is a dict with the dotted names of ``RelationalMemory.parameters()``:
``input_proj.W`` (I, d), ``input_proj.b``, ``attn{b}.W_qkv``, ``attn{b}.b_qkv``,
``attn{b}.ln_g``, ``attn{b}.ln_b``, ``norm_attn{b}.g``/``.b``, ``norm_mlp{b}.g``/``.b``,
``mlp.fc{j}.W`` (d, d), ``mlp.fc{j}.b``, and with gating ``W_gx``, ``W_gm``, ``b_g``.  So a
library model's weights go straight in: ``params = core.state_dict()``.  ``config`` is
``core.config``: mem_slots, head_size, num_heads, num_blocks, key_size, attention_mlp_layers,
gate_style, input_bias, forget_bias.

A backward here *adds* each parameter gradient into the ``grads`` dict it is given
(``grads[name] += dW``), like the library's modules: a parameter used several times (every time
step, the MLP in every block) collects the sum of all its uses.  The grader hands your
backward a ``grads`` dict that is not zero, and checks that you added to it.

You need your functions of exercises 1 to 3 (imported below) and the library's
``layers.linear_*``, ``layers.layernorm_*``, ``layers.relu_*``.

Shape letters: B batch, T time, N memory slots, H heads, I input width, d memory row width,
R = N + 1 rows.

Grade your work:   python exercises/exercise_04_rmc_step.py
The solution:      python exercises/exercise_04_rmc_step.py --solution
"""
from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:     # run from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import layers  # noqa: E402,F401  (for your code)
from exercises import grading  # noqa: E402
from exercises.exercise_01_attention import (concat_rows_backward,  # noqa: E402,F401
                                             concat_rows_forward, multihead_attention_backward,
                                             multihead_attention_forward)
from exercises.exercise_02_initialisation import initial_memory  # noqa: E402,F401
from exercises.exercise_03_gates import (memory_update_backward,  # noqa: E402,F401
                                         memory_update_forward)

# ============================================================================================
# Your code
# ============================================================================================


def rmc_block_forward(L, params, block, config):
    """Attention block ``block`` (0, 1, ...): L (B, R, d) -> L (B, R, d), cache.

        L1 = LayerNorm(L + multihead_attention(L))      params attn{block}.*, norm_attn{block}.*
        L2 = LayerNorm(L1 + MLP(L1))                    params mlp.fc{j}.*, norm_mlp{block}.*

    The MLP has config["attention_mlp_layers"] Linear layers, ReLU between them, none after the
    last.  Return L2 and a cache.
    """
    raise NotImplementedError


def rmc_block_backward(dL2, cache, grads):
    """dL2 (B, R, d) -> dL (B, R, d); adds the block's parameter gradients into ``grads``.

    Each residual sum passes its gradient to both of its terms.
    """
    raise NotImplementedError


def rmc_step_forward(x, memory, params, config):
    """One RMC step: x (B, I), memory (B, N, d) -> the new memory (B, N, d), cache."""
    raise NotImplementedError


def rmc_step_backward(dnew, cache, grads):
    """dnew (B, N, d) -> dx (B, I), dmemory (B, N, d); adds every parameter gradient into
    ``grads``.  The old memory reaches the new one through the rows of L and through the gated
    update; x~ through its row of L and through the gates."""
    raise NotImplementedError


def rmc_sequence_forward(x, memory0, params, config):
    """x (B, T, I), memory0 (B, N, d) or None (the initial memory of exercise 2) ->
    memories (B, T, N, d) (memories[:, t] is the memory after step t), cache."""
    raise NotImplementedError


def rmc_sequence_backward(dmemories, cache):
    """dmemories (B, T, N, d) (the gradient on every step's memory) ->
    dx (B, T, I), dmemory0 (B, N, d), grads (a new dict: every key of params, summed over T)."""
    raise NotImplementedError


# ============================================================================================
# Grader (do not edit): relational_memory.RelationalMemory is the answer key
# ============================================================================================

PREFILL = 0.5        # the grads dict handed to a backward starts here: it must be added to

# (gate_style, num_blocks, key_size): every gate style, two blocks, key_size != head_size
CONFIGS = (("unit", 1, None), ("memory", 2, 3), (None, 1, None))


def _library_core(gate_style, num_blocks, key_size, seed, N=2, H=2, hs=2, I=3):
    """A randomised library RelationalMemory and a copy of its parameters."""
    from relational_memory import RelationalMemory
    rng = np.random.default_rng(seed)
    core = RelationalMemory(I, N, hs, H, num_blocks=num_blocks, key_size=key_size,
                            gate_style=gate_style, input_bias=0.2, forget_bias=0.8, rng=rng)
    grading.randomise(core, rng)
    return core, core.state_dict(), rng


def _prefilled(params):
    return {k: np.full_like(p, PREFILL) for k, p in params.items()}


def _params(params, inputs):
    """The parameters, those among the checker's (perturbed) inputs taken from there."""
    return {k: inputs.get(k, p) for k, p in params.items()}


def _added(grads):
    """What a backward added to a :func:`_prefilled` dict."""
    return {k: g - PREFILL for k, g in grads.items()}


def check_block_forward(m, measure):
    core, params, rng = _library_core("unit", 2, 3, seed=1)
    L = rng.standard_normal((2, core.mem_slots + 1, core.mem_size))
    for b, (attn, norm_attn, norm_mlp) in enumerate(core.blocks):
        L1 = norm_attn.forward(L + attn.forward(L)[0])[0]
        expected = norm_mlp.forward(L1 + core.mlp.forward(L1)[0])[0]
        mine, _ = m.rmc_block_forward(L.copy(), params, b, core.config)
        measure.close(f"block {b}", mine, expected)


def check_block_backward(m, measure):
    core, params, rng = _library_core("unit", 2, 3, seed=2)
    for b in range(2):
        mine = [k for k in params if k.startswith((f"attn{b}.", f"norm_attn{b}.",
                                                   f"norm_mlp{b}.", "mlp."))]

        def forward(inp, b=b):
            return m.rmc_block_forward(inp["L"], _params(params, inp), b, core.config)

        def backward(d, c):
            grads = _prefilled(params)
            dL = m.rmc_block_backward(d, c, grads)
            return {"L": dL, **{k: g for k, g in _added(grads).items() if k in mine}}

        inputs = {"L": rng.standard_normal((2, core.mem_slots + 1, core.mem_size)),
                  **{k: params[k] for k in mine}}
        measure.gradients(f"block {b}", forward, backward, inputs)


def check_step_forward(m, measure):
    for k, (style, blocks, ks) in enumerate(CONFIGS):
        core, params, rng = _library_core(style, blocks, ks, seed=10 + k)
        x, memory = rng.standard_normal((2, 3)), rng.standard_normal((2, 2, core.mem_size))
        mine, _ = m.rmc_step_forward(x.copy(), memory.copy(), params, core.config)
        measure.close(f"memory ({style}, {blocks} block(s))", mine, core.forward(x, memory)[0])


def _step_functions(m, core, params):
    def forward(inp):
        return m.rmc_step_forward(inp["x"], inp["memory"], _params(params, inp), core.config)

    def backward(d, c):
        grads = _prefilled(params)
        dx, dmemory = m.rmc_step_backward(d, c, grads)
        return {"x": dx, "memory": dmemory, **_added(grads)}
    return forward, backward


def check_step_backward(m, measure):
    for k, (style, blocks, ks) in enumerate(CONFIGS):
        core, params, rng = _library_core(style, blocks, ks, seed=20 + k)
        inputs = {"x": rng.standard_normal((2, 3)),
                  "memory": rng.standard_normal((2, 2, core.mem_size)), **params}
        forward, backward = _step_functions(m, core, params)
        case = f"step ({style}, {blocks} block(s))"
        if k < 2:
            measure.gradients(case, forward, backward, inputs)
        dnew = rng.standard_normal((2, 2, core.mem_size))             # and against the library
        mine = backward(dnew, forward(inputs)[1])
        core.zero_grad()
        lib_dx, lib_dmemory = core.backward(dnew, core.forward(inputs["x"], inputs["memory"])[1])
        reference = {"x": lib_dx, "memory": lib_dmemory, **core.gradients()}
        for name, expected in reference.items():
            measure.close(f"{case}: d{name} vs the library", mine.get(name), expected)


def check_sequence_forward(m, measure):
    core, params, rng = _library_core("unit", 1, None, seed=30)
    x, memory0 = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 2, core.mem_size))
    mine, _ = m.rmc_sequence_forward(x.copy(), memory0.copy(), params, core.config)
    measure.close("memories (memory0 given)", mine, core.forward_sequence(x, memory0)[0])
    mine, _ = m.rmc_sequence_forward(x.copy(), None, params, core.config)
    measure.close("memories (memory0 None)", mine, core.forward_sequence(x)[0])


def check_sequence_backward(m, measure):
    core, params, rng = _library_core("unit", 1, None, seed=40)
    inputs = {"x": rng.standard_normal((2, 5, 3)),
              "memory0": rng.standard_normal((2, 2, core.mem_size)), **params}

    def forward(inp):
        return m.rmc_sequence_forward(inp["x"], inp["memory0"], _params(params, inp),
                                      core.config)

    def backward(d, c):
        dx, dmemory0, grads = m.rmc_sequence_backward(d, c)
        return {"x": dx, "memory0": dmemory0, **grads}

    measure.gradients("sequence T=5", forward, backward, inputs, grading.SEQUENCE_TOL)
    dmemories = rng.standard_normal((2, 5, 2, core.mem_size))
    mine = backward(dmemories, forward(inputs)[1])
    core.zero_grad()
    lib = core.backward_sequence(dmemories, core.forward_sequence(inputs["x"],
                                                                  inputs["memory0"])[1])
    for name, expected in {"x": lib[0], "memory0": lib[1], **core.gradients()}.items():
        measure.close(f"sequence: d{name} vs the library", mine.get(name), expected)


PARTS = [
    grading.Part("rmc_block_forward: vs the library's block", check_block_forward,
                 grading.FORWARD_TOL,
                 "LayerNorm(L + attention(L)), then LayerNorm(L1 + MLP(L1)); no ReLU after the "
                 "MLP's last layer."),
    grading.Part("rmc_block_backward: gradients vs finite differences", check_block_backward,
                 grading.LAYER_TOL,
                 "a residual sum sends its gradient to both terms; add into grads with +=."),
    grading.Part("rmc_step_forward: vs RelationalMemory.forward", check_step_forward,
                 grading.FORWARD_TOL,
                 "project x, append it as row N, run the blocks, drop the input row, then gate "
                 "(or not, when gate_style is None)."),
    grading.Part("rmc_step_backward: vs finite differences and the library",
                 check_step_backward, grading.LAYER_TOL,
                 "dmemory and dxp each collect two paths (rows of L, gated update); "
                 "grads[name] += ..., never ="),
    grading.Part("rmc_sequence_forward: vs RelationalMemory.forward_sequence",
                 check_sequence_forward, grading.FORWARD_TOL,
                 "memories[:, t] is the memory *after* step t; None starts from initial_memory."),
    grading.Part("rmc_sequence_backward: BPTT vs finite differences, library",
                 check_sequence_backward, grading.SEQUENCE_TOL,
                 "walk t = T-1 ... 0; add dmemories[:, t] to the gradient coming back from "
                 "step t+1; one grads dict for all steps."),
]


grade = grading.grader(PARTS)


if __name__ == "__main__":
    grading.run("Exercise 4 (an RMC step, and BPTT)", __name__)
