"""The notebook example (examples/explore_run.ipynb) executed on the tiny report run: it opens
the run, prints a latent's top contexts exactly as the explorer's card has them, ablates it and
prints the effect in each model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crossdiff.explore import format_contexts
from tests.report.test_open_run import explorer_files

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "explore_run.ipynb"


@pytest.mark.slow
def test_the_notebook_runs_and_prints_the_explorers_contexts(
    report_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")
    monkeypatch.setenv("CROSSDIFF_RUN", str(report_run))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )
    latent = int(re.search(r"^latent (\d+) \((\w+)\)", printed, re.M).group(1))
    _, cards = explorer_files(report_run)
    assert format_contexts(cards[latent]["contexts"]) in printed
    for model in ("dense", "moe"):
        assert re.search(rf"ablating latent {latent} in {model}: Δ loss [+-]\d", printed)
    displays = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type in ("display_data", "execute_result")
    ]
    assert any("ColoredTokens" in d["data"].get("text/html", "") for d in displays)
