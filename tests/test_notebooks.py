"""Every notebook runs top to bottom in smoke mode, and is stored without outputs.

Each notebook's parameters cell reads ``SMOKE = os.environ.get("MSAM_SMOKE", "0") == "1"``;
smoke mode shrinks data and epochs so the whole notebook runs in seconds.  Notebooks run in a
temporary working directory, so the runs they write land there.  There is no allow-list:
every ``notebooks/*.ipynb`` must run.  An executed notebook, saved with its outputs and widget
state as nbclient leaves it, must stay under ``MAX_EXECUTED_BYTES``: figures are plotly JSON drawn
by the front end's plotly, never a copy of plotly.js per figure.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_EXECUTED_BYTES = 3_000_000
EXPECTED = (
    "01_quickstart.ipynb",
    "02_imbalance_and_msam.ipynb",
    "03_shapley_dynamics.ipynb",
    "04_landscape_and_sharpness.ipynb",
    "05_real_data.ipynb",
    "06_live_dashboard.ipynb",
    "07_bring_your_own_model.ipynb",
)


def _strip_module():
    spec = importlib.util.spec_from_file_location(
        "strip_notebooks", ROOT / "tools/strip_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_teaching_notebook_is_there():
    names = [p.name for p in NOTEBOOKS]
    assert [n for n in EXPECTED if n not in names] == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    found = _strip_module().problems(nb)
    assert found == [], f"{path.name}: {found}; run `python tools/strip_notebooks.py`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_a_smoke_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged"
    assert 'os.environ.get("MSAM_SMOKE"' in code[0].source


def test_strip_removes_outputs_and_widget_state():
    module = _strip_module()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "2"})]
    cell.execution_count = 3
    nb.cells = [cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    assert len(module.problems(nb)) == 3
    module.strip(nb)
    assert module.problems(nb) == []
    assert nb.cells[0].outputs == [] and nb.cells[0].execution_count is None


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MSAM_SMOKE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert errors == []
    saved = tmp_path / path.name
    nbformat.write(nb, saved)  # outputs and, in its metadata, the state of every widget
    size = saved.stat().st_size
    widgets = len(json.dumps(nb.metadata.get("widgets", {})))
    assert size <= MAX_EXECUTED_BYTES, (
        f"{path.name} executed is {size / 1e6:.1f} MB (widget state {widgets / 1e6:.1f} MB); "
        f"the limit is {MAX_EXECUTED_BYTES / 1e6:.0f} MB"
    )
