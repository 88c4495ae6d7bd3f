"""The run's report opened from disk in headless Chromium and used as a researcher would."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.report.browser import ARTIFACTS, CHROMIUM_FLAGS

READY = "window.crossdiffExplorer && window.crossdiffExplorer.ready"


def column(page, name: str) -> list[str]:
    """The text of column ``name`` in the latent table's visible rows."""
    return page.eval_on_selector_all(
        f"#latent-table tbody td[data-col='{name}']", "cells => cells.map(c => c.innerText)"
    )


@pytest.mark.slow
def test_the_report_answers_in_chromium(report_run: Path) -> None:
    from playwright.sync_api import sync_playwright

    summary = json.loads((report_run / "report" / "summary.json").read_text())
    live = sum(summary["features"]["counts"].values())
    moe_only = summary["features"]["counts"]["moe_only"]
    assert moe_only > 0  # the filter below has rows to show
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is installed by the set-up command (see README)"
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        started = time.perf_counter()
        page.goto((report_run / "report" / "report.html").as_uri())
        page.wait_for_function(READY, timeout=30_000)
        load_seconds = time.perf_counter() - started
        page.screenshot(path=str(ARTIFACTS / "report-findings.png"))

        # findings first: a row per claim, each with a verdict
        claims = page.locator("#claims-table tbody tr")
        assert claims.count() == len(summary["claims"]) >= 3
        verdicts = page.eval_on_selector_all(
            "#claims-table td.verdict", "cells => cells.map(c => c.innerText)"
        )
        assert set(verdicts) <= {"holds", "does not hold", "not testable"}

        # every live latent is listed
        assert page.inner_text("#row-count") == f"{live} of {live} live latents"
        assert summary["explorer"]["latents"] == live

        # sort by density: the default is descending; a click makes it ascending
        page.click("#latent-table th[data-key='latent']")
        by_id = column(page, "latent")
        assert by_id == sorted(by_id, key=int)
        page.click("#latent-table th[data-key='density']")
        by_density = column(page, "latent")
        assert by_density != by_id
        densities = [float(x) for x in column(page, "density")]
        assert densities == sorted(densities, reverse=True)
        page.click("#latent-table th[data-key='density']")
        densities = [float(x) for x in column(page, "density")]
        assert densities == sorted(densities)

        page.evaluate("document.getElementById('latent-explorer').scrollIntoView()")
        page.screenshot(path=str(ARTIFACTS / "report-table.png"))

        # filter to one class: only its rows, as many as summary.json counts
        page.select_option("#class-filter", "moe_only")
        assert set(column(page, "class")) == {"moe_only"}
        assert page.inner_text("#row-count") == f"{moe_only} of {live} live latents"
        page.locator("#explorer-controls").screenshot(path=str(ARTIFACTS / "report-filter.png"))
        page.select_option("#class-filter", "")

        # open the densest latent's card: contexts with coloured tokens, logit effects
        page.click("#latent-table th[data-key='density']")
        page.locator("#latent-table tbody tr").first.click()
        page.wait_for_function(
            "document.querySelectorAll('#latent-card .token-view').length > 0 && "
            "[...document.querySelectorAll('#latent-card .token-view')]"
            ".every(v => v.querySelectorAll('span').length > 0)",
            timeout=30_000,
        )
        views = page.locator("#latent-card .token-view")
        assert views.count() >= 5
        coloured = page.eval_on_selector_all(
            "#latent-card .token-view span",
            "spans => spans.filter(s => { const c = getComputedStyle(s).backgroundColor;"
            " return c && c !== 'rgba(0, 0, 0, 0)' && c !== 'rgb(255, 255, 255)'; }).length",
        )
        assert coloured >= 5
        promoted = page.locator("#latent-card .logit-list.promoted li")
        assert promoted.count() >= 5
        assert page.locator("#latent-card svg.histogram rect").count() >= 1
        page.locator("#latent-card").screenshot(path=str(ARTIFACTS / "report-card.png"))
        browser.close()
    assert errors == []
    (ARTIFACTS / "report-load.json").write_text(json.dumps({"load_seconds": load_seconds}))
    assert load_seconds < 3.0, f"the report took {load_seconds:.2f} s to load"
