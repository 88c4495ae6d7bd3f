"""Open a report in headless Chromium (the system's) and say what rendered."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@dataclass
class Rendered:
    """What the browser saw."""

    errors: list[str] = field(default_factory=list)
    image_widths: list[int] = field(default_factory=list)
    token_views: list[str] = field(default_factory=list)


def open_in_chromium(page_path: Path, screenshot: str) -> Rendered:
    """Load ``page_path``, wait for every token view, screenshot into ``test-artifacts/``."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is installed by the set-up command (see README)"
    seen = Rendered()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: seen.errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_function(
            "[...document.querySelectorAll('.token-view')].every(v => v.children.length > 0)",
            timeout=30_000,
        )
        seen.image_widths = page.eval_on_selector_all("img", "i => i.map(x => x.naturalWidth)")
        seen.token_views = page.eval_on_selector_all(".token-view", "v => v.map(x => x.innerText)")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
        browser.close()
    return seen
