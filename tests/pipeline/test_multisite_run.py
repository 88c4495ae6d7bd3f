"""``crossdiff run`` with one crosscoder over two sites per model and dedicated blocks, through
the analyses and the report (explorer included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossdiff.cli import main
from tests.pipeline.test_run import TINY_RUN


@pytest.mark.slow
def test_a_two_site_crosscoder_with_dedicated_blocks_runs_to_the_report(tmp_path: Path) -> None:
    config = (
        TINY_RUN.replace('site = "1.mlp_out"', 'sites = ["0.mlp_out", "1.mlp_out"]')
        .replace(
            "n_shared = 16", 'n_shared = 16\nn_dedicated = 8\nsites = ["0.mlp_out", "1.mlp_out"]'
        )
        .replace('"routing", "expert_alignment", "early_decoding", "routing_similarity",', "")
        .replace('"dashboards",', "")
    )
    path = tmp_path / "two_sites.toml"
    path.write_text(config)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    report = tmp_path / "out" / "report"
    summary = json.loads((report / "summary.json").read_text())
    settings = summary["crosscoder"]["settings"]
    assert settings["sites"] == {"dense": "0.mlp_out, 1.mlp_out", "moe": "0.mlp_out, 1.mlp_out"}
    assert settings["n_dedicated"] == [8, 8]
    fve = summary["crosscoder"]["fve"]
    per_input = {f"{m}/{s}" for m in ("dense", "moe") for s in ("0.mlp_out", "1.mlp_out")}
    assert set(fve) == per_input | {"pooled"} and all(0 < fve[key] <= 1 for key in per_input)
    live = sum(summary["analyses"]["feature_classes"]["counts"].values())
    assert summary["explorer"]["latents"] == live > 0
    fewer = summary["claims"][0]  # the counts are set by the dedicated blocks, not the models
    assert fewer["holds"] is None and "dedicated blocks" in fewer["statistic"]
    html = (report / "report.html").read_text()
    assert "dedicated blocks" in html and "0.mlp_out, 1.mlp_out" in html
