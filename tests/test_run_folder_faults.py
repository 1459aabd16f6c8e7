"""Faults a long run meets, each through the public command line: what a crash, a kill, a full
disk or a lost file leaves in a run folder, and the outcome chosen for it (README, "Run
folders and faults"): an exact continuation, or one line, exit status 2 and the folder
byte-identical.  Every run here continues ``tests/data/run_v1`` (40 steps) to step 60."""
import errno
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from relational_rnn import checkpoint, cli
from relational_rnn.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RUN_V1 = ROOT / "tests" / "data" / "run_v1"
KINDS = ("rmc", "lstm", "rrnn")
QUIET = ["--no-progress", "--no-plots"]


def copy_run(tmp_path, name="run"):
    folder = tmp_path / name
    shutil.copytree(RUN_V1, folder)
    return folder


def snapshot(folder):
    """Every file of a folder (and its permissions) by relative path."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def parameters(folder):
    return {kind: load_checkpoint(folder / kind, averaged=False)[0].parameters()
            for kind in KINDS}


def assert_same_parameters(a, b):
    for kind in KINDS:
        for name, value in a[kind].items():
            np.testing.assert_array_equal(value, b[kind][name], err_msg=f"{kind} {name}")


def one_line_refusal(capsys, argv, folder, *needles):
    """The command exits 2 with one error line holding ``needles``; ``folder`` is unchanged."""
    before = snapshot(folder)
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nth_farthest.py: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert snapshot(folder) == before


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """run_v1 resumed to step 60 without any fault."""
    folder = copy_run(tmp_path_factory.mktemp("reference"))
    assert cli.main(["--resume", str(folder), "--steps", "60", *QUIET]) == 0
    return parameters(folder)


# 1. a torn metrics line ------------------------------------------------------------------------

def test_a_torn_last_metrics_line_is_dropped_with_a_notice_and_the_resume_is_exact(
        tmp_path, capsys, reference):
    run = copy_run(tmp_path)
    with open(run / "rmc" / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"event": "eval", "step": 4')           # what a crash leaves mid-append
    assert cli.main(["--resume", str(run), "--steps", "60", *QUIET]) == 0
    assert "torn last line" in capsys.readouterr().out
    assert_same_parameters(parameters(run), reference)
    text = (run / "rmc" / "metrics.jsonl").read_text()
    assert '"step": 4\n' not in text and text.endswith("\n")


def test_a_damaged_line_inside_the_metrics_is_refused_and_nothing_changes(tmp_path, capsys):
    run = copy_run(tmp_path)
    path = run / "lstm" / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:20] + "\n"
    path.write_text("".join(lines))
    one_line_refusal(capsys, ["--resume", run, "--steps", 60, *QUIET], run,
                     "line 2 is not valid JSON", "nothing was changed")
    out = tmp_path / "branch"
    one_line_refusal(capsys, ["--branch-from", run, "--out", out, "--lr", "1e-3", *QUIET], run,
                     "line 2 is not valid JSON")
    assert not out.exists() and not list(tmp_path.glob(".branch*"))


# 2. a branch killed half-way ---------------------------------------------------------------

KILLED_BRANCH = """
import os, signal, sys
import relational_rnn.cli_run as cli_run
from relational_rnn import cli

def killed(*args, **kwargs):        # SIGKILL after run_config.json, before the checkpoint copy
    os.kill(os.getpid(), signal.SIGKILL)

cli_run.relabel_checkpoint = killed
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_branch_killed_before_its_checkpoint_leaves_no_run_and_can_be_made_again(tmp_path):
    run = copy_run(tmp_path)
    out = tmp_path / "branch"
    argv = ["--branch-from", str(run), "--out", str(out), "--lr", "1e-3", "--steps", "50", *QUIET]
    proc = subprocess.run([sys.executable, "-c", KILLED_BRANCH, *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()                                  # no half-made branch in --out
    assert (tmp_path / ".branch.partial" / "run_config.json").exists()
    assert cli.main(argv) == 0                               # the same command again
    assert not (tmp_path / ".branch.partial").exists()
    for kind in KINDS:
        assert load_checkpoint(out / kind, averaged=False)[1]["step"] == 50


def test_an_unfinished_branch_of_older_code_is_refused_not_restarted(tmp_path, capsys):
    run = copy_run(tmp_path)
    out = tmp_path / "branch"
    assert cli.main(["--branch-from", str(run), "--out", str(out), "--lr", "1e-3", *QUIET]) == 0
    (out / "rrnn" / "checkpoint.npz").unlink()              # as a kill mid-branch left it
    capsys.readouterr()
    one_line_refusal(capsys, ["--resume", out, *QUIET], out,
                     "rrnn/checkpoint.npz is missing, so this branch was never completed")


# 3. a lost checkpoint ----------------------------------------------------------------------

def test_a_missing_checkpoint_with_history_is_refused(tmp_path, capsys):
    run = copy_run(tmp_path)
    (run / "rmc" / "checkpoint.npz").unlink()
    one_line_refusal(capsys, ["--resume", run, "--steps", 60, *QUIET], run,
                     "rmc/checkpoint.npz is missing", "records training up to step 40",
                     "restore the checkpoint")


# 4. a full disk or a read-only folder ------------------------------------------------------

@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   PermissionError(errno.EACCES, "Permission denied")])
def test_a_failed_save_says_what_is_intact_and_the_resume_is_exact(tmp_path, capsys,
                                                                    monkeypatch, error,
                                                                    reference):
    run = copy_run(tmp_path)
    real = checkpoint.atomic_write_bytes

    def failing(path, write):
        if os.path.basename(path) == "checkpoint.npz" and "rmc" in path and failing.saves:
            raise type(error)(error.errno, error.strerror, path)
        failing.saves += 1
        real(path, write)
    failing.saves = 0
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", failing)
    assert cli.main(["--resume", str(run), "--steps", "60", "--checkpoint-every", "10",
                     *QUIET]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"could not write {run / 'rmc' / 'checkpoint.npz'}: {error.strerror}" in err
    assert "rmc step 50" in err and f"--resume {run}" in err
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real)
    assert cli.main(["--resume", str(run), *QUIET]) == 0
    assert_same_parameters(parameters(run), reference)


# 5. temporaries left by a kill -------------------------------------------------------------

def test_stale_temporaries_are_removed_on_resume(tmp_path, capsys):
    run = copy_run(tmp_path)
    stale = run / "rmc" / ".checkpoint.npz.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert cli.main(["--resume", str(run), "--steps", "45", *QUIET]) == 0
    assert not stale.exists() and "removed rmc/.checkpoint.npz.abc123.tmp" in \
        capsys.readouterr().out


# 6. no pickles -----------------------------------------------------------------------------

def test_a_garbage_checkpoint_is_not_ours_and_nothing_loads_pickles(tmp_path, capsys):
    run = copy_run(tmp_path)
    (run / "lstm" / "checkpoint.npz").write_bytes(b"\x93NUMPY garbage " * 10)
    one_line_refusal(capsys, ["--resume", run, *QUIET], run,
                     "is not a checkpoint of this library")
    sources = [*ROOT.glob("*.py"), *(ROOT / "relational_rnn").glob("*.py")]
    assert sources and not [p for p in sources if "allow_pickle=True" in p.read_text()]


# 7. permissions ----------------------------------------------------------------------------

def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        run = copy_run(tmp_path)
        assert cli.main(["--resume", str(run), "--steps", "45", *QUIET]) == 0
    finally:
        os.umask(old)
    for name in ("run_config.json", "results.json", "rmc/checkpoint.npz", "rmc/metrics.jsonl"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name


# 8. values refused like the others ---------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["--workers", "99"], "--workers 99 exceeds the"),
    (["--curriculum", ""], "the curriculum is empty"),
])
def test_more_bad_values_are_refused_with_one_line(tmp_path, capsys, argv, needle):
    out = tmp_path / "new"
    assert cli.main(["--model", "lstm", "--steps", "5", "--out", str(out), *argv, *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and not out.exists()


# 9. the models --------------------------------------------------------------------------

def test_models_refuse_out_of_range_inputs_and_rows_of_width_one():
    from relational_memory import RMCClassifier
    model = RMCClassifier(11, 3, mem_slots=2, head_size=4, num_heads=2, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # no overflow warning first
        with pytest.raises(ValueError, match="beyond the range of float32"):
            model.forward(np.full((1, 3, 11), 1e39))
    with pytest.raises(ValueError, match="LayerNorm over one feature is constant"):
        RMCClassifier(11, 3, mem_slots=2, head_size=1, num_heads=1)
