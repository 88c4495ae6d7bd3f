"""A quickstart-like run, built once by the real pipeline at a tiny setting, for the report tests.

``CROSSDIFF_REPORT_RUN=RUN`` points the tests at an existing run directory instead (a copy of the
quickstart's, to take the screenshots in docs/report.md from a realistic run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.pipeline.test_run import TINY_RUN

REPORT_UMASK = 0o002
"""The umask the run is built under: not the common 022, so a kept default would show."""

# the sparsity term makes exclusive latents (with λ = 0 none form), as in the quickstart;
# the interventions analysis puts its panel on the explorer's cards
REPORT_RUN = TINY_RUN.replace("progress = false", "progress = false\nsparsity_coeff = 1.0").replace(
    '"routing_similarity",\n]', '"routing_similarity", "interventions",\n]'
)
assert "interventions" in REPORT_RUN


@pytest.fixture(scope="session")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory (its ``report/`` written by ``crossdiff run``)."""
    given = os.environ.get("CROSSDIFF_REPORT_RUN")
    if given:
        return Path(given)
    from crossdiff.cli import main

    root = tmp_path_factory.mktemp("report-run")
    (root / "tiny.toml").write_text(REPORT_RUN)
    before = os.umask(REPORT_UMASK)
    try:
        assert main(["run", str(root / "tiny.toml"), "--out", str(root / "out")]) == 0
    finally:
        os.umask(before)
    return root / "out"
