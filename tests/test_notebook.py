"""The walkthrough notebook: the committed copy matches its builder and holds its outputs, and
it executes top to bottom in a fresh kernel (needs the [notebook] extra)."""
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILDER = ROOT / "notebooks" / "build_walkthrough.py"
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"


def builder():
    spec = importlib.util.spec_from_file_location("build_walkthrough", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_notebook_is_its_builders_cells_with_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    cells = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    assert cells == [tuple(c) for c in builder().CELLS]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    # every cell shows something but the first, which only imports
    assert all(c["outputs"] for c in code[1:]), "a code cell without outputs: rebuild it"
    assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"])
    images = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) >= 2                  # the attention panels and the learning curves


def test_the_notebook_executes_top_to_bottom(tmp_path):
    pytest.importorskip("nbclient", reason="the [notebook] extra is not installed "
                                           "(pip install -e '.[notebook]')")
    pytest.importorskip("ipykernel", reason="the [notebook] extra is not installed")
    b = builder()
    nb = b.execute(b.build(), cwd=str(tmp_path))
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs)
    difference = float(re.search(r"difference to the library's step: (\S+)", text).group(1))
    assert difference < 1e-12
    assert "all passed: True" in text
    assert re.search(r"RMC\s+held-out accuracy 0\.\d+", text)
    assert not list(tmp_path.iterdir())      # it writes nothing where it runs
