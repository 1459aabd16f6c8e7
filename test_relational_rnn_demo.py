"""How the memory of a RelationalRNN evolves over one sequence: a readable demo, and its tests.

Run it::

    python test_relational_rnn_demo.py                          # small models, trained here
    python test_relational_rnn_demo.py --checkpoint runs/quick/rrnn --out figures
    python -m pytest -q test_relational_rnn_demo.py             # the test_ functions below

Without ``--checkpoint`` it builds a small RelationalRNN classifier (LSTM + relational memory)
and an LSTM classifier of the same hidden size, trains both for a few hundred Adam steps on an
easy N-th Farthest setting (4 objects x 1 feature, in the 4 x 4 layout), and analyses one
held-out example.  With ``--checkpoint`` (a checkpoint of ``python nth_farthest.py``, any model
kind) it analyses the trained model on an example of its run's held-out set and writes an
attention heatmap PNG (RMC and RelationalRNN).

The printout has five sections, each computed by a function of this file (the tests call the
same functions):

1. state norms per phase of the sequence (:func:`state_phase_stats`): the mean Frobenius norm
   of the memory (and of the LSTM state) in the early, middle and late steps, and of its change
   per step;
2. per-slot activity and specialisation (:func:`slot_norms`, :func:`slot_specialisation`);
3. gate openness per step (:func:`gate_openness`);
4. attention entropy per head and attention to the input row (:func:`attention_entropy`,
   :func:`input_attention`);
5. parameter counts and output statistics of the LSTM and the RelationalRNN
   (:func:`parameter_groups`, :func:`output_stats`).

:func:`trace_model` runs one example through a model and collects the per-step internals as a
:class:`Trace`; :func:`analyse` turns a trace into every number of the printout.

Shape letters: T time steps, N memory slots, d slot width, H hidden units, I input width.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # The demo's matrices are small: one BLAS thread is fastest (set before NumPy loads its BLAS;
    # a value already in the environment is kept).
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse
import math
import textwrap
import time
from dataclasses import dataclass, field

import numpy as np

import layers
import nth_farthest as nf
from lstm_baseline import LSTM, LSTMClassifier
from optimizer import Adam
from relational_memory import RelationalMemory, RMCClassifier
from relational_rnn_cell import RelationalRNN, RelationalRNNClassifier
from relational_rnn.report import format_table

PROG = "test_relational_rnn_demo.py"

# The demo task without a checkpoint: the 4 x 4 layout with 4 active objects and 1 active feature
# (easy enough to learn well above chance in a few hundred steps).
DEMO_TASK = dict(num_objects=4, num_features=4, active_objects=4, active_features=1)
# The demo models: RelationalRNN (4 slots x 32 = 2 heads x 16) and an LSTM, both hidden size 32.
DEMO_SIZES = dict(hidden_size=32, num_slots=4, slot_size=32, num_heads=2, mlp_hidden=(64,))
DEMO_STEPS, DEMO_BATCH, DEMO_LR, DEMO_CLIP = 300, 32, 3e-3, 5.0
DEMO_EVAL_SEED, DEMO_EVAL_SIZE = 20180606, 500
ACCURACY_EXAMPLES = 500          # held-out examples used for the accuracy lines
HEATMAP_NAME = "demo_attention_heatmap.png"
KIND_LABELS = {"rrnn": "RelationalRNN", "rmc": "RMC", "lstm": "LSTM"}
CLASSIFIERS = (RelationalRNNClassifier, RMCClassifier, LSTMClassifier)
# With --checkpoint, the kind each model is compared with (see _counterpart).
COUNTERPART = {"rrnn": "lstm", "rmc": "lstm", "lstm": "rrnn"}


class DemoError(ValueError):
    """Bad input (missing or unreadable checkpoint, bad option value): message, exit status 2."""


class OutputError(OSError):
    """An output file that cannot be written: message, exit status 1."""


# ============================================================================================
# Tracing one example
# ============================================================================================


@dataclass
class Trace:
    """The per-step internals of one model on one example (every array for that example only).

    ``kind``: 'rrnn', 'rmc' or 'lstm'.  ``outputs`` (T, O): per-step outputs of the recurrent
    part (RelationalRNN y_t, LSTM h_t, RMC flattened memory).  ``logits`` (C,) or None.
    ``states``: name -> (initial (...), per step (T, ...)), e.g. the memory ((N, d), (T, N, d)).
    ``gates``: name -> (T, ...) gate activations in (0, 1).  ``memory`` (T, N, d) and
    ``memory0`` (N, d) for memory models, else None.  ``attention`` (T, blocks, heads, N+1, N+1)
    or None: at step t, block b, head h, row i is the softmax of query i over the N slots and
    the input row (row/column N).
    """

    kind: str
    outputs: np.ndarray
    logits: np.ndarray | None
    states: dict = field(default_factory=dict)
    gates: dict = field(default_factory=dict)
    memory: np.ndarray | None = None
    memory0: np.ndarray | None = None
    attention: np.ndarray | None = None

    @property
    def steps(self) -> int:
        return int(self.outputs.shape[0])


def model_kind(model) -> str:
    """'rrnn', 'rmc' or 'lstm' for a classifier or a bare sequence model of this library."""
    if isinstance(model, (RelationalRNNClassifier, RelationalRNN)):
        return "rrnn"
    if isinstance(model, (RMCClassifier, RelationalMemory)):
        return "rmc"
    if isinstance(model, (LSTMClassifier, LSTM)):
        return "lstm"
    raise TypeError(f"model must be a RelationalRNN(Classifier), RMCClassifier, RelationalMemory, "
                    f"LSTM or LSTMClassifier, got {type(model).__name__}")


def trace_model(model, x: np.ndarray) -> Trace:
    """Run one example x (T, I) (or (1, T, I)) through ``model`` and collect its internals.

    Classifiers also give their logits.  The RelationalRNN is run with
    ``forward(..., return_state=True, return_cache=True)`` and read with
    :meth:`RelationalRNN.analysis`; the RMC with ``forward_sequence`` and
    :meth:`RelationalMemory.attention_weights` / :meth:`RelationalMemory.gate_values`.
    """
    kind = model_kind(model)
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] != 1:
        raise ValueError(f"x must be one example of shape (T, I) or (1, T, I), got {x.shape}")
    logits = model.forward(x)[0][0] if isinstance(model, CLASSIFIERS) else None

    if kind == "rrnn":
        rnn = model.rnn if isinstance(model, RelationalRNNClassifier) else model
        outputs, _, _, _, cache = rnn.forward(x, return_state=True, return_cache=True)
        a = RelationalRNN.analysis(cache)
        memory0 = rnn.cell.memory.initial_state(1)[0]
        memory = a["memory"][0]
        h = a["h"][0]
        gates = {} if a["input_gate"] is None else {"memory input gate": a["input_gate"][:, 0],
                                                    "memory forget gate": a["forget_gate"][:, 0]}
        states = {"memory M": (memory0, memory), "LSTM hidden h": (np.zeros_like(h[0]), h)}
        return Trace(kind, outputs[0], logits, states=states, gates=gates, memory=memory,
                     memory0=memory0, attention=a["attention"][:, :, 0])

    if kind == "rmc":
        core = model.core if isinstance(model, RMCClassifier) else model
        memories, cache = core.forward_sequence(x)
        memory0 = core.initial_state(1)[0]
        memory = memories[0]
        gate_values = RelationalMemory.gate_values(cache)
        gates = {} if gate_values is None else {
            "memory input gate": gate_values[0][:, 0], "memory forget gate": gate_values[1][:, 0]}
        return Trace(kind, memory.reshape(memory.shape[0], -1), logits,
                     states={"memory M": (memory0, memory)}, gates=gates, memory=memory,
                     memory0=memory0,
                     attention=RelationalMemory.attention_weights(cache)[:, :, 0])

    lstm = model.lstm if isinstance(model, LSTMClassifier) else model
    outputs, _, _, cache = lstm.forward(x, return_state=True, return_cache=True)
    H = lstm.hidden_size
    act = cache["act"][0]                     # (T, 4H) activations [i, f, g, o]
    cs = cache["cs"][0]                       # (T+1, H) c_0 .. c_T
    h = outputs[0]
    return Trace(kind, h, logits,
                 states={"LSTM hidden h": (np.zeros_like(h[0]), h), "LSTM cell c": (cs[0], cs[1:])},
                 gates={"LSTM input gate": act[:, :H], "LSTM forget gate": act[:, H:2 * H],
                        "LSTM output gate": act[:, 3 * H:]})


# ============================================================================================
# Analysis: pure functions of a trace's arrays
# ============================================================================================


def phase_slices(T: int) -> list[tuple[str, slice]]:
    """Split steps 0..T-1 into 'early', 'middle', 'late' (as equal as possible; earlier phases
    get the extra steps).  T = 2 gives early and late, T = 1 one phase 'all'."""
    T = layers.check_positive_int("T", T)
    if T == 1:
        return [("all", slice(0, 1))]
    if T == 2:
        return [("early", slice(0, 1)), ("late", slice(1, 2))]
    parts = np.array_split(np.arange(T), 3)
    return [(name, slice(int(p[0]), int(p[-1]) + 1))
            for name, p in zip(("early", "middle", "late"), parts)]


def state_norms(initial: np.ndarray, states: np.ndarray):
    """initial (...) and states (T, ...) -> (norms (T+1,), changes (T,), relative (T,)).

    ``norms[t]`` is the Frobenius norm of state t (0 = initial), ``changes[t-1]`` the norm of
    state t minus state t-1, ``relative`` the change over the larger of the two norms (0..2).
    """
    seq = np.concatenate([np.asarray(initial, np.float64)[None],
                          np.asarray(states, np.float64)]).reshape(len(states) + 1, -1)
    norms = np.linalg.norm(seq, axis=1)
    changes = np.linalg.norm(np.diff(seq, axis=0), axis=1)
    scale = np.maximum(norms[1:], norms[:-1])
    relative = np.divide(changes, scale, out=np.zeros_like(changes), where=scale > 0)
    return norms, changes, relative


def state_phase_stats(initial: np.ndarray, states: np.ndarray) -> list[dict]:
    """Mean state norm, change per step and relative change per phase of the sequence.

    Returns one dict per phase: ``phase``, ``first`` and ``last`` (steps t, from 0),
    ``norm``, ``change``, ``relative`` (means over the phase's steps).
    """
    norms, changes, relative = state_norms(initial, states)
    return [{"phase": name, "first": sl.start, "last": sl.stop - 1,
             "norm": float(norms[1:][sl].mean()), "change": float(changes[sl].mean()),
             "relative": float(relative[sl].mean())}
            for name, sl in phase_slices(len(changes))]


def slot_norms(memory: np.ndarray) -> np.ndarray:
    """memory (T, N, d) -> (T, N): the L2 norm of each slot at each step."""
    return np.linalg.norm(np.asarray(memory, np.float64), axis=-1)


def slot_cosine(memory: np.ndarray) -> np.ndarray:
    """memory (T, N, d) -> (N, N): cosine similarity of every pair of slots, mean over steps
    (a zero slot counts as orthogonal to every other)."""
    m = np.asarray(memory, np.float64)
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    unit = np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)
    return np.einsum("tnd,tmd->nm", unit, unit) / m.shape[0]


def slot_specialisation(memory: np.ndarray) -> dict:
    """How different the slots are, from memory (T, N, d).

    Returns ``cosine`` (N, N) (see :func:`slot_cosine`); ``mean_abs_cosine``: mean |cosine| of
    distinct slot pairs (None for N = 1; 0 = orthogonal slots, 1 = parallel); ``between``: the
    variance across slots of their time-mean vectors (mean over units); ``within``: the variance
    of each slot over time (mean over slots and units); ``ratio`` = between / within (None when
    within is 0, e.g. T = 1).  A ratio above 1 means slots differ more from each other than they
    move over the sequence.
    """
    m = np.asarray(memory, np.float64)
    N = m.shape[1]
    cosine = slot_cosine(m)
    off = cosine[~np.eye(N, dtype=bool)]
    between = float(np.var(m.mean(axis=0), axis=0).mean())
    within = float(np.var(m, axis=0).mean())
    return {"cosine": cosine, "mean_abs_cosine": float(np.abs(off).mean()) if off.size else None,
            "between": between, "within": within,
            "ratio": between / within if within > 0 else None}


def gate_openness(gate: np.ndarray) -> dict:
    """gate (T, ...) values in (0, 1) -> ``mean``, ``min``, ``max`` over everything but time,
    each (T,)."""
    g = np.asarray(gate, np.float64).reshape(len(gate), -1)
    return {"mean": g.mean(axis=1), "min": g.min(axis=1), "max": g.max(axis=1)}


def attention_entropy(attention: np.ndarray) -> np.ndarray:
    """attention (T, blocks, heads, N+1, N+1) -> (T, blocks, heads): the entropy in nats of the
    attention of each memory-slot query (rows 0..N-1) over the N+1 keys, mean over the queries.

    0 = every slot attends to a single key; ln(N+1) = uniform attention.
    """
    w = np.asarray(attention, np.float64)
    N = w.shape[-1] - 1
    p = w[..., :N, :]
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -plogp.sum(axis=-1).mean(axis=-1)


def input_attention(attention: np.ndarray) -> np.ndarray:
    """attention (T, blocks, heads, N+1, N+1) -> (T, blocks, heads, N): the weight each
    memory-slot query gives to the input row (key N).  Uniform attention gives 1/(N+1)."""
    w = np.asarray(attention, np.float64)
    N = w.shape[-1] - 1
    return w[..., :N, N]


def output_stats(values: np.ndarray) -> dict:
    """Statistics of an output array, e.g. per-step outputs (T, O) or logits (C,): ``mean``,
    ``std``, ``norm`` (Frobenius), ``step_norm`` (mean L2 norm of the rows; the norm itself for
    a vector) and ``size``."""
    v = np.asarray(values, np.float64)
    rows = v.reshape(-1, v.shape[-1]) if v.ndim > 1 else v[None]
    return {"mean": float(v.mean()), "std": float(v.std()), "norm": float(np.linalg.norm(v)),
            "step_norm": float(np.linalg.norm(rows, axis=1).mean()), "size": int(v.size)}


# Components of the RelationalRNN, by dotted-name prefix inside the sequence model.
_RRNN_GROUPS = (("cell.lstm.", "LSTM cell"), ("cell.memory.", "relational memory"),
                ("cell.readout.", "memory read-out"), ("cell.combine.", "combine [h ; r]"),
                ("output.", "output projection"))


def parameter_groups(model: layers.Module) -> list[tuple[str, int]]:
    """(component label, number of parameters) of a model, in order of first appearance.

    Every parameter falls in exactly one component, so the counts add up to
    ``model.num_parameters()``.
    """
    kind = model_kind(model)
    classifier = isinstance(model, CLASSIFIERS)
    counts: dict[str, int] = {}
    for name, p, _ in model.named_parameters():
        if classifier and name.startswith("readout."):
            label = "classifier read-out MLP"
        elif kind == "rrnn":
            key = name[len("rnn."):] if classifier else name
            label = next(lab for prefix, lab in _RRNN_GROUPS if key.startswith(prefix))
        elif kind == "rmc":
            label = "relational memory core"
        else:
            label = "LSTM"
        counts[label] = counts.get(label, 0) + int(p.size)
    return list(counts.items())


def recurrent_parameters(model: layers.Module) -> int:
    """Parameters of the recurrent part: everything but a classifier's read-out MLP."""
    if isinstance(model, CLASSIFIERS):
        return model.num_parameters() - model.readout.num_parameters()
    return model.num_parameters()


def analyse(trace: Trace) -> dict:
    """Every number of the printout for one trace.

    Keys: ``phases`` (state name -> :func:`state_phase_stats`), ``norms`` (state name ->
    :func:`state_norms`), ``gates`` (name -> :func:`gate_openness`), ``outputs`` and ``logits``
    (:func:`output_stats`, logits None without them); for memory models also ``slot_norms``
    (T, N), ``slot_norms0`` (N,), ``specialisation``; with attention ``entropy``
    (T, blocks, heads), ``max_entropy`` ln(N+1), ``input_attention`` (T, blocks, heads, N).
    """
    result = {
        "phases": {name: state_phase_stats(*state) for name, state in trace.states.items()},
        "norms": {name: state_norms(*state) for name, state in trace.states.items()},
        "gates": {name: gate_openness(g) for name, g in trace.gates.items()},
        "outputs": output_stats(trace.outputs),
        "logits": None if trace.logits is None else output_stats(trace.logits),
    }
    if trace.memory is not None:
        result["slot_norms"] = slot_norms(trace.memory)
        result["slot_norms0"] = slot_norms(trace.memory0[None])[0]
        result["specialisation"] = slot_specialisation(trace.memory)
    if trace.attention is not None:
        result["entropy"] = attention_entropy(trace.attention)
        result["max_entropy"] = math.log(trace.attention.shape[-1])
        result["input_attention"] = input_attention(trace.attention)
    return result


# ============================================================================================
# Printing
# ============================================================================================


def fmt(value, digits: int = 3) -> str:
    """A number for a table: fixed point, scientific when very large or small, '-' for None."""
    if value is None:
        return "-"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 10.0 ** -digits):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def section(title: str) -> str:
    return f"\n{title}\n{'=' * len(title)}"


def _step_label(t: int, step_labels) -> str:
    return f"{t}" + (f" ({step_labels[t]})" if step_labels is not None else "")


def note(*sentences: str) -> str:
    """Explanatory prose under a table, wrapped at 100 columns."""
    return textwrap.fill(" ".join(sentences), width=100)


def render_phases(trace: Trace, result: dict) -> str:
    rows = []
    for name in trace.states:
        norms = result["norms"][name][0]
        rows.append([name, "initial", "-", fmt(norms[0]), "-", "-"])
        for p in result["phases"][name]:
            steps = str(p["first"]) if p["first"] == p["last"] else f"{p['first']}-{p['last']}"
            rows.append([name, p["phase"], steps, fmt(p["norm"]), fmt(p["change"]),
                         fmt(p["relative"])])
    table = format_table(["state", "phase", "steps t", "mean norm", "mean change/step",
                          "change/norm"], rows, left=3)
    init = []
    if trace.memory is not None:
        init.append("the memory is the identity matrix padded to d columns, norm sqrt(N)")
    if any(name.startswith("LSTM") for name in trace.states):
        init.append("the LSTM state is 0")
    return "\n".join([section("1. State norms per phase of the sequence"), table, note(
        "mean norm: Frobenius norm of the whole state after step t (memory: all N x d values),",
        "mean over the phase's steps; change/step: norm of state_t - state_(t-1); change/norm:",
        "that change over the larger of the two norms (0 = unchanged, 2 = sign flip).",
        "Step t reads input row t (t = 0..T-1, as in the heatmap); 'initial' is the state",
        f"before step 0 ({'; '.join(init)}).  Activations are unitless.")])


def render_slots(trace: Trace, result: dict, step_labels) -> str:
    title = section("2. Per-slot activity and specialisation")
    if trace.memory is None:
        return "\n".join([title, note("not applicable: an LSTM has no memory slots (its state "
                                      "is one vector; see section 1).")])
    norms, spec = result["slot_norms"], result["specialisation"]
    N = norms.shape[1]
    slots = [f"slot {i}" for i in range(N)]
    rows = [["initial", *map(fmt, result["slot_norms0"])]]
    rows += [[_step_label(t, step_labels), *map(fmt, norms[t])] for t in range(len(norms))]
    rows.append(["mean", *map(fmt, norms.mean(axis=0))])
    cosine = [[slots[i], *(f"{v:+.3f}" for v in spec["cosine"][i])] for i in range(N)]
    ratio = spec["ratio"]
    verdict = ("" if ratio is None else
               " (> 1: the slots differ more from each other than they move)" if ratio > 1 else
               " (< 1: the slots move more over time than they differ from each other)")
    return "\n".join([
        title,
        f"L2 norm of each memory slot (a row of d = {trace.memory.shape[2]} values) after each "
        "step:",
        format_table(["step t", *slots], rows), "",
        note("Pairwise cosine similarity of the slots, mean over all T steps (+1 parallel,",
             "0 orthogonal as at initialisation, -1 opposite):"),
        format_table(["", *slots], cosine),
        f"mean |cosine| of distinct slots: {fmt(spec['mean_abs_cosine'])}",
        note(f"variance across slots of their time means (between): {fmt(spec['between'])};",
             f"variance of each slot over time (within): {fmt(spec['within'])};",
             f"between/within = {fmt(ratio)}{verdict}.")])


def render_gates(trace: Trace, result: dict, step_labels) -> str:
    title = section("3. Gate openness per step")
    if not trace.gates:
        return "\n".join([title, "this memory has no gates (gate_style=None): M_t = M~_t."])
    names = list(trace.gates)
    rows = []
    for t in range(trace.steps):
        row = [_step_label(t, step_labels)]
        for n in names:
            g = result["gates"][n]
            row.append(f"{fmt(g['mean'][t])} ({fmt(g['min'][t], 2)}..{fmt(g['max'][t], 2)})")
        rows.append(row)
    if trace.memory is not None:
        what = "mean over all N slots x G gate units"
        how = ("M_t = input_gate * tanh(M~_t) + forget_gate * M_(t-1): a forget gate near 1 "
               "keeps the memory, an input gate near 1 writes the attended update M~_t.")
    else:
        what = "mean over the H hidden units"
        how = "c_t = forget * c_(t-1) + input * g_t,  h_t = output * tanh(c_t)."
    return "\n".join([title, f"Gate activations in (0, 1): {what} (min..max in brackets):",
                      format_table(["step t", *names], rows), note(how)])


def render_attention(trace: Trace, result: dict, step_labels) -> str:
    title = section("4. Attention entropy per head and attention to the input row")
    if trace.attention is None:
        return "\n".join([title, note("attention does not exist for an LSTM: it has no memory "
                                      "slots and no attention, so no entropy and no heatmap.")])
    ent, inp = result["entropy"], result["input_attention"]
    T, blocks, heads, N = inp.shape
    cols = [(b, h) for b in range(blocks) for h in range(heads)]
    names = [f"head {h}" if blocks == 1 else f"b{b} head {h}" for b, h in cols]
    rows = [[_step_label(t, step_labels), *(fmt(ent[t, b, h]) for b, h in cols)]
            for t in range(T)]
    rows.append(["mean", *(fmt(ent[:, b, h].mean()) for b, h in cols)])
    entropy_table = format_table(["step t", *names], rows)
    rows = []
    for t in range(T):
        cells = []
        for b, h in cols:
            w = inp[t, b, h]
            top = int(np.argmax(w))
            cells.append(f"{fmt(w.mean())} (slot {top}: {fmt(w[top], 2)})")
        rows.append([_step_label(t, step_labels), *cells])
    return "\n".join([
        title,
        note(f"Entropy of each memory slot's attention over the N+1 = {N + 1} keys (N slots + the",
             "input row), in nats, mean over the N slot queries; 0 = a single key,",
             f"ln(N+1) = {result['max_entropy']:.3f} = uniform:"),
        entropy_table, "",
        note("Weight on the input row (mean over the slot queries; uniform = 1/(N+1) =",
             f"{1 / (N + 1):.3f}), and the slot that attends to the input most (its weight):"),
        format_table(["step t", *names], rows)])


def render_comparison(columns: list[dict]) -> str:
    """columns: dicts with ``label``, ``model``, ``trace``, ``result``, ``accuracy`` (or None)."""
    header = ["", *(c["label"] for c in columns)]
    rows = [["parameters, total", *(f"{c['model'].num_parameters():,}" for c in columns)],
            ["  recurrent part", *(f"{recurrent_parameters(c['model']):,}" for c in columns)],
            ["  classifier read-out MLP",
             *(f"{c['model'].num_parameters() - recurrent_parameters(c['model']):,}"
               for c in columns)],
            ["per-step output width", *(str(c["trace"].outputs.shape[1]) for c in columns)]]
    for key, label in (("mean", "output mean"), ("std", "output std"),
                       ("norm", "output norm (all T steps)"),
                       ("step_norm", "output norm per step")):
        rows.append([label, *(fmt(c["result"]["outputs"][key]) for c in columns)])
    for key, label in (("mean", "logits mean"), ("std", "logits std"), ("norm", "logits norm")):
        rows.append([label, *(fmt(None if c["result"]["logits"] is None
                                  else c["result"]["logits"][key]) for c in columns)])
    rows.append(["held-out accuracy", *(fmt(c.get("accuracy")) for c in columns)])
    breakdown = []
    for c in columns:
        total = c["model"].num_parameters()
        for i, (group, count) in enumerate(parameter_groups(c["model"])):
            breakdown.append([c["label"] if i == 0 else "", group, f"{count:,}",
                              f"{100 * count / total:.1f} %"])
    return "\n".join([
        section("5. Models compared: parameters and outputs on this example"),
        format_table(header, rows),
        note("per-step outputs: RelationalRNN y_t, LSTM h_t, RMC the flattened memory;",
             "statistics over all T x width values of this example; accuracy on held-out",
             "examples."), "",
        "Parameters by component:",
        format_table(["model", "component", "parameters", "share"], breakdown, left=2)])


# ============================================================================================
# Examples, models, training
# ============================================================================================


@dataclass
class Example:
    """One N-th Farthest example: ``x`` (T, W), ``label``, ``n``, ``m``, ``ids`` (T,) object id
    shown at each step, and where it comes from (``source``)."""

    x: np.ndarray
    label: int
    n: int
    m: int
    ids: np.ndarray
    source: str


def pick_example(eval_set: nf.EvalSet, index: int, num_objects: int, num_features: int,
                 source: str) -> Example:
    """Example ``index`` of a held-out set, with its m, n and the object id of every row."""
    K, F = num_objects, num_features
    x = np.asarray(eval_set.inputs[index])
    return Example(x=x, label=int(eval_set.labels[index]), n=int(eval_set.n[index]),
                   m=int(np.argmax(x[0, F + K:F + 2 * K])),
                   ids=np.argmax(x[:, F:F + K], axis=1), source=source)


def subset(eval_set: nf.EvalSet, size: int) -> nf.EvalSet:
    return nf.EvalSet(inputs=eval_set.inputs[:size], labels=eval_set.labels[:size],
                      n=eval_set.n[:size], seed=eval_set.seed)


def _seed_streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent streams of a demo seed: RelationalRNN init, LSTM init, training data."""
    return np.random.SeedSequence(seed).spawn(3)


def build_demo_models(seed: int, dtype=np.float32):
    """The demo's RelationalRNN classifier and LSTM classifier of the same hidden size and
    read-out, for the 4 x 4 N-th Farthest layout."""
    K, F = DEMO_TASK["num_objects"], DEMO_TASK["num_features"]
    width = nf.task_width(K, F)
    s = DEMO_SIZES
    rrnn_rng, lstm_rng = (np.random.default_rng(q) for q in _seed_streams(seed)[:2])
    rrnn = RelationalRNNClassifier(width, K, hidden_size=s["hidden_size"],
                                   num_slots=s["num_slots"], slot_size=s["slot_size"],
                                   num_heads=s["num_heads"], mlp_hidden=s["mlp_hidden"],
                                   rng=rrnn_rng, dtype=dtype)
    lstm = LSTMClassifier(width, s["hidden_size"], K, mlp_hidden=s["mlp_hidden"], rng=lstm_rng,
                          dtype=dtype)
    return rrnn, lstm


def train_classifier(model, *, steps: int, seed: int, batch_size: int = DEMO_BATCH,
                     lr: float = DEMO_LR) -> dict:
    """Adam on fresh batches of the demo task (the data stream depends only on ``seed``).

    Returns ``{"steps", "seconds", "loss"}`` (mean training loss of the last 20 steps, None
    without steps).
    """
    rng = np.random.default_rng(_seed_streams(seed)[2])
    optimizer = Adam(model, lr=lr, clip_norm=DEMO_CLIP)
    K, F = DEMO_TASK["num_objects"], DEMO_TASK["num_features"]
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y, _ = nf.make_batch(rng, batch_size, K, F, active_objects=DEMO_TASK["active_objects"],
                                active_features=DEMO_TASK["active_features"], dtype=model.dtype)
        logits, cache = model.forward(x)
        loss, dlogits, _ = layers.softmax_cross_entropy(logits, y)
        optimizer.zero_grad()
        model.backward(dlogits, cache)
        optimizer.step()
        losses.append(loss)
    return {"steps": steps, "seconds": time.perf_counter() - t0,
            "loss": float(np.mean(losses[-20:])) if losses else None}


def accuracy(model, eval_set: nf.EvalSet, num_objects: int) -> float:
    """Held-out accuracy, through the trainer's :func:`training.evaluate`."""
    import training
    return training.evaluate(model, eval_set, num_objects)["heldout_acc"]


def write_heatmaps(trace: Trace, out_dir: str, example: Example, title: str) -> list[str]:
    """The attention heatmap of ``trace`` (one PNG per attention block) through
    :func:`plots.plot_attention_heatmap`; returns the paths."""
    import plots
    blocks = trace.attention.shape[1]
    paths = []
    for b in range(blocks):
        name = HEATMAP_NAME if blocks == 1 else HEATMAP_NAME.replace(".png", f"_block{b}.png")
        path = os.path.join(out_dir, name)
        try:
            paths.append(plots.plot_attention_heatmap(
                trace.attention[:, b], path, row_objects=example.ids,
                title=title + (f" (block {b} of {blocks})" if blocks > 1 else "")
                + "\nrows: memory-slot queries; columns: keys = memory slots s0.. and the input "
                  "row 'in'"))
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return paths


# ============================================================================================
# The report
# ============================================================================================


def header(key: str, text: str) -> str:
    """``key      : text`` with continuation lines indented under the text."""
    return f"{key:<10}: " + text.replace("\n", "\n" + " " * 12)


def describe_example(example: Example, trace: Trace) -> str:
    text = (f"{example.source}\n{len(example.ids)} steps t = 0..{len(example.ids) - 1}, one "
            f"object per step (objects {', '.join(map(str, example.ids))}); question m="
            f"{example.m}, n={example.n}\n(the object at rank n of the distances from object m; "
            f"n = 0 is m itself): answer {example.label}\n")
    if trace.logits is not None:
        probs = layers.softmax(np.asarray(trace.logits, np.float64))
        pred = int(np.argmax(probs))
        text += (f"the model predicts {pred} (p={probs[pred]:.2f}; p(answer)="
                 f"{probs[example.label]:.2f})")
    return header("example", text.rstrip())


def describe_model(model) -> str:
    kind = model_kind(model)
    if kind == "lstm":
        return f"LSTM, hidden size {model.hidden_size}, read-out {model.mlp_hidden}"
    mem = model.rnn.cell.memory if kind == "rrnn" else model.core
    text = (f"memory N = {mem.mem_slots} slots x d = {mem.mem_size} "
            f"({mem.num_heads} heads x {mem.head_size}), {mem.num_blocks} attention "
            f"block{'s' if mem.num_blocks > 1 else ''}, gate_style {mem.gate_style!r}")
    if kind == "rrnn":
        return f"RelationalRNN, LSTM hidden size {model.hidden_size},\n{text}"
    return f"RMC, {text}"


def print_report(main_column: dict, columns: list[dict], example: Example, out=print) -> None:
    """Print sections 1-5 for the main model (``main_column``) and the comparison ``columns``."""
    trace, result = main_column["trace"], main_column["result"]
    labels = [f"obj {i}" for i in example.ids]
    out(describe_example(example, trace))
    out(render_phases(trace, result))
    out(render_slots(trace, result, labels))
    out(render_gates(trace, result, labels))
    out(render_attention(trace, result, labels))
    out(render_comparison(columns))


def column(label: str, model, example: Example, acc=None) -> dict:
    trace = trace_model(model, example.x)
    return {"label": label, "model": model, "trace": trace, "result": analyse(trace),
            "accuracy": acc}


# ============================================================================================
# Command line
# ============================================================================================


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Show how the memory of a RelationalRNN (LSTM + relational memory) evolves over one "
            "N-th Farthest sequence:\nstate norms per phase, per-slot activity and "
            "specialisation, gate openness, attention entropy per head,\nand a comparison of "
            "parameters and outputs with an LSTM."),
        epilog=(
            "without --checkpoint: builds a RelationalRNN classifier (hidden 32, 4 slots x 32, 2 "
            "heads) and an LSTM\n  classifier of the same hidden size, trains both for --steps "
            f"Adam steps (batch {DEMO_BATCH}, lr {DEMO_LR:g}) on\n  N-th Farthest with 4 objects x "
            "1 feature in the 4 x 4 layout, and analyses one held-out example\n"
            "  (about 5-10 s on 2 cores).\n"
            "with --checkpoint: analyses a model trained by 'python nth_farthest.py' (rmc, lstm "
            "or rrnn) on an\n  example of its run's held-out set, compares it with the other "
            "trained models of the same run\n  folder (without a trained LSTM there, with an "
            "untrained LSTM of the same hidden size; for an LSTM,\n  with a RelationalRNN), and "
            f"writes the attention heatmap {HEATMAP_NAME}\n  (per head and step; RMC and "
            "RelationalRNN only).  Takes a few seconds for the quick preset's\n  models, up to "
            "about a minute for the paper's.\n\n"
            "exit status: 0 success, 2 bad arguments or an unreadable checkpoint, 1 a file "
            "could not be written.\n\n"
            "examples:\n"
            f"  python {PROG}\n"
            f"  python {PROG} --seed 3 --steps 0          # untrained models\n"
            "  python nth_farthest.py --preset quick --model all --out runs/quick\n"
            f"  python {PROG} --checkpoint runs/quick/rrnn --example 5 --out figures"))
    p.add_argument("--checkpoint", metavar="PATH",
                   help="checkpoint.npz written by nth_farthest.py, or the folder holding it "
                        "(e.g. runs/quick/rrnn)")
    p.add_argument("--out", metavar="DIR",
                   help="folder for the attention heatmap (created if needed); default: the "
                        "checkpoint's folder; without --checkpoint no file is written unless "
                        "--out is given")
    p.add_argument("--seed", type=_nonneg_int, default=0, metavar="S",
                   help="seed of the demo models' initial parameters and training data (with "
                        "--checkpoint: of the untrained comparison model); default 0")
    p.add_argument("--steps", type=_nonneg_int, default=None, metavar="N",
                   help=f"training steps of the demo models (default {DEMO_STEPS}; 0 = analyse "
                        "them untrained); not with --checkpoint")
    p.add_argument("--example", type=_nonneg_int, default=0, metavar="I",
                   help="index of the analysed example in the held-out set (default 0, the "
                        "example of the trainer's own heatmap)")
    return p


def _resolve_out(args, default: str | None) -> str | None:
    """The output folder (created), or None; DemoError if unusable."""
    out = args.out if args.out is not None else default
    if out is None:
        return None
    if os.path.exists(out) and not os.path.isdir(out):
        raise DemoError(f"--out {out} exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"cannot create the output folder {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        hint = "" if args.out is not None else " (the checkpoint's folder); choose one with --out"
        raise DemoError(f"cannot write to the output folder {out}{hint}")
    return out


def _check_example(index: int, size: int) -> None:
    if index >= size:
        raise DemoError(f"--example must lie in [0, {size - 1}] (the held-out set has {size} "
                        f"examples), got {index}")


def run_demo(args, out=print) -> list[str]:
    """The demo without a checkpoint; returns the files written."""
    steps = DEMO_STEPS if args.steps is None else args.steps
    _check_example(args.example, DEMO_EVAL_SIZE)
    out_dir = _resolve_out(args, None)
    K, F = DEMO_TASK["num_objects"], DEMO_TASK["num_features"]
    k, f = DEMO_TASK["active_objects"], DEMO_TASK["active_features"]
    rrnn, lstm = build_demo_models(args.seed)
    out(section("RelationalRNN memory-evolution demo"))
    out(header("task", f"N-th Farthest, {k} objects x {f} feature in the {K} x {F} layout "
                       f"(input width {nf.task_width(K, F)}), chance accuracy 1/{k} = "
                       f"{1 / k:.3f}"))
    out(header("models", f"{describe_model(rrnn)}\nLSTM of the same hidden size "
                         f"{lstm.hidden_size}; both with the read-out MLP "
                         f"{list(DEMO_SIZES['mlp_hidden'])}"))
    eval_set = nf.make_eval_set(DEMO_EVAL_SEED, DEMO_EVAL_SIZE, K, F, active_objects=k,
                                active_features=f)
    accs = {}
    for label, model in (("RelationalRNN", rrnn), ("LSTM", lstm)):
        if steps:
            info = train_classifier(model, steps=steps, seed=args.seed)
            out(header("training", f"{label:<13} {steps} Adam steps of batch {DEMO_BATCH}, lr "
                                   f"{DEMO_LR:g}, seed {args.seed}: {info['seconds']:.1f} s, "
                                   f"final training loss {info['loss']:.3f}"))
        accs[label] = accuracy(model, subset(eval_set, ACCURACY_EXAMPLES), k)
    if not steps:
        out(header("training", "none (--steps 0): the models are analysed at their "
                               "initialisation"))
    out(header("held-out", f"accuracy on {min(ACCURACY_EXAMPLES, DEMO_EVAL_SIZE)} examples "
                           f"(eval seed {DEMO_EVAL_SEED}): RelationalRNN "
                           f"{accs['RelationalRNN']:.3f}, LSTM {accs['LSTM']:.3f} (chance "
                           f"{1 / k:.3f})"))
    example = pick_example(eval_set, args.example, K, F,
                           f"held-out example {args.example} (eval seed {DEMO_EVAL_SEED})")
    state = "trained" if steps else "untrained"
    columns = [column(f"RelationalRNN ({state})", rrnn, example, accs["RelationalRNN"]),
               column(f"LSTM ({state})", lstm, example, accs["LSTM"])]
    print_report(columns[0], columns, example, out)
    written = []
    if out_dir is not None:
        written = write_heatmaps(columns[0]["trace"], out_dir, example,
                                 f"RelationalRNN demo ({state}, {steps} steps), attention on "
                                 f"held-out example {args.example} (m={example.m}, n={example.n}: "
                                 f"answer {example.label})")
    return written


def _load(path: str):
    import training
    try:
        return training.load_checkpoint(path)
    except training.CheckpointError as exc:
        raise DemoError(str(exc)) from None


def _siblings(info: dict, task: tuple) -> list[tuple[str, object, dict]]:
    """Trained models of the other kinds in the same run folder (DIR/<kind>/checkpoint.npz)."""
    import training
    model_dir = os.path.dirname(os.path.abspath(info["path"]))
    if os.path.basename(model_dir) != info["kind"]:
        return []
    found = []
    for kind in training.MODEL_KINDS:
        path = os.path.join(os.path.dirname(model_dir), kind, training.CHECKPOINT_NAME)
        if kind == info["kind"] or not os.path.isfile(path):
            continue
        try:
            model, other = training.load_checkpoint(path, expect_kind=kind)
        except training.CheckpointError:
            continue
        cfg = other.get("run_config") or {}
        if (cfg.get("num_objects"), cfg.get("num_features")) == task:
            found.append((kind, model, other))
    return found


def _counterpart(kind: str, model, K: int, F: int, seed: int):
    """An untrained model to compare with, used when the run folder holds no trained model of
    kind ``COUNTERPART[kind]``: an LSTM of the same hidden size (for an RMC: of its state size
    N*d), or for an LSTM a RelationalRNN of its hidden size with the quick preset's memory.
    Returns (label, model)."""
    import training
    rng = np.random.default_rng(seed)
    mlp = list(model.mlp_hidden)
    if kind == "lstm":
        sizes = dict(training.PRESETS["quick"]["models"]["rrnn"], hidden_size=model.hidden_size,
                     mlp_hidden=mlp)
        other = training.build_model("rrnn", sizes, K, F, dtype=model.dtype, rng=rng)
        return f"RelationalRNN H={model.hidden_size} (untrained)", other
    hidden = model.hidden_size if kind == "rrnn" else model.core.mem_slots * model.core.mem_size
    other = training.build_model("lstm", {"hidden_size": hidden, "mlp_hidden": mlp}, K, F,
                                 dtype=model.dtype, rng=rng)
    return f"LSTM H={hidden} (untrained)", other


def run_checkpoint(args, out=print) -> list[str]:
    """The analysis of a trained checkpoint; returns the files written."""
    if args.steps is not None:
        raise DemoError("--steps trains the demo models and cannot be combined with --checkpoint")
    model, info = _load(args.checkpoint)
    kind = info["kind"]
    cfg = info.get("run_config") or {}
    missing = [k for k in ("num_objects", "num_features", "eval_seed", "eval_size")
               if not isinstance(cfg.get(k), int)]
    if missing:
        raise DemoError(f"{info['path']} has no run configuration with {', '.join(missing)}; "
                        "it was not written by nth_farthest.py")
    K, F = cfg["num_objects"], cfg["num_features"]
    _check_example(args.example, cfg["eval_size"])
    out_dir = _resolve_out(args, os.path.dirname(os.path.abspath(info["path"])))
    eval_set = nf.make_eval_set(cfg["eval_seed"], cfg["eval_size"], K, F,
                                dtype=np.dtype(info["dtype"]))
    acc_set = subset(eval_set, ACCURACY_EXAMPLES)
    label = KIND_LABELS[kind]
    out(section(f"{label} {'state' if kind == 'lstm' else 'memory'}-evolution analysis of a "
                f"trained checkpoint"))
    averaged = info.get("weights") == "averaged"
    weights = " (weights averaged over the last steps)" if averaged else ""
    out(header("checkpoint", f"{info['path']}: {info['dtype']}, at training step "
                             f"{info['step']}{weights}"))
    out(header("model", describe_model(model)))
    out(header("task", f"N-th Farthest, {K} objects x {F} features, chance accuracy 1/{K} = "
                       f"{1 / K:.3f}"))
    example = pick_example(eval_set, args.example, K, F,
                           f"held-out example {args.example} of the run (eval seed "
                           f"{cfg['eval_seed']})")
    main_col = column(f"{label} (step {info['step']})", model, example, accuracy(model, acc_set, K))
    columns = [main_col]
    siblings = _siblings(info, (K, F))
    if not any(other_kind == COUNTERPART[kind] for other_kind, _, _ in siblings):
        cmp_label, cmp_model = _counterpart(kind, model, K, F, args.seed)
        columns.append(column(cmp_label, cmp_model, example, accuracy(cmp_model, acc_set, K)))
    for other_kind, other, other_info in siblings:
        columns.append(column(f"{KIND_LABELS[other_kind]} of the run (step {other_info['step']})",
                              other, example, accuracy(other, acc_set, K)))
    out(header("held-out", f"accuracy on the first {len(acc_set)} held-out examples:\n"
                           + "\n".join(f"  {c['label']}: {c['accuracy']:.3f}" for c in columns)))
    print_report(main_col, columns, example, out)
    if main_col["trace"].attention is None:
        out(f"\nno heatmap: attention does not exist for an {label}.")
        return []
    return write_heatmaps(main_col["trace"], out_dir, example,
                          f"{label} at step {info['step']}: attention on held-out example "
                          f"{args.example} (m={example.m}, n={example.n}: answer {example.label})")


def main(argv=None) -> int:
    """Run the demo (see ``--help``); returns the exit status."""
    t0 = time.perf_counter()
    args = build_parser().parse_args(argv)
    try:
        try:
            written = run_checkpoint(args) if args.checkpoint is not None else run_demo(args)
        except DemoError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        except OutputError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 1
        for path in written:
            print(f"\nattention heatmap written to {path}")
        print(f"\nfinished in {time.perf_counter() - t0:.1f} s", flush=True)
    except BrokenPipeError:
        # The reader of stdout went away (e.g. '| head'): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


# ============================================================================================
# Tests (collected by pytest): tiny models, no or only a few training steps
# ============================================================================================

# Tiny sizes: T = 7 steps, input width 5, hidden 6, N = 3 slots of d = 8 (2 heads x 4).
T_, I_, H_, N_, D_, HEADS_ = 7, 5, 6, 3, 8, 2


def _tiny_rnn(gate_style="unit", num_blocks=1, seed=0):
    return RelationalRNN(I_, H_, 4, num_slots=N_, slot_size=D_, num_heads=HEADS_,
                         num_blocks=num_blocks, gate_style=gate_style,
                         rng=np.random.default_rng(seed))


def _tiny_classifiers(seed=0):
    """One tiny float64 classifier of each kind for a 3-object x 2-feature task (width 11)."""
    rng = np.random.default_rng(seed)
    width = nf.task_width(3, 2)
    return {"rrnn": RelationalRNNClassifier(width, 3, hidden_size=H_, num_slots=N_,
                                            slot_size=D_, num_heads=HEADS_, mlp_hidden=[5],
                                            rng=rng),
            "rmc": RMCClassifier(width, 3, mem_slots=N_, head_size=D_ // HEADS_,
                                 num_heads=HEADS_, mlp_hidden=[5], rng=rng),
            "lstm": LSTMClassifier(width, H_, 3, mlp_hidden=[5], rng=rng)}


def _tiny_example(seed=1):
    x, _, _ = nf.make_batch(np.random.default_rng(seed), 1, 3, 2, dtype=np.float64)
    return x[0]                                                # (3, 11)


def _all_traces():
    x = np.random.default_rng(2).standard_normal((T_, I_))
    traces = {"rrnn bare": trace_model(_tiny_rnn(), x)}
    for kind, model in _tiny_classifiers().items():
        traces[kind] = trace_model(model, _tiny_example())
    return traces


def _walk(value, path="result"):
    """Yield (path, array) for every number in a nested analysis result."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    elif value is not None and not isinstance(value, str):
        yield path, np.asarray(value, dtype=np.float64)


# No module-level pytest import and no decorators: the demo must run without pytest installed.


def test_trace_and_analysis_have_the_documented_shapes():
    for gate_style, num_blocks in (("unit", 1), ("memory", 2), (None, 1)):
        _check_trace_shapes(gate_style, num_blocks)


def _check_trace_shapes(gate_style, num_blocks):
    rnn = _tiny_rnn(gate_style, num_blocks)
    x = np.random.default_rng(3).standard_normal((T_, I_))
    trace = trace_model(rnn, x)
    assert trace.kind == "rrnn" and trace.steps == T_ and trace.logits is None
    assert trace.outputs.shape == (T_, 4)
    assert trace.memory.shape == (T_, N_, D_) and trace.memory0.shape == (N_, D_)
    assert trace.attention.shape == (T_, num_blocks, HEADS_, N_ + 1, N_ + 1)
    G = {"unit": D_, "memory": 1, None: None}[gate_style]
    if G is None:
        assert trace.gates == {}
    else:
        assert {g.shape for g in trace.gates.values()} == {(T_, N_, G)}
    # The trace is the model's own forward pass.
    outputs, h_T, _, memory_T = rnn.forward(x[None], return_state=True)
    np.testing.assert_array_equal(trace.outputs, outputs[0])
    np.testing.assert_array_equal(trace.memory[-1], memory_T[0])
    np.testing.assert_array_equal(trace.states["LSTM hidden h"][1][-1], h_T[0])
    np.testing.assert_array_equal(trace.memory0, np.eye(N_, D_))

    r = analyse(trace)
    assert r["slot_norms"].shape == (T_, N_) and r["slot_norms0"].shape == (N_,)
    assert r["specialisation"]["cosine"].shape == (N_, N_)
    assert r["entropy"].shape == (T_, num_blocks, HEADS_)
    assert r["input_attention"].shape == (T_, num_blocks, HEADS_, N_)
    for norms, changes, relative in r["norms"].values():
        assert norms.shape == (T_ + 1,) and changes.shape == relative.shape == (T_,)
    for stats in r["gates"].values():
        assert {v.shape for v in stats.values()} == {(T_,)}
    assert [p["phase"] for p in r["phases"]["memory M"]] == ["early", "middle", "late"]


def test_trace_shapes_of_every_classifier_kind():
    x = _tiny_example()
    for kind, model in _tiny_classifiers().items():
        trace = trace_model(model, x)
        assert trace.kind == kind and trace.logits.shape == (3,)
        np.testing.assert_allclose(trace.logits, model.forward(x[None])[0][0])
        width = {"rrnn": H_, "rmc": N_ * D_, "lstm": H_}[kind]
        assert trace.outputs.shape == (3, width)
        if kind == "lstm":
            assert trace.memory is None and trace.attention is None
            assert {g.shape for g in trace.gates.values()} == {(3, H_)}
            assert set(trace.states) == {"LSTM hidden h", "LSTM cell c"}
        else:
            assert trace.attention.shape == (3, 1, HEADS_, N_ + 1, N_ + 1)
            assert trace.memory.shape == (3, N_, D_)


def test_every_analysed_value_is_finite():
    for name, trace in _all_traces().items():
        checked = 0
        for path, value in _walk(analyse(trace)):
            assert np.isfinite(value).all(), f"{name}: {path} = {value}"
            checked += value.size
        assert checked > 20, name


def test_memory_and_states_change_at_every_step():
    for name, trace in _all_traces().items():
        for state, (initial, seq) in trace.states.items():
            _, changes, relative = state_norms(initial, seq)
            assert (changes > 1e-6).all(), (name, state, changes)
            assert ((relative > 0) & (relative <= 2)).all(), (name, state, relative)
        if trace.memory is not None:
            steps = np.concatenate([trace.memory0[None], trace.memory])
            assert all(not np.allclose(a, b) for a, b in zip(steps[:-1], steps[1:])), name


def test_gates_lie_strictly_between_zero_and_one():
    for name, trace in _all_traces().items():
        assert trace.gates, name
        for gate, values in trace.gates.items():
            assert ((values > 0) & (values < 1)).all(), (name, gate)
            stats = gate_openness(values)
            assert (stats["min"] <= stats["mean"]).all() and (stats["mean"] <= stats["max"]).all()


def test_attention_entropy_lies_between_zero_and_log_n_plus_one():
    for name, trace in _all_traces().items():
        if trace.attention is None:
            continue
        np.testing.assert_allclose(trace.attention.sum(axis=-1), 1.0, atol=1e-12)
        r = analyse(trace)
        assert math.isclose(r["max_entropy"], math.log(N_ + 1))
        assert (r["entropy"] >= 0).all() and (r["entropy"] <= math.log(N_ + 1) + 1e-12).all()
        assert ((r["input_attention"] >= 0) & (r["input_attention"] <= 1)).all()


def test_attention_entropy_and_input_weight_on_known_attention():
    N = 4
    uniform = np.full((2, 1, 3, N + 1, N + 1), 1.0 / (N + 1))
    np.testing.assert_allclose(attention_entropy(uniform), math.log(N + 1))
    np.testing.assert_allclose(input_attention(uniform), 1.0 / (N + 1))
    # Every slot attends only to the input row: entropy 0, input weight 1.
    onehot = np.zeros((2, 1, 3, N + 1, N + 1))
    onehot[..., N] = 1.0
    np.testing.assert_array_equal(attention_entropy(onehot), 0.0)
    np.testing.assert_array_equal(input_attention(onehot), 1.0)
    # Half the slots uniform over two keys (ln 2), half one-hot (0); the input row's own query
    # (row N) is ignored even when it is uniform.
    mixed = np.zeros((1, 1, 1, N + 1, N + 1))
    mixed[..., :2, :2] = 0.5
    mixed[..., 2:N, 0] = 1.0
    mixed[..., N, :] = 1.0 / (N + 1)
    np.testing.assert_allclose(attention_entropy(mixed), math.log(2) / 2)


def test_parameter_counts_are_the_sum_of_the_parameter_sizes():
    models = dict(_tiny_classifiers(), bare_rrnn=_tiny_rnn(), bare_rmc=RelationalMemory(
        I_, N_, 4, HEADS_, rng=np.random.default_rng(0)), bare_lstm=LSTM(I_, H_))
    for name, model in models.items():
        groups = parameter_groups(model)
        total = sum(p.size for p in model.parameters().values())
        assert sum(count for _, count in groups) == total == model.num_parameters(), name
        assert len({label for label, _ in groups}) == len(groups), name
        readout = total - recurrent_parameters(model)
        expected = model.readout.num_parameters() if isinstance(model, CLASSIFIERS) else 0
        assert readout == expected, name
    # Hand counts: LSTM 4H(I + H + 1); read-out MLP [H, 5, 3]: (H + 1) 5 + (5 + 1) 3.
    width = nf.task_width(3, 2)
    lstm_groups = dict(parameter_groups(models["lstm"]))
    assert lstm_groups == {"LSTM": 4 * H_ * (width + H_ + 1),
                           "classifier read-out MLP": (H_ + 1) * 5 + 6 * 3}
    rrnn_groups = dict(parameter_groups(models["rrnn"]))
    assert rrnn_groups["LSTM cell"] == 4 * H_ * (width + H_ + 1)
    assert rrnn_groups["memory read-out"] == (D_ + 1) * H_
    assert rrnn_groups["combine [h ; r]"] == (2 * H_ + 1) * H_
    assert rrnn_groups["output projection"] == (H_ + 1) * H_


def test_phase_slices_cover_every_step_exactly_once():
    for T in range(1, 12):
        phases = phase_slices(T)
        steps = [t for _, sl in phases for t in range(T)[sl]]
        assert steps == list(range(T)), T
        assert all(sl.stop > sl.start for _, sl in phases)
        names = [name for name, _ in phases]
        assert names == (["all"] if T == 1 else ["early", "late"] if T == 2
                         else ["early", "middle", "late"])
    try:
        phase_slices(0)
    except ValueError as exc:
        assert "T must be an integer >= 1" in str(exc)
    else:
        raise AssertionError("phase_slices(0) did not raise")


def test_state_statistics_on_known_states():
    initial = np.zeros(2)
    states = np.array([[3.0, 4.0], [3.0, 4.0], [0.0, 0.0]])
    norms, changes, relative = state_norms(initial, states)
    np.testing.assert_allclose(norms, [0, 5, 5, 0])
    np.testing.assert_allclose(changes, [5, 0, 5])
    np.testing.assert_allclose(relative, [1, 0, 1])
    stats = state_phase_stats(initial, states)
    assert [(p["phase"], p["first"], p["last"]) for p in stats] == [
        ("early", 0, 0), ("middle", 1, 1), ("late", 2, 2)]
    assert [(p["norm"], p["change"]) for p in stats] == [(5, 5), (5, 0), (0, 5)]
    stats = state_phase_stats(initial, np.tile(states, (2, 1)))          # T = 6: 2 + 2 + 2
    assert [(p["first"], p["last"]) for p in stats] == [(0, 1), (2, 3), (4, 5)]
    assert [(p["norm"], p["change"]) for p in stats] == [(5, 2.5), (2.5, 5), (2.5, 2.5)]


def test_slot_specialisation_on_known_memories():
    orthogonal = np.tile(np.eye(3, 4) * 2.0, (5, 1, 1))                 # constant over time
    spec = slot_specialisation(orthogonal)
    np.testing.assert_allclose(spec["cosine"], np.eye(3), atol=1e-15)
    assert spec["mean_abs_cosine"] == 0 and spec["within"] == 0 and spec["ratio"] is None
    assert spec["between"] > 0
    np.testing.assert_allclose(slot_norms(orthogonal), 2.0)
    rng = np.random.default_rng(0)
    same = np.repeat(rng.standard_normal((5, 1, 4)), 3, axis=1)           # identical slots
    spec = slot_specialisation(same)
    np.testing.assert_allclose(spec["cosine"], 1.0)
    assert math.isclose(spec["mean_abs_cosine"], 1) and math.isclose(spec["between"], 0,
                                                                      abs_tol=1e-15)
    assert math.isclose(spec["ratio"], 0, abs_tol=1e-12)
    assert slot_specialisation(same[:, :1])["mean_abs_cosine"] is None    # one slot: no pairs


def test_output_statistics_on_known_values():
    stats = output_stats(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert stats == {"mean": 1.75, "std": float(np.std([3.0, 4.0, 0.0, 0.0])), "norm": 5.0,
                     "step_norm": 2.5, "size": 4}
    assert output_stats(np.array([3.0, 4.0]))["step_norm"] == 5.0


def run_cli(argv):
    """main() with argparse's SystemExit turned into the exit status."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


def test_demo_without_checkpoint_prints_every_section(capsys):
    assert run_cli(["--steps", 2, "--seed", 1]) == 0
    out = capsys.readouterr().out
    for title in ("1. State norms per phase", "2. Per-slot activity", "3. Gate openness",
                  "4. Attention entropy", "5. Models compared", "held-out  : accuracy",
                  "2 Adam steps", f"ln(N+1) = {math.log(DEMO_SIZES['num_slots'] + 1):.3f}",
                  "finished in"):
        assert title in out, title
    assert "heatmap" not in out.split("5. Models compared")[1]        # no --out: no file


def test_demo_models_and_training_are_reproducible_for_a_seed():
    def trained(seed):
        rrnn, lstm = build_demo_models(seed, dtype=np.float64)
        assert rrnn.hidden_size == lstm.hidden_size == DEMO_SIZES["hidden_size"]
        train_classifier(rrnn, steps=1, seed=seed, batch_size=4)
        return rrnn.parameters()
    first, again, other = trained(4), trained(4), trained(5)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not all(np.array_equal(first[k], other[k]) for k in first)


BAD_INPUT = [
    (["--checkpoint", "{tmp}/missing.npz"], "no checkpoint file"),
    (["--checkpoint", "{tmp}/garbage.npz"], "cannot read checkpoint"),
    (["--checkpoint", "{tmp}"], "no checkpoint file"),
    (["--seed", "-1"], "must be an integer >= 0"),
    (["--seed", "abc"], "must be an integer >= 0"),
    (["--steps", "1.5"], "must be an integer >= 0"),
    (["--example", str(DEMO_EVAL_SIZE)], "--example must lie in"),
    (["--out", "{tmp}/garbage.npz"], "is not a folder"),
]


def test_bad_input_exits_non_zero_with_a_clear_message(tmp_path, capsys):
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    for argv, message in BAD_INPUT:
        argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
        assert run_cli(argv) == 2, argv
        captured = capsys.readouterr()
        assert message in captured.err and "Traceback" not in captured.err, (argv, captured.err)
        assert "finished" not in captured.out, argv


_TINY_RUN = {}


def _tiny_run(tmp_path_factory):
    """A run folder of the trainer's CLI with a checkpoint of every model kind (3 steps each),
    trained once per test session."""
    if "dir" not in _TINY_RUN:
        import training
        run_dir = tmp_path_factory.mktemp("demo_run") / "run"
        argv = ["--model", "all", "--steps", "3", "--batch-size", "4", "--eval-size", "12",
                "--eval-every", "3", "--checkpoint-every", "3", "--num-objects", "3",
                "--num-features", "2", "--curriculum", "none", "--mem-slots", "2",
                "--head-size", "4", "--num-heads", "2", "--hidden-size", "8", "--mlp-hidden", "8",
                "--dtype", "float64", "--time-budget", "none", "--no-progress", "--no-plots",
                "--out", str(run_dir)]
        assert training.main(argv) == 0
        _TINY_RUN["dir"] = run_dir
    return _TINY_RUN["dir"]


def test_checkpoint_of_every_kind_is_analysed(tmp_path_factory, tmp_path, capsys):
    """rmc and lstm write into --out; rrnn, without --out, next to its checkpoint."""
    import training
    run = _tiny_run(tmp_path_factory)
    capsys.readouterr()
    for kind in ("rrnn", "rmc", "lstm"):
        model, info = training.load_checkpoint(run / kind)
        eval_set = nf.make_eval_set(info["run_config"]["eval_seed"], 12, 3, 2, dtype=np.float64)
        example = pick_example(eval_set, 3, 3, 2, "")
        trace = trace_model(model, example.x)
        result = analyse(trace)
        assert all(np.isfinite(v).all() for _, v in _walk(result))
        out_dir = run / kind if kind == "rrnn" else tmp_path
        path = run / kind / "checkpoint.npz" if kind == "rrnn" else run / kind
        argv = ["--checkpoint", path, "--example", 3]
        assert run_cli(argv + (["--out", tmp_path] if kind != "rrnn" else [])) == 0, kind
        out = capsys.readouterr().out
        assert f"at training step {info['step']}" in out and "held-out example 3 of the run" in out
        labels = [f"obj {i}" for i in example.ids]
        for text in (render_phases(trace, result), render_slots(trace, result, labels),
                     render_gates(trace, result, labels), render_attention(trace, result, labels)):
            assert text in out, (kind, text)                 # the printout is these functions'
        for other in ("rrnn", "rmc", "lstm"):       # the run's other models are compared
            if other != kind:
                assert f"{KIND_LABELS[other]} of the run (step 3)" in out, (kind, other)
        heatmap = out_dir / HEATMAP_NAME
        if kind == "lstm":
            assert "attention does not exist for an LSTM" in out and not heatmap.exists()
        else:
            assert heatmap.read_bytes().startswith(b"\x89PNG"), kind
            assert f"attention heatmap written to {heatmap}" in out, kind
            heatmap.unlink()


def test_checkpoint_refuses_training_options_and_examples_out_of_range(tmp_path_factory, capsys):
    run = _tiny_run(tmp_path_factory)
    capsys.readouterr()
    assert run_cli(["--checkpoint", run / "rmc", "--steps", 3]) == 2
    assert "cannot be combined with --checkpoint" in capsys.readouterr().err
    assert run_cli(["--checkpoint", run / "rmc", "--example", 12]) == 2
    assert "[0, 11]" in capsys.readouterr().err

if __name__ == "__main__":
    sys.exit(main())
