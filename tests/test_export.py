"""Runs that outlive their machine (relational_rnn.export): a whole run copied into another
folder resumes exactly, and exported weights load, evaluate and refuse to resume."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from relational_rnn import cli, export
from relational_rnn.checkpoint import load_checkpoint

RUN_V1 = Path(__file__).parent / "data" / "run_v1"
KINDS = ("rmc", "lstm", "rrnn")
QUIET = ["--no-progress", "--no-plots"]


@pytest.fixture
def scratch_run(tmp_path):
    src = tmp_path / "scratch" / "somewhere" / "run"
    shutil.copytree(RUN_V1, src)
    return src


def test_a_copied_run_resumes_exactly_and_carries_no_path_of_its_source(scratch_run, tmp_path):
    assert cli.main(["--resume", str(scratch_run), "--steps", "45", *QUIET]) == 0
    assert str(scratch_run) in (scratch_run / "run_config.json").read_text()
    dst = tmp_path / "repo" / "experiments" / "run"
    export.copy_run(str(scratch_run), str(dst))
    for path in dst.rglob("*"):
        if path.is_file():
            assert str(scratch_run).encode() not in path.read_bytes(), path
    for kind in KINDS:               # the checkpoints' meta is UTF-32 text: read it back
        meta = json.dumps(load_checkpoint(dst / kind)[1]["run_config"])
        assert str(scratch_run) not in meta and str(dst) in meta
    for folder in (scratch_run, dst):
        assert cli.main(["--resume", str(folder), "--steps", "50", *QUIET]) == 0
    for kind in KINDS:
        a = load_checkpoint(scratch_run / kind, averaged=False)[0].parameters()
        b = load_checkpoint(dst / kind, averaged=False)[0].parameters()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_exported_weights_are_the_averaged_ones_evaluate_and_cannot_resume(scratch_run, tmp_path,
                                                                         capsys):
    dst = tmp_path / "shipped"
    assert export.main(["weights", str(scratch_run), str(dst)]) == 0
    for kind in KINDS:
        shipped, info = load_checkpoint(dst / kind)
        averaged, _ = load_checkpoint(scratch_run / kind)
        assert info["weights"] == "averaged" and info["weights_only"] == "averaged"
        for name, value in averaged.parameters().items():
            np.testing.assert_array_equal(shipped.parameters()[name], value)
        assert (dst / kind / "checkpoint.npz").stat().st_size < \
            (scratch_run / kind / "checkpoint.npz").stat().st_size / 2
    capsys.readouterr()
    assert cli.main(["--evaluate", str(dst)]) == 0
    assert cli.main(["--evaluate", str(scratch_run)]) == 0
    out = capsys.readouterr().out.splitlines()
    shipped_rows = [line.split()[4] for line in out if line.split()[3:4] == ["averaged"]]
    assert shipped_rows[:3] == shipped_rows[3:]           # the same figures as the run's own
    assert cli.main(["--resume", str(dst), "--steps", "50", *QUIET]) == 2
    assert "exported weights only" in capsys.readouterr().err


def test_export_refuses_a_target_that_holds_a_run(scratch_run, capsys):
    assert export.main(["weights", str(scratch_run), str(scratch_run)]) == 2
    assert "holds a run" in capsys.readouterr().err


def test_a_run_copied_by_hand_then_exported_names_one_folder_in_every_line(scratch_run, tmp_path):
    copy = tmp_path / "elsewhere" / "copy"          # a plain copy keeps the original's history
    shutil.copytree(scratch_run, copy)
    assert cli.main(["--resume", str(scratch_run), "--steps", "45", *QUIET]) == 0
    shutil.rmtree(copy)
    shutil.copytree(scratch_run, copy)
    assert cli.main(["--resume", str(copy), "--steps", "50", *QUIET]) == 0
    history = json.loads((copy / "run_config.json").read_text())["commands"]
    assert any(str(scratch_run) in line for line in history)
    for what, dst in (("copy-run", tmp_path / "repo" / "run"), ("weights", tmp_path / "shipped")):
        assert export.main([what, str(copy), str(dst)]) == 0
        lines = json.loads((dst / "run_config.json").read_text())["commands"]
        assert len(lines) == len(history)
        for line in lines:
            assert str(tmp_path) not in line.replace(str(dst), "DST"), line
            words = line.split()
            folders = [words[i + 1] for i, w in enumerate(words) if w in ("--out", "--resume")]
            assert folders and set(folders) == {str(dst)}, line


def test_an_exported_branch_names_its_parent_by_name_only(scratch_run, tmp_path):
    branch = tmp_path / "scratch" / "branch"
    assert cli.main(["--branch-from", str(scratch_run), "--out", str(branch), "--steps", "45",
                     "--lr", "1e-3", *QUIET]) == 0
    assert str(scratch_run) in (branch / "run_config.json").read_text()
    dst = tmp_path / "repo" / "branch"
    export.copy_run(str(branch), str(dst))
    text = (dst / "run_config.json").read_text()
    assert str(tmp_path) not in text.replace(str(dst), "DST")
    assert f"--branch-from {scratch_run.name} --out {dst}" in text
    assert json.loads(text)["branched_from"]["run"] == scratch_run.name
