"""The example notebook runs top to bottom on a tiny budget and produces the summary table.

The parameters cell (tagged ``parameters``) is followed by an injected cell that shrinks the
budget: 2 epochs, 2 seeds, on MNIST when $FREEZELAB_DATA has it, else on the bundled digits.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from conftest import data_root

NOTEBOOK = Path(__file__).parents[1] / "examples" / "alternating_freezing.ipynb"


def test_notebook_is_valid_and_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    for name in ("EPOCHS", "SEEDS", "DATASET", "RUNS_DIR"):
        assert f"{name} = " in code[0].source


@pytest.mark.slow
def test_notebook_runs_on_a_tiny_budget(tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    dataset = "mnist" if data_root() and (Path(data_root()) / "MNIST").is_dir() else "digits"
    params = f"EPOCHS = 2\nSEEDS = 2\nDATASET = {dataset!r}\nRUNS_DIR = {str(tmp_path / 'runs')!r}"
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(params, metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, tmp_path / "executed.ipynb")  # for a look when it fails

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join([o.get("text", "") for o in outputs] + [v for o in outputs for v in o.get("data", {}).values() if isinstance(v, str)])
    assert "final val acc (%)" in text and "Δ final val acc (pp)" in text and "alternate-epoch" in text  # the summary table
    assert "paired seeds" in text or "no spread to test" in text  # the conclusion read from the table
    report = tmp_path / "runs" / f"seed001_{dataset}_2ep" / "report"
    assert (report / "report.html").is_file() and (report / "accuracy.png").is_file()
    assert sum(o.output_type == "display_data" and "image/png" in o.data for o in outputs) == 2
