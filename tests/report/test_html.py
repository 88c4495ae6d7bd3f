"""The report page: self-contained, and it renders in a real headless browser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crossdiff.figures import new_figure, save_figure
from crossdiff.report import ReportSection, TokenDashboard, write_report
from crossdiff.report.html import flatten

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
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is installed by the set-up command (see README)"
    report = make_report(tmp_path)
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        page.wait_for_function(
            "[...document.querySelectorAll('.token-view')].every(v => v.children.length > 0)",
            timeout=20_000,
        )
        image_widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        views = page.eval_on_selector_all(".token-view", "vs => vs.map(v => v.innerText)")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert image_widths and all(width > 0 for width in image_widths)
    assert len(views) == 2
    assert "cat" in views[0] and "</script>" in views[0] and "a<b&c" in views[0]
    assert "def" in views[1]
