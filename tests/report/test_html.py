"""The report page: self-contained, and it renders in a real headless browser."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossdiff.figures import new_figure, save_figure
from crossdiff.report import ReportSection, TokenDashboard, write_report
from crossdiff.report.html import flatten
from tests.report.browser import open_in_chromium

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make_report(tmp_path: Path) -> Path:
    figure = new_figure()
    figure.subplots().plot([0, 1, 2], [2, 0, 1])
    save_figure(figure, tmp_path / "decoder_norms.png")
    dashboard = TokenDashboard(
        "latent 7 (shared)",
        [
            (["The", " cat", " sat", "</script>", " a<b&c"], [0.0, 0.9, 0.2, 0.1, 0.3]),
            (["def", " f", "(", "x", "):"], [0.5, 0.0, 0.0, 1.0, 0.0]),
        ],
    )
    section = ReportSection(
        "Crosscoder",
        "Fraction of variance explained.",
        {"fve": {"dense": 0.91, "moe": 0.9}},
        [tmp_path / "decoder_norms.png"],
        [dashboard],
    )
    return write_report(tmp_path / "report.html", "crossdiff report", [section])


def test_report_is_self_contained(tmp_path: Path) -> None:
    page = make_report(tmp_path).read_text()
    assert "data:image/png;base64," in page
    assert "CircuitsVis" in page
    for remote in ("https://", "http://", "unpkg.com", "cdn.jsdelivr"):
        assert f'src="{remote}' not in page and f"src='{remote}" not in page
    assert "fve.dense" in page and "0.91" in page


def test_flatten_nested_tables() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """No console errors; every figure decoded; every token view rendered its tokens."""
    seen = open_in_chromium(make_report(tmp_path), "report-unit.png")
    assert seen.errors == []
    assert seen.image_widths and all(width > 0 for width in seen.image_widths)
    assert len(seen.token_views) == 2
    assert "cat" in seen.token_views[0] and "</script>" in seen.token_views[0]
    assert "a<b&c" in seen.token_views[0]
    assert "def" in seen.token_views[1]
