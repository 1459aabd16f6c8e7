"""Data-parallel training over MPI (relational_rnn/mpi.py), proven under ``mpiexec -n 2``.

The MPI tests start ``mpiexec -n 2`` in a subprocess (the rank side: the command line, or
tests/mpi_ranks.py).  They are skipped, with the reason, only when mpi4py cannot be imported or
no ``mpiexec`` is found: ``pip install -e ".[mpi]"`` installs both (mpi4py and MPICH).  The
tests at the end need no MPI: without a launcher nothing changes and mpi4py is never imported.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from relational_rnn import mpi
from relational_rnn.checkpoint import load_checkpoint
from relational_rnn.parallel import batch_shards
from test_nth_farthest_training import (LSTM, QUIET, TINY, params_of, run_cli,
                                        strict_json_lines)

ROOT = Path(__file__).resolve().parent.parent
RANKS = str(ROOT / "tests" / "mpi_ranks.py")
SCRIPT = str(ROOT / "nth_farthest.py")
RUN = ["--model", "all", *TINY, "--dtype", "float64"]      # tiny models, float64
_at = TINY.index("--hidden-size")
RMC = ["--model", "rmc", *TINY[:_at], *TINY[_at + 2:]]      # the same for the RMC alone


def _find_mpiexec() -> str | None:
    """The mpiexec beside this Python (pip's mpich puts it there), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _mpi4py_problem() -> str | None:
    """Why ``from mpi4py import MPI`` fails (tried in a subprocess: importing it initialises
    MPI), or None."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed"
    proc = subprocess.run([sys.executable, "-c", "from mpi4py import MPI"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    return None if proc.returncode == 0 else \
        f"mpi4py cannot be imported: {proc.stderr.strip().splitlines()[-1:]}"


MPIEXEC = _find_mpiexec()
MPI4PY_PROBLEM = _mpi4py_problem()
HAS_MPI4PY = MPI4PY_PROBLEM is None
needs_mpi = pytest.mark.skipif(
    not (HAS_MPI4PY and MPIEXEC),
    reason="MPI tests need mpi4py and mpiexec: pip install -e \".[mpi]\" ("
           + ", ".join(why for why in (MPI4PY_PROBLEM, None if MPIEXEC else "no mpiexec found")
                       if why) + ")")


def mpiexec(*args, timeout: float = 60, env=None) -> subprocess.CompletedProcess:
    """``mpiexec -n 2 python ARGS`` from the checkout: the finished process (out + err)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RELATIONAL_RNN_MPI")}
    environ.update(env or {})
    return subprocess.run([MPIEXEC, "-n", "2", sys.executable, *map(str, args)], cwd=ROOT,
                          env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def checkpoint_contents(folder: Path) -> dict:
    """Every array of a checkpoint and its meta without the wall time and the command."""
    with np.load(folder / "checkpoint.npz", allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "meta"}
        meta = json.loads(str(archive["meta"][()]))
    meta.pop("wall_time")
    meta["run_config"].pop("commands")
    return {"arrays": arrays, "meta": meta}


def metrics_without_clock(folder: Path) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "wall_time"}
            for e in strict_json_lines(folder / "metrics.jsonl")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two identical MPI runs (12 steps, every model kind), the same with --workers 2, and
    one process over 20 steps."""
    base = tmp_path_factory.mktemp("mpi")
    if HAS_MPI4PY and MPIEXEC:
        for name in ("a", "b"):
            ok(mpiexec(SCRIPT, *RUN, "--steps", 12, "--out", base / name))
    assert run_cli([*RUN, "--steps", 12, "--workers", 2, "--out", base / "workers"]) == 0
    assert run_cli([*RUN, "--steps", 20, "--out", base / "one"]) == 0
    return base


@needs_mpi
def test_one_step_of_each_model_under_mpi_equals_the_one_process_step(tmp_path):
    ok(mpiexec(RANKS, "step", tmp_path))
    lines = [r for rank in (0, 1) for r in json.loads((tmp_path / f"rank{rank}.json").read_text())]
    assert sorted((r["kind"], r["rank"]) for r in lines) == [
        (k, r) for k in ("lstm", "rmc", "rrnn") for r in (0, 1)]
    for r in lines:
        assert r["loss"] <= 1e-12 and r["grad"] <= 1e-12 and r["correct"], r
        # Adam's first step is lr * g / (|g| + eps), lr/eps-Lipschitz in g: a rounding-level
        # gradient (an exact 0) may move by up to lr/eps times its rounding difference.
        assert r["param"] <= 1e-12 + r["lr"] / r["eps"] * r["grad"], r
        assert r["moved"] > 1e-3                        # the step did move the parameters
    for kind in ("lstm", "rmc", "rrnn"):                # both ranks hold the same replica
        assert len({r["digest"] for r in lines if r["kind"] == kind}) == 1


@needs_mpi
def test_two_mpi_runs_are_bit_identical_and_equal_the_two_worker_run(runs):
    for kind in ("rmc", "lstm", "rrnn"):
        a, b = checkpoint_contents(runs / "a" / kind), checkpoint_contents(runs / "b" / kind)
        assert a["meta"] == b["meta"] and a["meta"]["step"] == 12
        assert a["arrays"].keys() == b["arrays"].keys()
        for name in a["arrays"]:
            np.testing.assert_array_equal(a["arrays"][name], b["arrays"][name], err_msg=name)
        assert metrics_without_clock(runs / "a" / kind) == metrics_without_clock(runs / "b" / kind)
        # Two ranks cut and weight the batch as two workers do: the same bits.
        w = checkpoint_contents(runs / "workers" / kind)
        for name in a["arrays"]:
            np.testing.assert_array_equal(a["arrays"][name], w["arrays"][name], err_msg=name)
        assert metrics_without_clock(runs / "a" / kind) == \
            metrics_without_clock(runs / "workers" / kind)
    config = json.loads((runs / "a" / "run_config.json").read_text())
    assert config["commands"][0].startswith("mpiexec -n 2 python nth_farthest.py")


@needs_mpi
def test_an_mpi_run_resumes_and_evaluates_without_mpi_and_branches_under_mpi(runs, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(runs / "a", resumed)
    assert run_cli(["--resume", resumed, "--steps", 20, *QUIET]) == 0        # no MPI
    for kind in ("rmc", "lstm", "rrnn"):
        p_one, info_one = params_of(runs / "one" / kind)
        p_mpi, info_mpi = params_of(resumed / kind)
        assert info_one["step"] == info_mpi["step"] == 20
        for name in p_one:        # float rounding only (atol: Adam scales up an exact 0's noise)
            np.testing.assert_allclose(p_mpi[name], p_one[name], rtol=1e-9, atol=1e-9,
                                       err_msg=f"{kind} {name}")
    assert run_cli(["--evaluate", runs / "a"]) == 0                          # no MPI
    out = ok(mpiexec(SCRIPT, "--evaluate", runs / "a", "--model", "rmc"))    # MPI: rank 0
    assert out.count("evaluating ") == 1 and "rmc" in out
    branch = tmp_path / "branch"
    out = ok(mpiexec(SCRIPT, "--branch-from", runs / "b", "--out", branch, "--lr", "5e-4",
                     "--steps", 16, "--model", "rmc", *QUIET))
    assert load_checkpoint(branch / "rmc")[1]["step"] == 16
    assert out.count("branched from") == 1                # rank 0 alone prints


@needs_mpi
def test_ctrl_c_stops_every_rank_after_the_same_step_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RELATIONAL_RNN_MPI")}
    argv = [SCRIPT, *RMC, "--steps", 100000, "--out", out]
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, *map(str, argv)], cwd=ROOT,
                            env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = out / "rmc" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and (
                not metrics.exists() or metrics.read_text().count('"eval"') < 3):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)                   # mpiexec passes it to every rank
        text, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, text
    stop = strict_json_lines(metrics)[-1]
    assert stop["event"] == "stop" and stop["reason"] == "interrupted"
    assert load_checkpoint(out / "rmc")[1]["step"] == stop["step"] > 0
    ok(mpiexec(SCRIPT, "--resume", out, "--steps", stop["step"] + 3, *QUIET))   # under MPI
    assert load_checkpoint(out / "rmc")[1]["step"] == stop["step"] + 3


@needs_mpi
def test_rank_0_s_time_budget_stops_every_rank(tmp_path):
    text = ok(mpiexec(SCRIPT, "--model", "lstm", *LSTM, "--steps", 100000,
                      "--time-budget", "1", "--out", tmp_path / "run"))
    assert text.count("time budget of 1 s reached") == 1
    stop = strict_json_lines(tmp_path / "run" / "lstm" / "metrics.jsonl")[-1]
    assert stop["reason"] == "time_budget"
    assert load_checkpoint(tmp_path / "run" / "lstm")[1]["step"] == stop["step"]


@needs_mpi
@pytest.mark.parametrize("mode, message", [
    ("nan", "training stopped at step 13: the training loss is nan"),
    ("raise", "rank 1 of 2: RuntimeError: a fault injected on rank 1; stopping every rank"),
    ("hang", "rank 0 of 2: no answer from the other ranks for 3 s while summing the gradients"),
    ("kill", "Killed (signal 9)"),                        # said by the launcher (MPICH's)
])
def test_a_failing_rank_stops_every_rank_in_bounded_time_and_the_checkpoint_stays(
        tmp_path, mode, message):
    out = tmp_path / "run"
    start = time.monotonic()
    proc = mpiexec(RANKS, "fault", mode, 13, "--", *RMC, "--steps", 40,
                   "--out", out, env={"RELATIONAL_RNN_MPI_TIMEOUT": "3"}, timeout=45)
    assert time.monotonic() - start < 30
    assert proc.returncode != 0 and message in proc.stdout, proc.stdout
    model, info = load_checkpoint(out / "rmc", averaged=False)
    assert info["step"] == 10                              # the last one, intact
    assert not [p for p in (out / "rmc").iterdir() if p.name.endswith(".tmp")]
    assert run_cli(["--resume", out, "--steps", 12, *QUIET]) == 0


@needs_mpi
def test_workers_under_mpiexec_are_refused_once():
    proc = mpiexec(SCRIPT, *RMC, "--workers", 2, "--out", "/nonexistent/x")
    assert proc.returncode == 2
    assert proc.stdout.count("--workers 2 and mpiexec both share each batch") == 1


def test_the_mpi_benchmark_measures_and_projects(tmp_path):
    """benchmarks/bench_mpi.py --quick-run: its tables and figure (with MPI when it is there)."""
    figure, data = tmp_path / "scaling.png", tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_mpi.py"),
                           "--quick-run", "--figure", str(figure), "--json", str(data)],
                          cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Projection, RMC 8x16" in proc.stdout and figure.stat().st_size > 10_000
    result = json.loads(data.read_text())
    rows = result["projection"]["rows"]
    assert [r["P"] for r in rows] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert "strong_ms" not in rows[-1]                 # 256 ranks cannot share 128 examples
    assert rows[0]["weak_eff"] == pytest.approx(1.0) and rows[0]["strong_eff"] == pytest.approx(1)
    assert (result["mpi"] is not None) == bool(HAS_MPI4PY and MPIEXEC)


def test_the_alpha_beta_model_of_the_ring_allreduce():
    bench = importlib.util.module_from_spec(importlib.util.spec_from_file_location(
        "bench_mpi", ROOT / "benchmarks" / "bench_mpi.py"))
    bench.__spec__.loader.exec_module(bench)
    # 2 ranks, 25 MB at 200 Gb/s (25 GB/s) and 1 us: 2 * 1/2 * 1 ms + 2 * 1 us
    assert bench.allreduce_ms(2, 25_000_000, 200.0, 1.0) == pytest.approx(1.002)
    assert bench.allreduce_ms(1, 25_000_000, 200.0, 1.0) == 0.0
    assert bench.fit_line({1: 3.0, 2: 5.0, 4: 9.0}) == pytest.approx((1.0, 2.0))


# -- no MPI: nothing changes ---------------------------------------------------------------

def test_the_launcher_is_recognised_by_its_environment_and_the_switch_wins():
    assert mpi.wanted({}) == (False, "no MPI launcher")
    assert mpi.wanted({"PMI_SIZE": "2"})[0] and mpi.wanted({"OMPI_COMM_WORLD_SIZE": "4"})[0]
    assert not mpi.wanted({"PMI_SIZE": "1"})[0]           # one rank: one process
    assert not mpi.wanted({"PMI_SIZE": "4", "RELATIONAL_RNN_MPI": "0"})[0]
    assert mpi.wanted({"RELATIONAL_RNN_MPI": "1"})[0]
    assert mpi.connect({"RELATIONAL_RNN_MPI": "0", "PMI_SIZE": "8"}) is None
    with pytest.raises(mpi.MPIError, match="RELATIONAL_RNN_MPI must be 1"):
        mpi.wanted({"RELATIONAL_RNN_MPI": "maybe"})
    with pytest.raises(mpi.MPIError, match="PMI_SIZE='two' is not a process count"):
        mpi.wanted({"PMI_SIZE": "two"})
    with pytest.raises(mpi.MPIError, match="RELATIONAL_RNN_MPI_TIMEOUT must be"):
        mpi.connect({"PMI_SIZE": "2", "RELATIONAL_RNN_MPI_TIMEOUT": "-1"})


def test_the_batch_is_cut_in_one_place_into_shards_weighted_by_their_size():
    for batch, parts in [(7, 2), (128, 3), (5, 5), (128, 128)]:
        shards = batch_shards(batch, parts)
        assert shards[0].start == 0 and shards[-1].stop == batch
        assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
        assert max(s.stop - s.start for s in shards) - min(s.stop - s.start for s in shards) <= 1
        assert sum(s.weight for s in shards) == pytest.approx(1.0, abs=1e-15)
    assert [(s.start, s.stop) for s in batch_shards(7, 2)] == [(0, 4), (4, 7)]
    with pytest.raises(ValueError, match="exceeds the batch size 2"):
        batch_shards(2, 3)


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("RELATIONAL_RNN_MPI", *mpi.SIZE_VARIABLES))}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_without_a_launcher_a_run_never_imports_mpi4py(tmp_path):
    code = ("import sys\nfrom relational_rnn import cli\n"
            f"status = cli.main({[str(a) for a in ['--model', 'lstm', *LSTM, '--steps', 2]]!r}"
            f" + ['--out', {str(tmp_path / 'run')!r}])\n"
            "print('status', status, 'mpi4py imported:', 'mpi4py' in sys.modules)")
    proc = _python(code, {})
    assert "status 0 mpi4py imported: False" in proc.stdout, proc.stdout + proc.stderr


def test_a_launcher_without_mpi4py_is_a_clear_error(tmp_path):
    code = ("import sys\n"
            "class NoMPI:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'mpi4py':\n"
            "            raise ImportError('No module named mpi4py')\n"
            "sys.meta_path.insert(0, NoMPI())\n"
            "from relational_rnn import cli\n"
            f"sys.exit(cli.main(['--out', {str(tmp_path / 'run')!r}]))\n")
    proc = _python(code, {"PMI_SIZE": "2"})
    assert proc.returncode == 2
    assert "started by an MPI launcher (PMI_SIZE=2), but mpi4py cannot be imported" \
        in proc.stderr and 'pip install -e ".[mpi]"' in proc.stderr
    assert not (tmp_path / "run").exists()
