"""Every notebook under ``notebooks/`` runs top to bottom without an error.

The notebooks are committed with their outputs; these tests re-execute fresh
copies in a kernel (the outputs on disk are left alone) and fail on the first
cell that raises.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# ipykernel's kernelspec; jupyter_client launches it with the interpreter that
# runs the tests (its "python" argv entry is replaced by sys.executable).
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 300


def execute(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel started in ``notebooks/``; raises on any error."""
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    return client.execute()


def test_kernel_runs_the_test_interpreter():
    notebook = new_notebook(cells=[new_code_cell("import sys; print(sys.executable)")])
    output = execute(notebook).cells[0].outputs[0]
    assert Path(output.text.strip()) == Path(sys.executable)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_executes_without_error(path: Path):
    notebook = nbformat.read(path, as_version=4)
    executed = execute(notebook)
    assert all(
        cell.get("outputs") is not None for cell in executed.cells if cell.cell_type == "code"
    )
