"""The text report of a memory trace: the printout of the memory-evolution demo.

The report has five sections, each computed from :func:`relational_rnn.memory_trace.analyse` and
rendered by a function of this module:

1. state norms per phase of the sequence (:func:`render_phases`): the mean Frobenius norm of the
   memory (and of the LSTM state) in the early, middle and late steps, and of its change per
   step;
2. per-slot activity and specialisation (:func:`render_slots`);
3. gate openness per step (:func:`render_gates`);
4. attention entropy per head and attention to the input row (:func:`render_attention`);
5. parameter counts and output statistics of the compared models (:func:`render_comparison`).

:func:`print_report` prints the analysed example (:func:`describe_example`) and the five
sections; :func:`column` traces and analyses one model for it.  Tables are
:func:`relational_rnn.report.format_table`.

Shape letters: T time steps, N memory slots, d slot width, H hidden units, I input width.
"""
from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Callable

import numpy as np

import layers
import nth_farthest as nf
from relational_rnn.demo_training import DEMO_SIZES, DEMO_TASK
from relational_rnn.memory_trace import (Example, Trace, analyse, model_kind, parameter_groups,
                                         recurrent_parameters, trace_model)
from relational_rnn.report import format_table


# ============================================================================================
# The five sections
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


def _section_of(title: str, absent: Callable[[Trace], bool], *why: str):
    """Decorate the renderer of a section that only some models have: the section's ``title``
    over the renderer's text, or over the note ``why`` when ``absent(trace)`` (the trace has no
    memory slots, gates or attention to show)."""
    def decorate(render):
        @functools.wraps(render)
        def rendered(trace: Trace, result: dict, step_labels) -> str:
            body = note(*why) if absent(trace) else render(trace, result, step_labels)
            return "\n".join([section(title), body])
        return rendered
    return decorate


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


@_section_of("2. Per-slot activity and specialisation", lambda trace: trace.memory is None,
             "not applicable: an LSTM has no memory slots (its state is one vector; see",
             "section 1).")
def render_slots(trace: Trace, result: dict, step_labels) -> str:
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


@_section_of("3. Gate openness per step", lambda trace: not trace.gates,
             "this memory has no gates (gate_style=None): M_t = M~_t.")
def render_gates(trace: Trace, result: dict, step_labels) -> str:
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
    return "\n".join([f"Gate activations in (0, 1): {what} (min..max in brackets):",
                      format_table(["step t", *names], rows), note(how)])


@_section_of("4. Attention entropy per head and attention to the input row",
             lambda trace: trace.attention is None,
             "attention does not exist for an LSTM: it has no memory slots and no attention,",
             "so no entropy and no heatmap.")
def render_attention(trace: Trace, result: dict, step_labels) -> str:
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


def describe_demo(rrnn, lstm) -> str:
    """The demo's title and its task and models lines (the models of
    :func:`relational_rnn.demo_training.build_demo_models`)."""
    K, F = DEMO_TASK["num_objects"], DEMO_TASK["num_features"]
    k, f = DEMO_TASK["active_objects"], DEMO_TASK["active_features"]
    return "\n".join([
        section("RelationalRNN memory-evolution demo"),
        header("task", f"N-th Farthest, {k} objects x {f} feature in the {K} x {F} layout "
                       f"(input width {nf.task_width(K, F)}), chance accuracy 1/{k} = "
                       f"{1 / k:.3f}"),
        header("models", f"{describe_model(rrnn)}\nLSTM of the same hidden size "
                         f"{lstm.hidden_size}; both with the read-out MLP "
                         f"{list(DEMO_SIZES['mlp_hidden'])}")])


def describe_checkpoint(label: str, model, info: dict) -> str:
    """The title and the checkpoint, model and task lines of a trained checkpoint's analysis.

    ``label``: the name of the model's kind; ``info``: the checkpoint's description (``kind``,
    ``path``, ``dtype``, ``step``, ``weights`` and ``run_config`` with ``num_objects`` and
    ``num_features``).
    """
    K, F = info["run_config"]["num_objects"], info["run_config"]["num_features"]
    weights = (" (weights averaged over the last steps)" if info.get("weights") == "averaged"
               else "")
    return "\n".join([
        section(f"{label} {'state' if info['kind'] == 'lstm' else 'memory'}-evolution analysis "
                f"of a trained checkpoint"),
        header("checkpoint", f"{info['path']}: {info['dtype']}, at training step "
                             f"{info['step']}{weights}"),
        header("model", describe_model(model)),
        header("task", f"N-th Farthest, {K} objects x {F} features, chance accuracy 1/{K} = "
                       f"{1 / K:.3f}")])


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
