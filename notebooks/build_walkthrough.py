"""Build and execute ``notebooks/walkthrough.ipynb``: the RMC's equations next to the code, one
step by hand, the gradient proof on a small case, the shipped RMC's attention and memory against
the LSTM's state, and the learning curves of the 4 x 4 recipe.

    python -m pip install -e ".[notebook]"
    python notebooks/build_walkthrough.py            # writes the notebook with its outputs

The notebook's cells are written here, as text, so that a change to them is a reviewable diff;
the committed ``walkthrough.ipynb`` holds the outputs of the last build.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOK = os.path.join(HERE, "walkthrough.ipynb")

CELLS = [
    ("markdown", """\
# The Relational Memory Core, line by line

This notebook walks through the Relational Memory Core (RMC) of Santoro et al. (2018),
*Relational recurrent neural networks*, as this library implements it in pure NumPy: the
equations next to the code, one memory step computed by hand, the proof that the hand-written
backward pass is right, and what a trained RMC does on the N-th Farthest task compared with an
LSTM. Everything runs on a CPU in well under two minutes."""),
    ("code", """\
import inspect
import numpy as np
import matplotlib.pyplot as plt

import layers
import nth_farthest as nf
from relational_memory import RelationalMemory
from relational_rnn.pretrained import load_pretrained, pretrained_path
np.set_printoptions(precision=4, suppress=True)"""),
    ("markdown", """\
## 1. The equations

A memory `M` holds `N` slots (rows) of width `d = H * head_size`. One step with input `x`:

| equation | shapes |
| --- | --- |
| $\\tilde x = x W_{in} + b_{in}$ | (B, d) |
| $L = [M_{prev};\\ \\tilde x]$ (the input becomes one more row) | (B, N+1, d) |
| $QKV = \\mathrm{LayerNorm}(L W_{qkv} + b_{qkv})$, per head $[q \\mid k \\mid v]$ | (B, N+1, H(2k + head\\_size)) |
| $A_h = \\mathrm{softmax}(q_h k_h^\\top / \\sqrt{k})\\, v_h$, heads concatenated | (B, N+1, d) |
| $L = \\mathrm{LayerNorm}_1(L + A)$, then $L = \\mathrm{LayerNorm}_2(L + \\mathrm{MLP}(L))$ | (B, N+1, d) |
| $\\tilde M = L[:, :N]$ (the input row is dropped) | (B, N, d) |
| $i, f = \\sigma(\\tilde x W_x + \\tanh(M_{prev}) W_m + b + [0 \\mid 1])$ | (B, N, d) each |
| $M = i \\odot \\tanh(\\tilde M) + f \\odot M_{prev}$ | (B, N, d) |

The code of one step, `RelationalMemory.step`, reads the same way:"""),
    ("code", """\
print(inspect.getsource(RelationalMemory.step))"""),
    ("markdown", """\
## 2. One step by hand

A small memory (2 slots, 2 heads of 4, so d = 8) and one input row. We recompute the step from
the module's own parameters with nothing but NumPy and compare with `step`."""),
    ("code", """\
rng = np.random.default_rng(0)
core = RelationalMemory(input_size=3, mem_slots=2, head_size=4, num_heads=2,
                        dtype=np.float64, rng=rng)
p = core.parameters()
x = rng.standard_normal((1, 3))
M0 = core.initial_state(1)                      # identity, padded to d columns
print("initial memory:\\n", M0[0])

def layernorm(z, g, b, eps=1e-5):
    mu = z.mean(-1, keepdims=True)
    var = z.var(-1, keepdims=True)
    return (z - mu) / np.sqrt(var + eps) * g + b

xt = x @ p["input_proj.W"] + p["input_proj.b"]                   # (1, d)
L = np.concatenate([M0, xt[:, None, :]], axis=1)                 # (1, N+1, d)
qkv = layernorm(L @ p["attn0.W_qkv"] + p["attn0.b_qkv"], p["attn0.ln_g"], p["attn0.ln_b"])
H, hs, k = core.num_heads, core.head_size, core.key_size
heads = qkv.reshape(1, 3, H, 2 * k + hs)
q, kk, v = heads[..., :k], heads[..., k:2 * k], heads[..., 2 * k:]
scores = np.einsum("bihc,bjhc->bhij", q, kk) / np.sqrt(k)
weights = np.exp(scores - scores.max(-1, keepdims=True))
weights /= weights.sum(-1, keepdims=True)
A = np.einsum("bhij,bjhc->bihc", weights, v).reshape(1, 3, H * hs)
L = layernorm(L + A, p["norm_attn0.g"], p["norm_attn0.b"])
hidden = np.maximum(L @ p["mlp.fc0.W"] + p["mlp.fc0.b"], 0)
L = layernorm(L + hidden @ p["mlp.fc1.W"] + p["mlp.fc1.b"], p["norm_mlp0.g"], p["norm_mlp0.b"])
M_tilde = L[:, :2]
G = core.gate_size
gates = np.tanh(M0) @ p["W_gm"] + (xt @ p["W_gx"] + p["b_g"])[:, None, :]
gates[..., G:] += 1.0                                            # the forget bias
i, f = 1 / (1 + np.exp(-gates[..., :G])), 1 / (1 + np.exp(-gates[..., G:]))
M1_by_hand = i * np.tanh(M_tilde) + f * M0

xp, gx, _ = core.project_inputs(x)
M1, cache = core.step(xp, gx, M0)
print("largest difference to the library's step:", np.abs(M1 - M1_by_hand).max())
print("attention of slot 0 over [slot 0, slot 1, input], per head:\\n", weights[0, :, 0])"""),
    ("markdown", """\
## 3. The gradient proof

Every backward pass of the library is checked against central finite differences in float64,
for every parameter and every input. Here is the check of the RMC step (the full proof runs with
`python autograd_checks.py`, or `rrnn-gradcheck` after installing):"""),
    ("code", """\
import autograd_checks
results = autograd_checks.run_cases(["relational_memory.RelationalMemory step"])
print(f"{len(results)} tensors, worst relative error {max(r.error for r in results):.2e}, "
      f"all passed: {all(r.passed for r in results)}")"""),
    ("markdown", """\
## 4. A trained RMC against a trained LSTM

The library ships the 4 x 4 recipe's models (`relational_rnn/pretrained/README.md` gives their
held-out accuracy and the command that trained them). Each loads in one line:"""),
    ("code", """\
rmc = load_pretrained("rmc-4x4")
lstm = load_pretrained("lstm-4x4")
eval_set = nf.make_eval_set(20180606, 2000, 4, 4, dtype=np.float32)   # the runs' held-out set
from relational_rnn.evaluation import evaluate
for name, model in (("RMC", rmc), ("LSTM", lstm)):
    m = evaluate(model, eval_set, 4)
    print(f"{name:5s} held-out accuracy {m['heldout_acc']:.4f}, per rank n:",
          " ".join(f"{a:.3f}" for a in m["acc_per_n"]))"""),
    ("markdown", """\
What the RMC's memory does on one held-out example: the attention of each slot over the slots
and the input row at each step (each row of a panel sums to one), and how far each step moves the
memory. The LSTM has no slots to attend with: its whole state is one vector."""),
    ("code", """\
from relational_rnn.memory_trace import pick_example, trace_model, state_norms
example = pick_example(eval_set, 3, 4, 4, "held-out example 3")
trace = trace_model(rmc, example.x)
att = trace.attention[:, 0]                       # (T, H, N+1, N+1) of the first block
T, H = att.shape[:2]
fig, axes = plt.subplots(H, T, figsize=(2.2 * T, 2.2 * H), squeeze=False)
for t in range(T):
    for h in range(H):
        ax = axes[h, t]
        ax.imshow(att[t, h, :-1], vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(att.shape[-1]), [f"s{j}" for j in range(att.shape[-1] - 1)] + ["in"])
        ax.set_yticks(range(att.shape[-2] - 1))
        ax.set_title(f"step {t} (object {example.ids[t]}), head {h}", fontsize=8)
fig.suptitle(f"RMC attention, m={example.m}, n={example.n}, answer {example.label}, "
             f"predicted {int(np.argmax(trace.logits))}")
fig.tight_layout()
plt.show()"""),
    ("code", """\
lstm_trace = trace_model(lstm, example.x)
for name, tr, key in (("RMC memory M", trace, "memory M"), ("LSTM hidden h", lstm_trace,
                                                            "LSTM hidden h")):
    initial, states = tr.states[key]
    norms, changes, _ = state_norms(initial, states)
    print(f"{name:14s} norm per step:", " ".join(f"{v:6.2f}" for v in norms),
          "| change per step:", " ".join(f"{v:6.2f}" for v in changes))"""),
    ("markdown", """\
## 5. Learning curves of the recipe

The shipped models' metrics, as `nth_farthest.py` recorded them during training: held-out
accuracy against steps and against wall time, with the curriculum's phase changes."""),
    ("code", """\
import os, tempfile
from IPython.display import Image
from relational_rnn.plots import plot_learning_curves
from relational_rnn.run_folder import read_metrics
metrics = {kind: read_metrics(os.path.join(os.path.dirname(pretrained_path(f"{kind}-4x4")),
                                           "metrics.jsonl"))
           for kind in ("rmc", "lstm", "rrnn")}
path = plot_learning_curves(metrics, os.path.join(tempfile.mkdtemp(), "curves.png"), chance=0.25,
                            labels={"rmc": "RMC", "lstm": "LSTM", "rrnn": "RelationalRNN"},
                            title="N-th Farthest 4 x 4, --preset curriculum", dpi=70)
Image(path)"""),
]


def build():
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for kind, text in CELLS:
        nb.cells.append(nbformat.v4.new_markdown_cell(text) if kind == "markdown"
                        else nbformat.v4.new_code_cell(text))
    return nb


def execute(nb, cwd: str, timeout: int = 120):
    """Run every cell in a fresh kernel in ``cwd``; raises on the first failing cell."""
    from nbclient import NotebookClient
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": cwd}}).execute()
    return nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=NOTEBOOK, help="the notebook to write")
    args = p.parse_args(argv)
    import nbformat
    nb = execute(build(), cwd=os.path.dirname(os.path.abspath(args.out)))
    nbformat.write(nb, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
