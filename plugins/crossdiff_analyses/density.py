"""``density``: how often each latent fires on held-out tokens, by class and by domain.

Each exclusive class is compared with the shared class by a two-sided Mann–Whitney U test on
per-latent densities; the effect size is the rank-biserial correlation 2U/(n₁n₂) − 1, in [−1, 1]:
positive when the exclusive class's latents fire MORE often than shared ones. Latents that never
fired on the held-out tokens are excluded from the test (their density is not measured, only
bounded) and counted separately.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdiff.analysis import AnalysisResult, RunContext
from crossdiff.crosscoder.classes import latent_classes
from crossdiff.crosscoder.synthetic import only
from crossdiff.figures import new_figure, save_figure
from crossdiff.latents import LatentScan, scan_latents
from crossdiff_analyses._inputs import heldout_store, load_crosscoder

SHARED = "shared"


class Density:
    """Per-latent firing frequency; distributions per class and domain; rank tests."""

    def run(self, context: RunContext) -> AnalysisResult:
        """Scan the held-out store and compare the classes' densities."""
        crosscoder = load_crosscoder(context)
        scan = scan_latents(crosscoder, heldout_store(context), top_n=1)
        classes = latent_classes(crosscoder)
        labels = [SHARED, *(only(name) for name in crosscoder.cfg.models)]
        summary = density_summary(scan, classes, labels)
        figures = {
            "density_per_class": _class_histogram(scan, classes),
            "density_per_domain": _domain_bars(summary),
        }
        return AnalysisResult(summary, figures)


def density_summary(
    scan: LatentScan, classes: list[str], present: list[str] | None = None
) -> dict[str, Any]:
    """Medians per class (overall and per domain) and each exclusive class vs shared.

    ``present`` lists the classes to report (every one appears, None where it has no latent);
    by default the classes that occur.
    """
    labels = np.asarray(classes)
    density = scan.density_L.numpy()
    present = present or sorted(set(classes), key=lambda c: (c != SHARED, c))
    summary: dict[str, Any] = {
        "tokens": scan.n_tokens,
        "median": {c: _median(density[(labels == c) & (density > 0)]) for c in present},
        "mean": {c: _mean(density[labels == c]) for c in present},
        "never_fired": {c: int(((labels == c) & (density == 0)).sum()) for c in present},
        "per_domain_median": {
            domain: {
                c: _median(scan.domain_density(domain).numpy()[(labels == c) & (density > 0)])
                for c in present
            }
            for domain in scan.domain_tokens
        },
        "tests": {},
    }
    shared = density[(labels == SHARED) & (density > 0)]
    for label in present:
        if label == SHARED:
            continue
        summary["tests"][f"{label}_vs_shared"] = mann_whitney(
            density[(labels == label) & (density > 0)], shared
        )
    return summary


def mann_whitney(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Two-sided Mann–Whitney U of ``x`` vs ``y`` with the rank-biserial effect size."""
    from scipy.stats import mannwhitneyu

    if len(x) == 0 or len(y) == 0:
        return {"p_value": None, "effect_size": None, "n": [len(x), len(y)], "u": None}
    u, p = mannwhitneyu(x, y, alternative="two-sided")
    return {
        "p_value": float(p),
        "effect_size": float(2 * u / (len(x) * len(y)) - 1),
        "n": [len(x), len(y)],
        "u": float(u),
    }


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def _class_histogram(scan: LatentScan, classes: list[str]):
    def draw(path: Path) -> None:
        density = scan.density_L
        figure = new_figure(6, 3.5)
        axes = figure.subplots()
        floor = 1.0 / max(scan.n_tokens, 1)
        bins = np.linspace(np.log10(floor), 0, 41)
        for label in sorted(set(classes)):
            mask = torch.tensor([c == label for c in classes]) & (density > 0)
            values = np.log10(density[mask].numpy())
            axes.hist(
                values,
                bins=bins,
                histtype="step",
                linewidth=1.5,
                density=True,
                label=f"{label} ({int(mask.sum())})",
            )
        axes.set_xlabel("log10 firing frequency on held-out tokens")
        axes.set_ylabel("share of latents (density)")
        axes.legend()
        save_figure(figure, path)

    return draw


def _domain_bars(summary: dict[str, Any]):
    def draw(path: Path) -> None:
        per_domain = summary["per_domain_median"]
        domains = list(per_domain)
        labels = list(summary["median"])
        figure = new_figure(6, 3.5)
        axes = figure.subplots()
        width = 0.8 / max(len(labels), 1)
        for index, label in enumerate(labels):
            values = [per_domain[d][label] or 0.0 for d in domains]
            positions = np.arange(len(domains)) + index * width
            axes.bar(positions, values, width=width, label=label)
        axes.set_xticks(np.arange(len(domains)) + width * (len(labels) - 1) / 2, domains)
        axes.set_ylabel("median firing frequency")
        axes.set_yscale("log")
        axes.legend()
        save_figure(figure, path)

    return draw
