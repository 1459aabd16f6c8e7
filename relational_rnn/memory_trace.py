"""Tracing and analysis of how the memory of a model of this library evolves over one sequence.

:func:`trace_model` runs one example through a RelationalRNN, an RMC or an LSTM (a classifier or
the bare sequence model) and collects its per-step internals as a :class:`Trace`: outputs,
states, gate activations, the memory and the attention weights.  The analysis functions are pure
functions of a trace's arrays: state norms per phase of the sequence (:func:`state_phase_stats`),
per-slot activity and specialisation (:func:`slot_norms`, :func:`slot_specialisation`), gate
openness (:func:`gate_openness`), attention entropy and attention to the input row
(:func:`attention_entropy`, :func:`input_attention`), output statistics (:func:`output_stats`)
and parameter counts per component (:func:`parameter_groups`); :func:`analyse` computes all of
them for one trace.  :func:`pick_example` takes the analysed example from an N-th Farthest
held-out set.  The small RelationalRNN and LSTM classifiers that the memory-evolution demo
(``test_relational_rnn_demo.py``) traces, and their training, are
:mod:`relational_rnn.demo_training`; the text report of these numbers is
:mod:`relational_rnn.memory_report`.

Shape letters: T time steps, N memory slots, d slot width, H hidden units, I input width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import layers
import nth_farthest as nf
from lstm_baseline import LSTM, LSTMClassifier
from relational_memory import RelationalMemory, RMCClassifier
from relational_rnn_cell import RelationalRNN, RelationalRNNClassifier

CLASSIFIERS = (RelationalRNNClassifier, RMCClassifier, LSTMClassifier)


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
                 states={"LSTM hidden h": (np.zeros_like(h[0]), h),
                         "LSTM cell c": (cs[0], cs[1:])},
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
# The analysed example
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
    """The first ``size`` examples of a held-out set."""
    return nf.EvalSet(inputs=eval_set.inputs[:size], labels=eval_set.labels[:size],
                      n=eval_set.n[:size], seed=eval_set.seed)
