"""``density``: how often each latent fires on held-out tokens, by class and by domain.

The measurement is calibrated on planted ground truth (:mod:`crossdiff.density` holds it and
its reasons; docs/crosscoder.md "Calibrated density" its figures). In short, with a dictionary
larger than the features and k above the data's L0, raw firing counts could not see a planted
"exclusive sparser than shared", so:

- a firing counts only when the activation reaches 0.2 × the latent's reference activation (the
  median of its 16 largest held-out activations): k > L0 fills the spare slots with faint
  firings, exclusive latents more than shared ones, inflating every latent's count;
- latents whose peak contribution (reference activation × Σ_m ‖d_i^m‖) is below 0.1 × the
  median are not measured: faint latents matching no feature sit in "shared" and drag its
  median down;
- the shared baseline is the emergent shared class; the designated block (sparsity weight 0.15,
  absorbs dense exclusive features at a high λ) is reported but not tested.

Each exclusive class is compared with the shared baseline by the Mann–Whitney U test on
per-latent densities: two-sided ``p_value``, one-sided ``p_greater`` (the class fires more) and
``p_less`` (it fires less); the effect size is the rank-biserial correlation 2U/(n₁n₂) − 1, in
[−1, 1], positive when the exclusive class's latents fire MORE often than shared ones; ``ratio``
is the ratio of the medians (class / shared) with a 95% bootstrap interval ``ratio_ci``. The
summary records the rule (``baseline``) and, per class, how many latents were measured and why
the others were not (``latents``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crossdiff.analysis import AnalysisResult, RunContext
from crossdiff.crosscoder.synthetic import only
from crossdiff.density import (
    CALIBRATED,
    DensityMeasurement,
    compare,
    density_summary,
    mann_whitney,
    measure_density,
)
from crossdiff.figures import new_figure, save_figure
from crossdiff.latents import iter_store_batches
from crossdiff_analyses._inputs import heldout_store, load_crosscoder

SHARED = "shared"
__all__ = ["Density", "compare", "density_summary", "mann_whitney", "measure_density"]


class Density:
    """Per-latent firing frequency; distributions per class and domain; rank tests."""

    def run(self, context: RunContext) -> AnalysisResult:
        """Measure the held-out densities (calibrated rule) and compare the classes."""
        crosscoder = load_crosscoder(context)
        store = heldout_store(context)
        measurement = measure_density(
            crosscoder, lambda: iter_store_batches(crosscoder, store), store.domains, CALIBRATED
        )
        labels = [SHARED, *(only(name) for name in crosscoder.cfg.models)]
        summary = density_summary(measurement, labels)
        figures = {
            "density_per_class": _class_histogram(measurement),
            "density_per_domain": _domain_bars(summary),
        }
        return AnalysisResult(summary, figures)


def _class_histogram(measurement: DensityMeasurement):
    def draw(path: Path) -> None:
        density = measurement.density_L
        classes = np.asarray(measurement.classes)
        figure = new_figure(6, 3.5)
        axes = figure.subplots()
        floor = 1.0 / max(measurement.n_tokens, 1)
        bins = np.linspace(np.log10(floor), 0, 41)
        for label in sorted(set(measurement.classes)):
            mask = (classes == label) & measurement.measured_L & (density > 0)
            values = np.log10(density[mask])
            axes.hist(
                values,
                bins=bins,
                histtype="step",
                linewidth=1.5,
                density=True,
                label=f"{label} ({int(mask.sum())})",
            )
        axes.set_xlabel("log10 firing frequency on held-out tokens (measured latents)")
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
