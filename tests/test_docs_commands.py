"""Every shell command in docs/ either runs (here, at a tiny setting) or says why it cannot.

The commands are read from the pages' fenced ``bash`` blocks (continuation lines joined, trailing
comments cut). Those meant to run are run in page order in one working directory, with the
flags of :data:`TINY` appended (the sizes only: every flag the page gives is kept; argparse takes
the last value of a repeated flag) and ``RUN`` standing for a copy of the run made by the pages
before. The others are listed in :data:`NOT_RUN_HERE` with the reason and, where there is one,
the test that runs them as written. A new command in docs/ fails
:func:`test_every_documented_command_is_run_or_says_why_not` until it is given one or the other.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("quickstart.md", "pipeline.md", "models.md", "store.md", "scaling.md", "plugins.md")
"""The pages in the order their commands are run (later pages use the run the first makes)."""

TINY_MODEL = "{ n_layers = 3, d_model = 32, n_heads = 2, d_mlp = 64 }"
TINY_MOE = "{ n_layers = 3, d_model = 32, n_heads = 2, d_mlp = 64, num_experts = 4 }"
TINY_TRAIN = "{ tokens = 8_000, batch_size = 16, eval_every = 0, checkpoint_every = 0 }"
TINY_CORPUS = ["--max-documents-per-domain", "12", "--vocab-size", "512", "--context-length", "32"]
TINY = {
    "crossdiff corpus build": TINY_CORPUS,
    "crossdiff train-model": ["--tokens", "4096", "--no-progress"],
    "crossdiff harvest": ["--max-sequences", "16", "--no-progress"],
    "crossdiff run": [
        f"--set={setting}"
        for setting in (
            "corpus.max_documents_per_domain=12", "corpus.vocab_size=512",
            "corpus.context_length=32", f"models.dense.model={TINY_MODEL}",
            f"models.moe.model={TINY_MOE}", f"models.dense.train={TINY_TRAIN}",
            f"models.moe.train={TINY_TRAIN}", "harvest.train_sequences=96",
            "harvest.validation_sequences=32", "harvest.shard_sequences=32",
            "harvest.batch_sequences=16", "crosscoder.expansion=4", "crosscoder.k=6",
            "crosscoder.n_shared=8", "crosscoder.steps=30", "crosscoder.batch_size=128",
            "crosscoder.ce_sequences=4", "crosscoder.dead_tokens=5000",
        )
    ]
    + ["--no-progress"],
}  # fmt: skip
"""Flags appended to a command (by its first words) so that it runs in seconds."""

NOT_RUN_HERE = {
    "python3 -m venv": "creates an environment: the README's set-up command, which CI runs",
    "pip install": "installs packages: the README's set-up command, which CI runs",
    "torchrun": "several processes, some on 8 GPUs: torchrun is tested at 2 CPU processes in "
    "tests/crosscoder/test_train.py, test_sharded.py, tests/models/test_ddp.py and "
    "tests/store/test_distributed.py",
    "--device cuda": "needs a GPU: benchmarks/gpu_check.py runs the CUDA paths on one",
    "gpu_check.py": "needs a GPU; tests/test_gpu_check.py runs its --device cpu mode",
    "examples/paper.toml": "reads the hub and needs GPUs: "
    "tests/pipeline/test_paper_recipe.py runs the offline command as written on stand-ins",
    "--preset paper": "the paper-scale model (GPU hours)",
    "--config corpus.toml": "the paper-scale corpus (reads the hub)",
    "hf:roneneldan/TinyStories": "reads the Hugging Face hub",
    "examples/hf_pair.py": "tests/pipeline/test_hf_pair.py runs it (smaller)",
    "--domain haiku": "needs the haiku plugin installed: tests/test_plugin_distribution.py "
    "installs it from the page and runs these commands as written",
    "crossdiff plugins": "listed with the haiku plugin installed: "
    "tests/test_plugin_distribution.py runs it",
    "characters_per_domain": "the haiku plugin's analysis: tests/test_plugin_distribution.py",
    "runs/tinymoe": "the adapter tutorial: tests/test_plugin_distribution.py runs it as written",
    "time crossdiff": "the commands above it, timed for the table beside them",
    "bench_verify.py": "a benchmark that harvests a store (minutes); tests/test_nothing_silent.py "
    "tests the verification it times",
    "jupyter-execute examples/explore_run.ipynb": "needs a finished quickstart run: "
    "tests/report/test_notebook.py executes the notebook on a tiny run",
    "analyze interventions --run runs/quickstart": "needs a finished quickstart run: "
    "tests/test_interventions.py runs the analysis on a tiny run",
}
"""A substring of a command -> why it is not run by this module (and what runs it)."""


def doc_commands(page: str) -> list[str]:
    """The commands of ``page``'s fenced bash blocks, continuation lines joined, comments cut."""
    text = (ROOT / "docs" / page).read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#", line, maxsplit=1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def all_commands() -> list[tuple[str, str]]:
    """``(page, command)`` for every page under docs/ (the ordered pages first)."""
    pages = list(PAGES) + sorted(
        p.name for p in (ROOT / "docs").glob("*.md") if p.name not in PAGES
    )
    return [(page, command) for page in pages for command in doc_commands(page)]


def reason_not_run(command: str) -> str | None:
    """Why ``command`` is not run here, or None if it is."""
    return next((why for key, why in NOT_RUN_HERE.items() if key in command), None)


def runnable(command: str) -> bool:
    """A command this module knows how to run at a tiny setting."""
    return any(command.startswith(prefix) for prefix in TINY)


def test_every_documented_command_is_run_or_says_why_not() -> None:
    commands = all_commands()
    assert len(commands) > 20  # the extraction finds the pages' commands
    unhandled = [(page, c) for page, c in commands if reason_not_run(c) is None and not runnable(c)]
    assert unhandled == []
    assert sum(reason_not_run(c) is None for _, c in commands) >= 6


@pytest.mark.slow
def test_the_documented_commands_run_at_a_tiny_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossdiff.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    ran = []
    for page, command in all_commands():
        if reason_not_run(command) is not None:
            continue
        if "RUN/" in command and not (tmp_path / "RUN").exists():
            (tmp_path / "RUN").mkdir()  # a copy of the run the pages before made
            for part in ("corpus", "models"):
                shutil.copytree(tmp_path / "runs/quickstart" / part, tmp_path / "RUN" / part)
        words = shlex.split(command)
        prefix = next(p for p in TINY if command.startswith(p))
        assert words[0] == "crossdiff", (page, command)
        code = main([*words[1:], *TINY[prefix]])
        assert code == 0, (page, command)
        ran.append(command)
    assert any(c.startswith("crossdiff run examples/quickstart.toml") for c in ran)
    assert (tmp_path / "runs/quickstart/report/summary.json").is_file()
    assert any(c.startswith("crossdiff harvest") for c in ran)
    assert any(c.startswith("crossdiff train-model") for c in ran)
