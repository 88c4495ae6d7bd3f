"""How the latent explorer's load time grows with the dictionary: 16,384 live latents vs 2,048.

Writes two synthetic explorers (rows and cards shaped like a real run's: 8 contexts of 16
tokens, 10 promoted and suppressed tokens per model, 8 experts) with the report's own writer,
opens each from disk in headless Chromium (the system's) and times, in the same process,
(a) the page until the explorer's table is drawn and (b) opening one latent's card (its card
file loaded on demand, the contexts rendered by circuitsvis). Prints seconds and 16k / 2k.

    .venv/bin/python benchmarks/bench_report.py
"""

from __future__ import annotations

import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic(n_latents: int, seed: int = 0):
    """``(index, cards)`` with ``n_latents`` live latents."""
    rng = random.Random(seed)
    domains = ["code", "science", "stories"]
    words = [f"w{i}" for i in range(500)]
    rows, cards = [], {}
    for latent in range(n_latents):
        label = rng.choice(["shared"] * 8 + ["dense_only", "moe_only"])
        rows.append(
            [
                latent,
                label,
                rng.random(),
                rng.random(),
                rng.random() / 10,
                *(rng.random() / 10 for _ in domains),
                rng.random() * 5,
                rng.sample(words, 3),
                f"moe:{rng.randrange(8)}" if rng.random() < 0.2 else None,
                rng.random() * 3,
            ]
        )
        cards[latent] = {
            "latent": latent,
            "contexts": [
                {
                    "tokens": rng.choices(words, k=16),
                    "values": [round(rng.random(), 3) for _ in range(16)],
                    "peak": 12,
                    "sequence": 0,
                }
                for _ in range(8)
            ],
            "histogram": [rng.randrange(100) for _ in range(30)],
            "domain_density": {d: rng.random() for d in domains},
            "logits": {
                m: {
                    k: [[rng.choice(words), rng.random()] for _ in range(10)]
                    for k in ("promoted", "suppressed")
                }
                for m in ("dense", "moe")
            },
            "experts": {
                "moe": {
                    k: [rng.random() for _ in range(8)] for k in ("conditional", "lift", "base")
                }
            },
        }
    columns = ["latent", "class", "relative_norm", "scaled_ratio", "density"]
    columns += [f"density_{d}" for d in domains]
    columns += ["max_activation", "top_tokens", "expert", "lift"]
    index = {
        "columns": columns,
        "rows": rows,
        "models": ["dense", "moe"],
        "domains": domains,
        "histogram_edges": [round(10 ** (x / 6), 3) for x in range(-18, 13)],
        "chunk": 128,
        "tokens": 260_096,
        "n_latents": n_latents,
        "classes": ["dense_only", "moe_only", "shared"],
        "expert_models": {"moe": 2},
    }
    return index, cards


def time_page(browser, page_path: Path) -> tuple[float, float]:
    """(seconds to the drawn table, seconds to an opened card)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    started = time.perf_counter()
    page.goto(page_path.as_uri())
    page.wait_for_function("window.crossdiffExplorer && window.crossdiffExplorer.ready")
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    page.locator("#latent-table tbody tr").first.click()
    page.wait_for_function("document.querySelectorAll('#latent-card .token-view span').length > 0")
    card = time.perf_counter() - started
    page.close()
    return loaded, card


def main() -> None:
    from playwright.sync_api import sync_playwright
    from tests.report.browser import CHROMIUM_FLAGS

    from crossdiff.report import write_report

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        pages = {}
        for n in (2_048, 16_384):
            started = time.perf_counter()
            pages[n] = write_report(
                Path(tmp) / str(n) / "report.html", f"{n} latents", [], explorer=synthetic(n)
            )
            size = sum(p.stat().st_size for p in pages[n].parent.rglob("*")) / 2**20
            index = (pages[n].parent / "latents" / "index.js").stat().st_size / 2**20
            print(
                f"{n:>6} latents: written in {time.perf_counter() - started:.1f} s, "
                f"{size:.1f} MiB in all, index.js {index:.2f} MiB"
            )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            times = {n: [time_page(browser, p) for _ in range(3)] for n, p in pages.items()}
            browser.close()
    medians = {
        n: [statistics.median(t[i] for t in runs) for i in (0, 1)] for n, runs in times.items()
    }
    for n, (load, card) in medians.items():
        print(f"{n:>6} latents: page ready {load:.2f} s, card open {card:.2f} s (median of 3)")
    ratio = [medians[16_384][i] / medians[2_048][i] for i in (0, 1)]
    print(f"16k / 2k: page {ratio[0]:.2f}x, card {ratio[1]:.2f}x")


if __name__ == "__main__":
    main()
