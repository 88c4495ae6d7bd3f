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


def documented_example(tag: str) -> str:
    """The python block right after ``<!-- example: TAG -->`` in docs/notebook.md."""
    text = (NOTEBOOK.parents[1] / "docs" / "notebook.md").read_text()
    match = re.search(rf"<!-- example: {tag} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"no example tagged {tag!r} in docs/notebook.md"
    return match.group(1)


@pytest.mark.slow
def test_the_documented_examples_run(report_run: Path, capsys: pytest.CaptureFixture) -> None:
    """docs/notebook.md's two examples, in order, on the tiny run instead of the quickstart."""
    namespace: dict = {}
    for tag in ("open-run", "interventions"):
        code = documented_example(tag).replace('"runs/quickstart"', repr(str(report_run)))
        exec(compile(code, f"docs/notebook.md:{tag}", "exec"), namespace)
    printed = capsys.readouterr().out
    latent = namespace["latent"]
    assert latent.latent_class == "moe_only"
    assert latent.contexts_text() in printed
    effects = namespace["effects"]
    assert effects["moe_only"]["moe"].kl["all"] > 0
    assert namespace["steered"].shape[-1] == namespace["run"].model("moe").vocab_size
