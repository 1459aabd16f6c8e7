"""The distribution: what a non-editable install puts into site-packages, and its commands."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    """The file names in the wheel that ``pip install .`` would install."""
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith("entry_points.txt"))
    return names, entry_points


def test_the_wheel_holds_the_modules_and_one_application_package(wheel_names):
    names, _ = wheel_names
    top = {n.split("/")[0] for n in names if ".dist-info" not in n}
    assert top == {"attention.py", "autograd_checks.py", "layers.py", "lstm_baseline.py",
                   "nth_farthest.py", "optimizer.py", "relational_memory.py",
                   "relational_rnn_cell.py", "relational_rnn"}
    for absent in ("training.py", "plots.py", "report.py", "parallel.py",
                   "test_relational_rnn_demo.py"):
        assert absent not in top
    assert "relational_rnn/cli.py" in names and "relational_rnn/__main__.py" in names


def test_the_wheel_declares_both_commands(wheel_names):
    _, entry_points = wheel_names
    assert "nth-farthest = relational_rnn.cli:main" in entry_points
    assert "rrnn-gradcheck = autograd_checks:main" in entry_points


@pytest.mark.parametrize("command", [["nth-farthest", "--help"], ["rrnn-gradcheck", "--list"]])
def test_the_installed_commands_run_from_any_folder(command, tmp_path):
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not on PATH: install the package (pip install -e .)")
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ("N-th Farthest" in proc.stdout) if command[0] == "nth-farthest" \
        else ("LSTM" in proc.stdout)
