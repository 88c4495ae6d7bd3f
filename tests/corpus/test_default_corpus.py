"""The README's main job: the default corpus builds offline with enough text per domain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossdiff.stages import read_manifest

MIN_TRAIN_TOKENS = 1_000_000


@pytest.mark.slow
def test_default_corpus_offers_a_million_training_tokens_per_domain(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "crossdiff", "corpus", "build", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    domains = read_manifest(out)["stats"]["domains"]
    assert set(domains) == {"code", "science", "stories"}
    for domain, row in domains.items():
        assert row["tokens"]["train"] >= MIN_TRAIN_TOKENS, domain
        assert f"{row['tokens']['train']:,}" in result.stdout  # the printed table
        assert f"{row['documents']['train']:,}" in result.stdout
