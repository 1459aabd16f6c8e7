"""The graders of exercises/ can fail: each passes its solution, fails the untouched exercise
(naming the function to write), and fails at least two bugs planted in a private copy of the
solution (the files are never edited)."""
import importlib
import importlib.util
import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ["exercise_01_attention", "exercise_02_initialisation", "exercise_03_gates",
             "exercise_04_rmc_step", "exercise_05_nth_farthest"]
FIRST_TODO = {"exercise_01_attention": "concat_rows_forward",
              "exercise_02_initialisation": "initial_memory",
              "exercise_03_gates": "gates_forward",
              "exercise_04_rmc_step": "rmc_block_forward",
              "exercise_05_nth_farthest": "nth_farthest_labels"}
_copies = itertools.count()


def exercise(name):
    return importlib.import_module(f"exercises.{name}")


def solution_copy(name):
    """A private copy of a solution module: its functions call each other through the copy's
    own globals, so replacing one of them there changes what the others call, and nothing else."""
    path = ROOT / "exercises" / "solutions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_planted_{name}_{next(_copies)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# Solutions pass, untouched exercises fail
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXERCISES)
def test_the_grader_passes_the_solution(name):
    results = exercise(name).grade(importlib.import_module(f"exercises.solutions.{name}"))
    assert len(results) >= 4
    failed = [r.line() for r in results if not r.passed]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("name", EXERCISES)
def test_the_grader_fails_the_untouched_exercise_and_names_the_function(name):
    module = exercise(name)
    results = module.grade(module)
    assert results and not any(r.passed for r in results)
    first = results[0]
    assert first.todo == f"{FIRST_TODO[name]}() in {name}.py"
    assert "NotImplementedError" in first.line() and FIRST_TODO[name] in first.line()
    assert first.line().startswith("FAIL")


@pytest.mark.parametrize("name", EXERCISES)
def test_the_command_line_fails_the_untouched_exercise_from_any_folder(name, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "exercises" / f"{name}.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"Next: implement {FIRST_TODO[name]}() in {name}.py" in proc.stdout
    assert "NotImplementedError" in proc.stdout and "PASS" not in proc.stdout


@pytest.mark.parametrize("name", ["exercise_01_attention", "exercise_05_nth_farthest"])
def test_the_command_line_passes_the_solution_from_any_folder(name, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "exercises" / f"{name}.py"),
                           "--solution"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and "Every part passes." in proc.stdout


# --------------------------------------------------------------------------------------------
# Planted bugs: each is (exercise, what it plants, the parts that must fail)
# --------------------------------------------------------------------------------------------


def unscaled_logits(mod):
    """attention without the 1/sqrt(key_size) scale on the logits."""
    orig = mod.attention_forward
    mod.attention_forward = lambda q, k, v: orig(q * math.sqrt(q.shape[-1]), k, v)


def swapped_dq_dk(mod):
    """dq and dk exchanged: the transposed logits product."""
    orig = mod.attention_backward

    def backward(dheads, cache):
        dq, dk, dv = orig(dheads, cache)
        return dk, dq, dv
    mod.attention_backward = backward


def softmax_without_its_sum(mod):
    """softmax backward keeps only the Jacobian's diagonal: dx = y * dy."""
    mod.softmax_backward = lambda dy, cache: dy * cache


def clipped_init(mod):
    """the truncated normal clipped at two stddev instead of drawn again."""
    mod.truncated_normal_init = lambda rng, fan_in, shape: np.clip(
        rng.standard_normal(size=shape), -2.0, 2.0) / math.sqrt(fan_in)


def uniform_init(mod):
    """the narrower uniform init in place of the truncated normal."""
    mod.truncated_normal_init = mod.uniform_init


def shared_initial_memory(mod):
    """a read-only view shared by every example of the batch."""
    mod.initial_memory = lambda B, N, d, dtype=np.float64: np.broadcast_to(
        np.eye(N, d, dtype=dtype), (B, N, d))


def shifted_identity(mod):
    """the identity one column to the right (off by one)."""
    mod.initial_memory = lambda B, N, d, dtype=np.float64: np.tile(
        np.eye(N, d, k=1, dtype=dtype), (B, 1, 1))


def swapped_gate_biases(mod):
    """input_bias in the forget gate and forget_bias in the input gate."""
    orig = mod.gates_forward
    mod.gates_forward = lambda xp, memory, params, ib=0.0, fb=1.0: orig(xp, memory, params,
                                                                         fb, ib)


def memory_gate_path_dropped(mod):
    """memory_update_backward forgets ``dmemory += dmemory_gates``."""
    def backward(dnew, cache):
        gates_cache, update_cache = cache
        dm_tilde, dmemory, di, df = mod.gated_update_backward(dnew, update_cache)
        dxp, _, grads = mod.gates_backward(di, df, gates_cache)
        return dm_tilde, dmemory, dxp, grads
    mod.memory_update_backward = backward


def memory_gate_not_summed(mod):
    """a per-slot gate's gradient left at the width d instead of summed over it."""
    mod._sum_to = lambda grad, shape: grad


def memory_stored_before_step(mod):
    """off by one in time: memories[:, t] holds the memory before step t."""
    orig = mod.rmc_sequence_forward

    def forward(x, memory0, params, config):
        memories, cache = orig(x, memory0, params, config)
        first = (mod.initial_memory(x.shape[0], memories.shape[2], memories.shape[3])
                 if memory0 is None else memory0)
        return np.concatenate([first[:, None], memories[:, :-1]], axis=1), cache
    mod.rmc_sequence_forward = forward


def grads_overwritten(mod):
    """rmc_step_backward sets grads[name] = ... instead of adding (+=)."""
    orig = mod.rmc_step_backward

    def backward(dnew, cache, grads):
        mine = {k: np.zeros_like(g) for k, g in grads.items()}
        out = orig(dnew, cache, mine)
        grads.update({k: g for k, g in mine.items() if np.any(g)})
        return out
    mod.rmc_step_backward = backward


def step_gate_biases_swapped(mod):
    """the step hands forget_bias to the input gate and input_bias to the forget gate."""
    orig = mod.memory_update_forward
    mod.memory_update_forward = lambda mt, memory, xp, params, ib, fb: orig(mt, memory, xp,
                                                                            params, fb, ib)


def rank_from_the_far_end(mod):
    """the rank counted from the farthest object (a descending sort)."""
    orig = mod.nth_farthest_labels
    mod.nth_farthest_labels = lambda v, m, n: orig(v, m, v.shape[1] - 1 - np.asarray(n))


def rows_not_shuffled(mod):
    """the rows shown in id order whatever the permutation."""
    orig = mod.encode_rows

    def encode(vectors, m, n, perm, dtype=np.float32):
        in_order = np.tile(np.arange(vectors.shape[1]), (vectors.shape[0], 1))
        return orig(vectors, m, n, in_order, dtype)
    mod.encode_rows = encode


def row_position_as_label(mod):
    """the label is the row that shows the answer, not the answer's id."""
    orig = mod.make_nth_farthest_batch

    def make(rng, batch_size, num_objects, num_features, dtype=np.float32):
        inputs, labels, n = orig(rng, batch_size, num_objects, num_features, dtype)
        ids = inputs[:, :, num_features:num_features + num_objects].argmax(axis=2)  # (B, K)
        rows = (ids == labels[:, None]).argmax(axis=1)
        return inputs, rows.astype(np.int64), n
    mod.make_nth_farthest_batch = make


PLANTED = [
    ("exercise_01_attention", unscaled_logits,
     ["attention_forward", "multihead_attention_forward"]),
    ("exercise_01_attention", swapped_dq_dk, ["attention_backward"]),
    ("exercise_01_attention", softmax_without_its_sum, ["softmax_backward"]),
    ("exercise_02_initialisation", clipped_init, ["truncated_normal_init: quantiles"]),
    ("exercise_02_initialisation", uniform_init, ["truncated_normal_init: quantiles"]),
    ("exercise_02_initialisation", shared_initial_memory, ["initial_memory: a writable"]),
    ("exercise_02_initialisation", shifted_identity, ["initial_memory: vs"]),
    ("exercise_03_gates", swapped_gate_biases, ["gates_forward", "memory_update_forward: M_new"]),
    ("exercise_03_gates", memory_gate_path_dropped, ["memory_update_backward"]),
    ("exercise_03_gates", memory_gate_not_summed, ["gated_update_backward"]),
    ("exercise_04_rmc_step", memory_stored_before_step, ["rmc_sequence_forward"]),
    ("exercise_04_rmc_step", grads_overwritten, ["rmc_step_backward", "rmc_sequence_backward"]),
    ("exercise_04_rmc_step", step_gate_biases_swapped, ["rmc_step_forward"]),
    ("exercise_05_nth_farthest", rank_from_the_far_end,
     ["nth_farthest_labels", "make_nth_farthest_batch: decoded", "make_batch, same seed"]),
    ("exercise_05_nth_farthest", rows_not_shuffled,
     ["encode_rows", "make_nth_farthest_batch: decoded", "make_batch, same seed"]),
    ("exercise_05_nth_farthest", row_position_as_label,
     ["make_nth_farthest_batch: decoded", "make_batch, same seed"]),
]


@pytest.mark.parametrize("name, plant, must_fail", PLANTED,
                         ids=[f"{n[9:11]}-{p.__name__}" for n, p, _ in PLANTED])
def test_the_grader_fails_a_planted_bug(name, plant, must_fail):
    module = solution_copy(name)
    plant(module)
    # ex. 4's parts cost a second or more each: grade only the parts the bug must fail there
    only = must_fail[0] if name == "exercise_04_rmc_step" and len(must_fail) == 1 else None
    results = exercise(name).grade(module, only=only)
    for text in must_fail:
        hits = [r for r in results if text in r.part]
        assert hits, f"no part named like {text!r}"
        for r in hits:
            assert not r.passed, f"the grader missed {plant.__doc__}: {r.line()}"
            assert r.line().startswith("FAIL") and r.hint and r.todo is None
            assert r.where, "a failure must say what it was measured on"
    assert not all(r.passed for r in results)


def test_every_exercise_has_at_least_two_planted_bugs():
    counts = {name: sum(n == name for n, _, _ in PLANTED) for name in EXERCISES}
    assert min(counts.values()) >= 2, counts
