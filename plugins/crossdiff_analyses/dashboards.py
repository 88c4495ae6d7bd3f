"""``dashboards``: top-activating contexts of latents sampled from each class.

For each class, ``per_class`` latents that fired on held-out tokens are drawn (seeded); for each,
its ``contexts`` strongest activations are shown in context (``window`` tokens before, ``after``
tokens after), every token coloured by the latent's activation there (circuitsvis token views).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from crossdiff.analysis import AnalysisResult, RunContext
from crossdiff.corpus import load_sequences, load_tokenizer
from crossdiff.crosscoder import Crosscoder
from crossdiff.crosscoder.classes import latent_classes
from crossdiff.latents import LatentScan, iter_store_batches, scan_latents
from crossdiff.store import StoreInfo
from crossdiff_analyses._inputs import heldout_store, load_crosscoder


@dataclass(frozen=True)
class DashboardSettings:
    """How many latents and contexts to show."""

    per_class: int = 3
    contexts: int = 4
    window: int = 12
    after: int = 3
    seed: int = 0


class Dashboards:
    """Top-activating token contexts for latents sampled per class."""

    def __init__(self, settings: DashboardSettings | None = None) -> None:
        self.settings = settings or DashboardSettings()

    def run(self, context: RunContext) -> AnalysisResult:
        """Pick latents per class and collect their top contexts with per-token activations."""
        settings = self.settings
        crosscoder = load_crosscoder(context)
        store = heldout_store(context)
        scan = scan_latents(crosscoder, store, top_n=settings.contexts)
        chosen = choose_latents(latent_classes(crosscoder), scan, settings)
        corpus_dir = context.stage_dir("corpus")
        split = store.manifest["config"]["store"]["split"]
        sequences = load_sequences(corpus_dir)[split].input_ids
        tokenizer = load_tokenizer(corpus_dir / "tokenizer")
        windows = context_windows(scan, chosen, settings, sequences.shape[1])
        values = activations_at(crosscoder, store, windows)
        dashboards = []
        for label, latents in chosen.items():
            for latent in latents:
                contexts = []
                for sequence, positions in windows[latent]:
                    ids = sequences[sequence, positions].tolist()
                    tokens = [tokenizer.decode([i]) for i in ids]
                    acts = [values.get((latent, sequence, p), 0.0) for p in positions]
                    contexts.append({"tokens": tokens, "values": acts})
                dashboards.append(
                    {
                        "latent": latent,
                        "class": label,
                        "density": float(scan.density_L[latent]),
                        "max_activation": float(scan.top_values_NL[0, latent]),
                        "contexts": contexts,
                    }
                )
        return AnalysisResult({"settings": vars(settings), "dashboards": dashboards})


def choose_latents(
    classes: list[str], scan: LatentScan, settings: DashboardSettings
) -> dict[str, list[int]]:
    """Class -> up to ``per_class`` latents that fired, drawn with the settings' seed."""
    rng = random.Random(settings.seed)
    chosen: dict[str, list[int]] = {}
    for label in sorted(set(classes)):
        fired = [i for i, c in enumerate(classes) if c == label and scan.fires_L[i] > 0]
        chosen[label] = sorted(rng.sample(fired, min(settings.per_class, len(fired))))
    return chosen


def context_windows(
    scan: LatentScan, chosen: dict[str, list[int]], settings: DashboardSettings, length: int
) -> dict[int, list[tuple[int, list[int]]]]:
    """Latent -> its top activations as (sequence, positions of the context window), the
    window cut to the ``length`` positions a sequence has."""
    windows: dict[int, list[tuple[int, list[int]]]] = {}
    for latents in chosen.values():
        for latent in latents:
            windows[latent] = []
            for row in scan.top_rows_NL[:, latent].tolist():
                if row < 0:
                    continue
                sequence = int(scan.row_meta["sequences"][row])
                position = int(scan.row_meta["positions"][row])
                start = max(0, position - settings.window)
                positions = list(range(start, min(position + settings.after + 1, length)))
                windows[latent].append((sequence, positions))
    return windows


@torch.no_grad()
def activations_at(
    crosscoder: Crosscoder,
    store: StoreInfo,
    windows: dict[int, list[tuple[int, list[int]]]],
) -> dict[tuple[int, int, int], float]:
    """(latent, sequence, position) -> activation, for every token of every context window."""
    wanted = {(s, p) for contexts in windows.values() for s, ps in contexts for p in ps}
    latents = torch.tensor(sorted(windows), dtype=torch.long)
    values: dict[tuple[int, int, int], float] = {}
    if not wanted or not len(latents):
        return values
    for acts, meta in iter_store_batches(crosscoder, store):
        keys = list(zip(meta["sequences"].tolist(), meta["positions"].tolist(), strict=True))
        rows = [i for i, key in enumerate(keys) if key in wanted]
        if not rows:
            continue
        picked = {m: a[rows] for m, a in acts.items()}
        f_RL = crosscoder.encode(picked)[:, latents]
        for r, row in enumerate(rows):
            sequence, position = keys[row]
            for j, latent in enumerate(latents.tolist()):
                values[latent, sequence, position] = float(f_RL[r, j])
    return values
