"""``interventions``: does a class of latents matter to its own model and not to the other?

Every latent class (``<model>_only``, ``shared``) is ablated as a whole in each model
(:mod:`crossdiff.interventions`: the latents' contribution leaves the model's activation at the
crosscoded site, the model runs on) and measured on held-out sequences of every domain: Δ loss
(nats per token; negative where the latents hurt the prediction) and the KL of the next-token
distribution (≥ 0: how much the prediction moved either way). An MoE-only latent should matter to
the MoE and not to the dense model: ``kl_own_over_other`` is the KL in the class's own model over
the largest KL in another model. The ``per_class`` latents of each class that fire most often
on those sequences are also ablated one at a time (Δ loss, KL, and the KL where the latent is
active); the explorer's card shows these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdiff.adapters import load_adapter
from crossdiff.analysis import AnalysisResult, RunContext
from crossdiff.corpus import load_sequences
from crossdiff.crosscoder.classes import latent_classes
from crossdiff.errors import ConfigError
from crossdiff.figures import new_figure, save_figure
from crossdiff.interventions import (
    ALL,
    KL_FLOOR,
    ablate,
    count_firings,
    heldout_batches,
    measure_interventions,
)
from crossdiff.plugins import create_plugin_manager
from crossdiff_analyses._inputs import heldout_store, load_crosscoder
from crossdiff_analyses._moe import run_alignments, run_model_paths


@dataclass(frozen=True)
class InterventionSettings:
    """How much held-out text, and how many single latents per class."""

    max_sequences: int = 16
    """Held-out sequences per domain."""
    batch_tokens: int = 2048
    """Tokens per forward pass (whole sequences, at least one)."""
    per_class: int = 8
    """Latents of each class ablated one at a time (the most often active ones)."""

    def __post_init__(self) -> None:
        for name in ("max_sequences", "batch_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"interventions {name} must be >= 1, got {getattr(self, name)}")
        if self.per_class < 0:
            raise ConfigError(f"interventions per_class must be >= 0, got {self.per_class}")


def own_model(latent_class: str, models: list[str]) -> str | None:
    """The model an exclusive class belongs to (None for ``shared``)."""
    for model in models:
        if latent_class == f"{model}_only":
            return model
    return None


class Interventions:
    """Ablate each latent class (and its most active latents) in every model."""

    def __init__(self, settings: InterventionSettings | None = None) -> None:
        self.settings = settings or InterventionSettings()

    def run(self, context: RunContext) -> AnalysisResult:
        """Measure Δ loss and KL per class and model on held-out sequences."""
        settings = self.settings
        crosscoder = load_crosscoder(context)
        store = heldout_store(context)
        models = list(crosscoder.cfg.models)
        if crosscoder.cfg.sites:
            raise ConfigError(
                "the interventions analysis edits one site per model; this crosscoder reads "
                f"several ({list(crosscoder.cfg.sites)})"
            )
        paths = run_model_paths(context)
        manager = create_plugin_manager()
        adapters = {m: load_adapter(paths[m], manager) for m in models}
        sites = {m: store.sites[m][0] for m in models}
        store_config = store.manifest.get("config", {}).get("store", {})
        first = 1 if store_config.get("drop_first_position", True) else 0
        packed = load_sequences(context.stage_dir("corpus"))[
            store_config.get("split", "validation")
        ]
        batches = heldout_batches(
            packed.input_ids, packed.domains, settings.max_sequences, settings.batch_tokens
        )
        alignments = run_alignments(context)
        classes = latent_classes(crosscoder)
        fires = count_firings(crosscoder, adapters, sites, batches, first, alignments)
        members = {c: [i for i, c2 in enumerate(classes) if c2 == c] for c in sorted(set(classes))}
        interventions = {f"class:{c}": ablate(latents) for c, latents in members.items()}
        singles: dict[int, str] = {}
        for label, latents in members.items():
            active = sorted((i for i in latents if fires[i] > 0), key=lambda i: (-int(fires[i]), i))
            for latent in active[: settings.per_class]:
                singles[latent] = label
                interventions[f"latent:{latent}"] = ablate(latent)
        effects = measure_interventions(
            crosscoder, adapters, sites, batches, interventions, first, alignments
        )
        summary: dict[str, Any] = {
            "settings": vars(settings),
            "models": models,
            "sites": sites,
            "first_position": first,
            "tokens": next(iter(effects.values()))[models[0]].tokens,
            "loss": {m: next(iter(effects.values()))[m].loss for m in models},
            "classes": {},
            "latents": {},
        }
        for label, latents in members.items():
            per_model = effects[f"class:{label}"]
            own = own_model(label, models)
            summary["classes"][label] = {
                "latents": len(latents),
                "active": sum(int(fires[i] > 0) for i in latents),
                "own_model": own,
                "effects": {
                    m: {k: v for k, v in e.as_dict().items() if k not in ("loss", "tokens")}
                    for m, e in per_model.items()
                },
                "kl_own_over_other": _own_over_other(per_model, own),
            }
        for latent, label in singles.items():
            per_model = effects[f"latent:{latent}"]
            summary["latents"][str(latent)] = {
                "class": label,
                "fires": int(fires[latent]),
                "effects": {
                    m: {
                        "delta_loss": e.delta_loss[ALL],
                        "kl": e.kl[ALL],
                        "kl_active": e.kl_active,
                    }
                    for m, e in per_model.items()
                },
            }
        figures = {"kl_by_class": _class_figure(summary)} if members else {}
        return AnalysisResult(summary, figures)


def _own_over_other(per_model, own: str | None) -> float | None:
    """KL in model ``own`` over the largest KL in another model (None for ``shared``, or when
    no other model changed beyond rounding, ``KL_FLOOR``)."""
    if own is None:
        return None
    other = max(e.kl[ALL] for m, e in per_model.items() if m != own)
    return per_model[own].kl[ALL] / other if other > KL_FLOOR else None


def _class_figure(summary: dict[str, Any]):
    """KL of the next-token distribution when each class is ablated, one bar per model."""

    def draw(path: Path) -> None:
        figure = new_figure(6, 3)
        ax = figure.subplots()
        labels = list(summary["classes"])
        models = summary["models"]
        width = 0.8 / max(len(models), 1)
        for j, model in enumerate(models):
            values = [summary["classes"][c]["effects"][model]["kl"][ALL] for c in labels]
            positions = [i + j * width for i in range(len(labels))]
            ax.bar(positions, [max(v, KL_FLOOR) for v in values], width, label=model)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(labels))])
        ax.set_xticklabels(labels)
        ax.set_yscale("log")
        ax.set_ylabel("KL(clean ‖ ablated), nats")
        ax.set_title("ablating every latent of a class, in each model", fontsize=9)
        ax.legend(fontsize=7)
        save_figure(figure, path)

    return draw
