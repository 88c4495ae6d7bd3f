"""``crossdiff toy run``: sweeps into stage directories, skipped when finished, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossdiff.cli import main

TINY = """
name = "tiny toy run"
threads = 1
progress = false
claims = [
    "no_phase_change", "network_sparsity_characterises", "network_sparsity_monosemantic",
    "aligned_init_specialises",
]

[sweeps.phase_dense]
figure = "phase"
model = { n_features = 2, d_hidden = 1, steps = 40, batch_size = 32, lr = 0.05 }
axes = { sparsity = [0.0, 0.9], importance_decay = [0.5, 2.0], seed = [0, 1] }

[sweeps.phase_moe]
figure = "phase"
model = { n_features = 2, d_hidden = 1, n_experts = 2, steps = 40, batch_size = 32, lr = 0.05 }
axes = { sparsity = [0.0, 0.9], importance_decay = [0.5, 2.0], seed = [0, 1] }

[sweeps.network]
figure = "network_sparsity"
model = { n_features = 6, d_hidden = 2, sparsity = 0.8, steps = 40, batch_size = 32 }
axes.experts = [{ n_experts = 1, k = 1 }, { n_experts = 2, k = 1 }, { n_experts = 2, k = 2 }]
axes.seed = [0, 1]

[sweeps.init]
figure = "init"
model = { n_features = 4, d_hidden = 2, n_experts = 2, correlation = "correlated", steps = 30 }
axes = { init = ["random", "aligned", "dense"], seed = [0, 1] }
"""
EXPECTED_FIGURES = 2 + 2 * 4 + 1 + 1  # phase ×2, sticks + heatmap per sweep, k/E, init


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    (root / "toy.toml").write_text(TINY)
    assert main(["toy", "run", str(root / "toy.toml"), "--out", str(root / "out")]) == 0
    return root


@pytest.mark.slow
def test_the_run_writes_every_sweep_and_the_summary(toy_run: Path) -> None:
    out = toy_run / "out"
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["models"] == 8 + 8 + 6 + 6
    phase = summary["sweeps"]["phase_dense"]["phase"]
    assert phase["sparsity"] == [0.0, 0.9] and phase["importance_decay"] == [0.5, 2.0]
    assert len(phase["state"]) == 2 and len(phase["state"][0]) == 2
    network = summary["sweeps"]["network"]["network_sparsity"]
    assert [(row["n_experts"], row["k"]) for row in network] == [(2, 1), (1, 1), (2, 2)]
    assert all(row["models"] == 2 for row in network)
    assert {row["init"] for row in summary["sweeps"]["init"]["init"]} == {
        "random", "aligned", "dense",
    }  # fmt: skip
    records = json.loads((out / "sweeps" / "phase_moe" / "results.json").read_text())
    assert len(records) == 8 and len(records[0]["usage"]) == 2
    assert sum(records[0]["usage"]) == pytest.approx(1.0)
    page = (out / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == EXPECTED_FIGURES
    # a verdict per listed claim, in summary.json and as the report's first table
    verdicts = summary["claims"]
    assert [v["claim"] for v in verdicts] == [
        "no_phase_change", "network_sparsity_characterises", "network_sparsity_monosemantic",
        "aligned_init_specialises",
    ]  # fmt: skip
    assert all(v["verdict"] in ("holds", "does not hold", "not testable") for v in verdicts)
    # 2 densities x 2 seeds give at most 4 rows where the dense model jumps: too few
    assert verdicts[0]["verdict"] == "not testable"
    assert page.index("<h2 id='claims'>") < page.index("<h2 id='phase-diagrams")
    assert page.count("<td class='verdict'>") == 4
    # per-expert numbers in the summary and the report, not only in sweeps/*/results.json
    rows = summary["sweeps"]["network"]["per_expert"]
    assert [(row["setting"], row["rank"]) for row in rows][:3] == [
        ("n_experts=1, k=1", 0), ("n_experts=2, k=1", 0), ("n_experts=2, k=1", 1),
    ]  # fmt: skip
    assert all(row["models"] == 2 for row in rows)
    assert rows[1]["usage"] >= rows[2]["usage"]  # ranked by usage within each model
    assert page.count("Per expert, mean over seeds") == 4


@pytest.mark.slow
def test_a_rerun_skips_finished_sweeps_and_redoes_a_changed_one(
    toy_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = toy_run / "out"
    manifests = {p: p.stat().st_mtime_ns for p in (out / "sweeps").glob("*/manifest.json")}
    assert len(manifests) == 4
    config = toy_run / "changed.toml"
    config.write_text(TINY.replace("steps = 30", "steps = 20"))
    capsys.readouterr()
    assert main(["toy", "run", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("is complete, skipped") == 3
    assert "toy: claim no_phase_change: not testable" in printed
    assert "sweep 'init': 12 models" not in printed and "sweep 'init': 6 models" in printed
    for path, mtime in manifests.items():
        changed = path.stat().st_mtime_ns != mtime
        assert changed == (path.parent.name == "init"), path


@pytest.mark.slow
def test_the_toy_report_renders_in_headless_chromium(toy_run: Path) -> None:
    from tests.report.browser import open_in_chromium

    seen = open_in_chromium(toy_run / "out" / "report" / "report.html", "report-toy.png")
    assert seen.errors == []
    assert len(seen.image_widths) == EXPECTED_FIGURES
    assert all(width > 0 for width in seen.image_widths)


def test_bad_input_is_one_line_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[sweeps.a]\nmodel = { n_experts = 2, k = 3 }\n")
    assert main(["toy", "run", str(config), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert error.startswith("crossdiff: error:") and "k=3" in error
    config.write_text("[sweeps.a]\naxes = { seeed = [0, 1] }\n")
    assert main(["toy", "run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "(did you mean 'seed'?)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
