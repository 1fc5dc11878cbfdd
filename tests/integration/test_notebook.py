"""examples/quickstart.ipynb runs top to bottom on the local defaults (nbclient, a real kernel), so it never rots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.servers import free_port

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"
SHIPYARD = str(Path(sys.executable).with_name("shipyard"))


def test_quickstart_notebook_executes_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SHIPYARD_INFERENCE_PORT", "SHIPYARD_PREFECT_PORT", "SHIPYARD_MLFLOW_UI_PORT"):
        monkeypatch.setenv(name, str(free_port()))  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    try:
        NotebookClient(notebook, timeout=1200, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        subprocess.run([SHIPYARD, "down"], timeout=120, check=False)  # the Prefect and inference servers it kept
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert "better:" in str(outputs[-1].get("data", {}).get("text/plain", ""))
    assert (tmp_path / ".shipyard" / "mlflow.db").exists()  # it ran on the local defaults, in its own directory
