"""The explorer's card shows a latent's intervention effects where the analysis measured them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.report.browser import CHROMIUM_FLAGS

READY = "window.crossdiffExplorer && window.crossdiffExplorer.ready"


@pytest.mark.slow
def test_a_measured_latents_card_shows_its_ablation_effects(report_run: Path) -> None:
    from playwright.sync_api import sync_playwright

    analysis = json.loads((report_run / "analyses/interventions/summary.json").read_text())
    measured = {int(k): v for k, v in analysis["latents"].items()}
    index_text = (report_run / "report/latents/index.js").read_text()
    live = [
        row[0] for row in json.loads(index_text[index_text.index("= ") + 2 :].rstrip(";\n"))["rows"]
    ]
    unmeasured = next(i for i in live if i not in measured)
    latent = next(iter(measured))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is installed by the set-up command (see README)"
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((report_run / "report" / "report.html").as_uri())
        page.wait_for_function(READY, timeout=30_000)
        page.evaluate(f"window.crossdiffExplorer.openCard({latent})")
        page.wait_for_selector("#latent-card .intervention-effects", timeout=30_000)
        cells = page.eval_on_selector_all(
            "#latent-card .intervention-effects tbody tr",
            "rows => rows.map(r => [...r.children].map(c => c.innerText))",
        )
        effects = measured[latent]["effects"]
        assert [row[0] for row in cells] == list(effects)
        for row in cells:
            shown = float(row[1])
            assert shown == pytest.approx(effects[row[0]]["delta_loss"], rel=0.01)
        assert f"{measured[latent]['fires']} tokens where it fires" in page.inner_text(
            "#latent-card .intervention"
        )
        page.evaluate(f"window.crossdiffExplorer.openCard({unmeasured})")
        page.wait_for_function(f"location.hash === '#latent-{unmeasured}'")
        assert page.locator("#latent-card .intervention").count() == 0
        browser.close()
    assert errors == []
