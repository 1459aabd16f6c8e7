"""benchmarks/bench_step.py: the script runs and prints its tables (no timing assertions), its
FLOP counts and PyTorch twins are right, and float32 models stay float32."""
import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from relational_rnn.config import LATER_SIZE_FIELDS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_step.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)          # not __main__: parses no arguments, runs nothing
    return module


bench = _load_bench()


def _run(*args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _has_torch():
    return importlib.util.find_spec("torch") is not None


def test_quick_run_prints_the_table_and_the_scaling_figures():
    out = _run("--quick-run", "--scaling")
    assert "matmul peak float32" in out
    assert bench.HEADER in out
    for name in ("LSTM", "RMC", "RelationalRNN"):
        assert any(line.startswith(name) and " numpy " in line for line in out.splitlines())
    assert "RMC scaling" in out
    assert "WARNING" not in out                        # float32 runs hold float32 arrays only
    if _has_torch():
        assert "NumPy / PyTorch step time" in out
        assert any(" torch " in line for line in out.splitlines())
    else:
        assert "PyTorch comparison skipped" in out


def test_without_torch_the_comparison_is_reported_skipped(tmp_path):
    path = tmp_path / "figures.json"
    out = _run("--quick-run", "--no-torch", "--models", "rmc", "--dtypes", "float64",
               "--json", str(path))
    assert "PyTorch comparison skipped" in out
    assert " torch " not in out and "NumPy / PyTorch" not in out
    import json
    rows = json.loads(path.read_text())["rows"]
    assert [(r["model"], r["dtype"], r["impl"]) for r in rows] == [("rmc", "float64", "numpy")]
    assert rows[0]["step_ms"] > 0 and rows[0]["flops"]["step"] == 3 * rows[0]["flops"]["forward"]


def test_without_torch_installed_the_script_runs_and_says_so():
    # A meta-path finder makes "import torch" fail, as on a machine without PyTorch.
    hide_torch = (
        "import sys, runpy\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('No module named ' + repr(name))\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--quick-run', '--models', 'lstm', '--dtypes', 'float32']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", hide_torch], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PyTorch comparison skipped" in proc.stdout
    assert any(line.startswith("LSTM") and " numpy " in line for line in proc.stdout.splitlines())
    assert " torch " not in proc.stdout


def test_bad_arguments_are_refused():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--threads", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--threads" in proc.stderr


@pytest.mark.parametrize("model", bench.MODELS)
def test_float32_models_keep_every_cached_array_and_gradient_float32(model):
    x, y = bench.make_data(bench.TINY, np.float32)
    runner = bench.NumpyRunner(bench.build_numpy(model, bench.TINY, np.float32), x, y)
    mem = runner.memory()
    assert mem["dtypes"] == ["float32"]
    assert mem["cache_bytes"] > 0 and mem["peak_bytes"] >= mem["cache_bytes"]
    assert all(p.dtype == np.float32 for p in runner.model.parameters().values())


def test_the_models_are_the_registrys_kinds_built_by_the_registry():
    from relational_rnn.registry import KINDS, MODEL_KINDS
    assert sorted(bench.MODELS) == sorted(MODEL_KINDS) and bench.MODELS[0] == "lstm"
    for model in bench.MODELS:
        built = bench.build_numpy(model, bench.TINY, np.float32)
        assert type(built) is KINDS[model].classifier
        sizes = bench.model_sizes(model, bench.TINY)
        # the RelationalRNN's options are written only when set: the benchmark keeps its defaults
        assert set(sizes.to_json(KINDS[model].size_fields)) == \
            set(KINDS[model].size_fields) - set(LATER_SIZE_FIELDS)


def test_cache_nbytes_counts_each_buffer_once_and_skips_excluded_ones():
    a = np.zeros((4, 8))
    w = np.zeros(10)
    cache = {"a": a, "view": a[:, :2], "again": [a.T, (a.reshape(-1),)], "w": w}
    assert bench.cache_nbytes(cache) == a.nbytes + w.nbytes
    assert bench.cache_nbytes(cache, frozenset({id(w)})) == a.nbytes


# ---- benchmarks/profile_step.py: the profile of whole training steps ------------------------

PROFILE_SCRIPT = ROOT / "benchmarks" / "profile_step.py"


def _load_profile():
    if "profile_step" not in sys.modules:          # dataclasses look the module up there
        spec = importlib.util.spec_from_file_location("profile_step", PROFILE_SCRIPT)
        module = sys.modules["profile_step"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["profile_step"]


def test_profile_quick_run_prints_its_tables_and_the_parts_add_up(tmp_path):
    path = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, str(PROFILE_SCRIPT), "--quick-run", "--top", "5",
                           "--json", str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("functions by own time, NumPy builtins folded into their caller") == 4
    assert out.count("breakdown by part") == 5 and "matmul peak float32" in out
    import json
    cases = {c["case"]: c for c in json.loads(path.read_text())["cases"]}
    profile = _load_profile()
    assert list(cases) == list(profile.CASES)
    for name, case in cases.items():
        parts = case["parts_ms"]
        assert list(parts) == list(profile.PARTS)
        assert sum(parts.values()) == pytest.approx(case["profiled_ms"], rel=1e-6), name
        assert all(ms >= 0 for ms in parts.values()) and len(case["top"]) == 5
        assert parts["adam"] > 0 and parts["data"] > 0 and parts["loss"] > 0
        assert parts["other"] < 0.5 * case["profiled_ms"], name
    assert cases["rmc"]["parts_ms"]["attention"] > 0 and cases["rmc"]["parts_ms"]["lstm"] == 0
    assert cases["lstm"]["parts_ms"]["lstm"] > 0 and cases["lstm"]["parts_ms"]["attention"] == 0
    assert cases["rrnn"]["parts_ms"]["lstm"] > 0 and cases["rrnn"]["parts_ms"]["mlp"] > 0


def test_profile_attributes_every_builtin_to_its_callers_and_loses_no_time():
    profile = _load_profile()
    case = profile.build_case("rmc", quick=True)
    profile.train_step(case)
    graph = profile.CallGraph(profile.profile_steps(case, 2, profile.clock_of("wall")), 2)
    per_step = graph.total / 2
    assert sum(graph.breakdown().values()) == pytest.approx(per_step, rel=1e-9)
    folded = graph.folded()
    assert sum(folded.values()) == pytest.approx(per_step, rel=1e-9)
    # every key of the folded view is a function of the library, none a NumPy builtin
    assert all(graph.is_library(f) for f in folded)
    names = {graph.name(f) for f in folded}
    assert {"layers:layernorm_forward", "attention:MultiHeadAttention.backward",
            "optimizer:Adam.step"} <= names


# ---- with PyTorch: the twins of the benchmark and the FLOP counts ---------------------------

CFG = dict(bench.TINY, mem_slots=3, num_heads=2, head_size=5)


@pytest.mark.parametrize("model", bench.MODELS)
def test_flop_count_matches_torch_flop_counter(model):
    torch = pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    import torch_reference as tr
    x, _ = bench.make_data(CFG, np.float64)
    twin = bench.build_torch(model, bench.build_numpy(model, CFG, np.float64), tr)
    counter = FlopCounterMode(display=False)
    # The math attention kernel is made of matmuls the counter sees.
    with counter, sdpa_kernel(SDPBackend.MATH):
        twin(torch.from_numpy(x))
    assert bench.count_flops(model, CFG)["forward"] == counter.get_total_flops()


@pytest.mark.parametrize("model, options", [
    ("lstm", {}), ("rrnn", {}),
    ("rrnn", dict(memory_input="input_and_hidden", memory_readout="slots"))])
def test_torch_twin_matches_logits_and_every_gradient(model, options):
    torch = pytest.importorskip("torch")
    import torch_reference as tr
    from relational_rnn.registry import build_model
    sizes = dataclasses.replace(bench.model_sizes(model, CFG), **options)
    np_model = build_model(model, sizes, CFG["objects"], CFG["features"], dtype=np.float64,
                           rng=np.random.default_rng(3))
    rng = np.random.default_rng(4)
    for _, p, _ in np_model.named_parameters():     # move every weight off its initial value
        p += rng.standard_normal(p.shape) * 0.2
    x, y = bench.make_data(CFG, np.float64)
    twin = bench.build_torch(model, np_model, tr)

    logits, cache = np_model.forward(x)
    _, dlogits, _ = __import__("layers").softmax_cross_entropy(logits, y)
    np_model.backward(dlogits, cache)
    t_logits = twin(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(y)).backward()

    np.testing.assert_allclose(logits, t_logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    t_grads = tr.torch_grads_as_numpy(twin)
    grads = np_model.gradients()
    assert set(t_grads) == set(grads)
    for name, g in grads.items():
        np.testing.assert_allclose(g, t_grads[name], rtol=1e-8, atol=1e-11, err_msg=name)


def test_bench_workers_quick_run_times_each_process_count():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_workers.py"),
                           "--quick-run", "--workers", "1", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()
            if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"]
    assert rows[0][3] == "1.00x" and all(float(row[1]) > 0 for row in rows)


def test_bench_workers_times_the_heads_asked_for_and_refuses_them_for_the_lstm():
    script = str(ROOT / "benchmarks" / "bench_workers.py")
    small = ["--workers", "1", "--repeats", "1", "--warmup", "0", "--num-objects", "3",
             "--num-features", "2", "--mem-slots", "2", "--batch-size", "8"]
    proc = subprocess.run([sys.executable, script, *small, "--num-heads", "3", "--head-size",
                           "4"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "'num_heads': 3" in proc.stdout and "'head_size': 4" in proc.stdout
    proc = subprocess.run([sys.executable, script, "--model", "lstm", "--num-heads", "4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "apply to rmc and rrnn, not to lstm" in proc.stderr
