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
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0  # nothing wider than the 1280-px window

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


def wide_explorer(n_latents: int = 2048) -> tuple[dict, dict]:
    """An explorer ``(index, cards)`` of ``n_latents`` live latents with four-digit ids, long
    class and token names and many columns: what a full-size run's table holds."""
    domains = ["code", "science", "stories", "legal_contracts", "mathematics"]
    classes = ["shared", "dense_only", "moe_only", "dense_only_dedicated", "moe_only_dedicated"]
    columns = ["latent", "class", "relative_norm", "scaled_ratio", "density"]
    columns += [f"density_{d}" for d in domains] + ["max_activation", "top_tokens", "expert"]
    columns += ["lift"]
    rows, cards = [], {}
    for latent in range(n_latents):
        tokens = [f"token_{latent}_alpha", f"longer_token_{latent}_beta", "  \n"]
        rows.append(
            [latent, classes[latent % len(classes)], 0.123456, 0.5, 1e-4 * (1 + latent % 97)]
            + [0.001 * (1 + i) for i in range(len(domains))]
            + [12.345, tokens, f"moe_with_a_long_name:{latent % 64}", 3.21]
        )
        cards[latent] = {
            "latent": latent,
            "contexts": [
                {
                    "tokens": ["a", "b", tokens[0]],
                    "values": [0.0, 0.5, 1.0],
                    "peak": 2,
                    "sequence": 0,
                }
            ],
            "histogram": [0] * 10 + [3, 5, 2] + [0] * 17,
            "domain_density": {d: 0.001 for d in domains},
            "logits": {},
            "experts": {},
        }
    index = {
        "columns": columns, "rows": rows, "models": ["dense", "moe"], "domains": domains,
        "histogram_edges": [round(10 ** (x / 6), 3) for x in range(-18, 13)], "chunk": 128,
        "tokens": 100_000, "n_latents": n_latents, "classes": classes, "expert_models": {},
        "settings": {},
    }  # fmt: skip
    return index, cards


def test_latent_ids_above_1000_open_their_own_card_and_the_page_fits_1280_px(
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    from crossdiff.report.html import write_report

    page_path = write_report(tmp_path / "report.html", "wide", [], explorer=wide_explorer())
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is installed by the set-up command (see README)"
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_function(READY, timeout=30_000)
        page.click("#latent-table th[data-key='latent']")  # ascending ids
        page.click("#latent-table th[data-key='latent']")  # descending: 2047 first
        shown = column(page, "latent")
        assert shown[:3] == ["2047", "2046", "2045"]  # exact, not 3 significant figures
        page.fill("#token-filter", "token_1454_alpha")
        assert column(page, "latent") == ["1454"]
        page.locator("#latent-table tbody tr").first.click()
        page.wait_for_function("!document.getElementById('latent-card').hidden", timeout=10_000)
        heading = page.inner_text("#latent-card h3")
        assert heading.split()[:2] == ["latent", "1454"]
        assert page.evaluate("location.hash") == "#latent-1454"
        page.fill("#token-filter", "")
        widths = page.evaluate(
            "() => ({page: document.documentElement.scrollWidth,"
            " view: document.documentElement.clientWidth,"
            " table: document.getElementById('latent-table').getBoundingClientRect().width,"
            " box: document.querySelector('.table-scroll').clientWidth})"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report-wide-1280.png"))
        browser.close()
    assert errors == []
    assert widths["page"] <= widths["view"] <= 1280, widths  # no horizontal scroll bar
    assert widths["table"] <= widths["box"] + 0.5, widths  # no column cut off
