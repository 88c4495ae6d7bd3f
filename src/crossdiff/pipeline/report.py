"""Assemble a run's ``summary.json`` (schema: docs/results-schema.md) and ``report.html``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossdiff.pipeline.run import Run
from crossdiff.report import write_report
from crossdiff.stages import atomic_write_json, read_manifest

MODEL_KEYS = ("arch", "active_params", "total_params", "tokens_seen", "val_loss", "unigram_entropy")


def build_summary(run: Run) -> dict[str, Any]:
    """The run's results in one JSON document (see docs/results-schema.md)."""
    summary: dict[str, Any] = {"name": run.config.name, "models": {}, "analyses": {}}
    for name, spec in run.config.models.items():
        directory = run.model_dir(name) if spec.path is None else Path(spec.path)
        manifest = read_manifest(directory) if directory.is_dir() else None
        if manifest and manifest.get("stage") == "models":
            summary["models"][name] = {k: manifest[k] for k in MODEL_KEYS if k in manifest}
            if spec.path is not None:
                summary["models"][name]["path"] = spec.path
            if "expert_usage_min_share" in manifest:
                summary["models"][name]["expert_usage_min_share"] = manifest[
                    "expert_usage_min_share"
                ]
        else:
            summary["models"][name] = {"path": spec.path}
    metrics_path = run.crosscoder_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        summary["crosscoder"] = {
            "fve": {**metrics["fve"], "pooled": metrics["fve_pooled"]},
            "l0": metrics["l0"],
            "dead_fraction": metrics["dead_fraction"],
            "ce_recovered": {
                m: r["recovered"] for m, r in (metrics.get("ce_recovered") or {}).items()
            },
            "eval_window_tokens": metrics.get("eval_window_tokens"),
        }
    for name in run.config.analyses:
        path = run.run_dir / "analyses" / name / "summary.json"
        if path.is_file():
            summary["analyses"][name] = json.loads(path.read_text())
    classes = summary["analyses"].get("feature_classes")
    if classes:
        summary["features"] = {
            "counts": classes["counts"],
            "dead": classes["dead"],
            "emergent_shared": classes["emergent_shared"],
            "designated_shared": classes["designated_shared"],
        }
    density = summary["analyses"].get("density")
    if density:
        summary["density"] = {
            "median": density["median"],
            "tests": {
                name: {"p_value": t["p_value"], "effect_size": t["effect_size"]}
                for name, t in density["tests"].items()
            },
        }
    interventions = interventions_summary(summary["analyses"])
    if interventions:
        summary["interventions"] = interventions
    moe = moe_summary(summary["analyses"])
    if moe:
        summary["moe"] = moe
    return summary


def interventions_summary(analyses: dict[str, Any]) -> dict[str, Any]:
    """Per latent class: Δ loss and KL over all held-out domains in each model when the whole
    class is ablated (docs/results-schema.md, ``interventions``)."""
    data = analyses.get("interventions")
    if not data:
        return {}
    return {
        label: {
            "latents": c["latents"],
            "own_model": c["own_model"],
            "delta_loss": {m: e["delta_loss"]["all"] for m, e in c["effects"].items()},
            "kl": {m: e["kl"]["all"] for m, e in c["effects"].items()},
            "kl_own_over_other": c["kl_own_over_other"],
        }
        for label, c in data["classes"].items()
    }


# ---------------------------------------------------------------- MoE analyses (docs: "moe.*")

MOE_ANALYSES = ("routing", "early_decoding", "expert_alignment", "routing_similarity")


def moe_summary(analyses: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of the MoE analyses that ran (docs/results-schema.md, ``moe``)."""
    out: dict[str, Any] = {}
    routing = analyses.get("routing")
    if routing:
        out["routing"] = {
            model: {
                layer: {
                    "uniform_share": stats["uniform_share"],
                    **{
                        domain: {k: d[k] for k in ("top_share", "experts_for_half", "entropy")}
                        for domain, d in stats["domains"].items()
                    },
                }
                for layer, stats in data["layers"].items()
            }
            for model, data in routing["models"].items()
        }
    early = analyses.get("early_decoding")
    if early:
        out["early_decoding"] = {
            model: {
                "cosine": {
                    layer: {
                        n: {k: m[f"{k}_cosine"] for k in ("contribution", "hidden")}
                        for n, m in stats["as_routed"].items()
                    }
                    for layer, stats in data["layers"].items()
                    if "as_routed" in stats
                },
                "perplexity": data["perplexity"].get("as_routed", {}),
                "perplexity_increase": data["perplexity_increase"].get("as_routed", {}),
            }
            for model, data in early["models"].items()
        }
    alignment = analyses.get("expert_alignment")
    if alignment:
        out["expert_alignment"] = {
            model: {
                "layer": data["layer"],
                "owned": data["owned"],
                "specific_share": {c: v["share"] for c, v in data["expert_specific"].items()},
            }
            for model, data in alignment["models"].items()
        }
    similarity = analyses.get("routing_similarity")
    if similarity:
        out["routing_similarity"] = similarity_summary(similarity)
    return out


def similarity_summary(data: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of ``routing_similarity`` (docs/results-schema.md)."""
    out: dict[str, Any] = {}
    for model, summary in data["models"].items():
        prompts = summary.get("prompt_continuation", {}).get("layers", {})
        out[model] = {}
        for layer, stats in summary["layers"].items():
            token, prompt = stats["token"], prompts.get(layer, {})
            collapse = stats["collapse"]
            out[model][layer] = {
                "spearman_within": token["within"]["spearman"],
                "spearman_across": token["across"]["spearman"],
                "spearman_mean_removed": token["within_mean_removed"]["spearman"],
                "overlap_within": token["within"]["mean_overlap"],
                "overlap_across": token["across"]["mean_overlap"],
                "sequence_spearman": stats["sequence"]["all"]["spearman"],
                "shuffled_baseline": collapse["shuffled_baseline"],
                "ratio": collapse["ratio"],
                "mean_direction_share": collapse["mean_direction_share"],
                "entropy": collapse["entropy"],
                "prompt_own_continuation": prompt.get("own_continuation"),
                "prompt_other_continuations": prompt.get("other_continuations"),
            }
    out["cross_model"] = {
        pair: {
            layers: {k: v[k] for k in ("matched_overlap", "unmatched_overlap", "chance")}
            for layers, v in per_layer.items()
        }
        for pair, per_layer in data.get("cross_model", {}).items()
    }
    return out


def crosscoder_settings(run: Run) -> dict[str, Any] | None:
    """What the crosscoder compared and how it was trained (from its stage manifest)."""
    manifest = read_manifest(run.crosscoder_dir)
    if not manifest or manifest.get("stage") != "crosscoder":
        return None
    config = manifest.get("config", {})
    model = config.get("crosscoder", {})
    stage = config.get("stage", {})
    steps, batch = stage.get("steps"), config.get("batch_size", stage.get("batch_size"))
    sites = config.get("sites") or {  # several sites per model: the same list for every model
        name: ", ".join(model.get("sites", [])) for name in model.get("models", [])
    }
    return {
        "sites": sites,
        "dict_size": model.get("dict_size"),
        "k": model.get("k"),
        "sparsity_coeff": model.get("sparsity_coeff"),
        "n_shared": model.get("n_shared"),
        "n_dedicated": model.get("n_dedicated", []),
        "shared_sparsity_ratio": model.get("shared_sparsity_ratio"),
        "steps": steps,
        "batch_size": batch,
        "train_tokens": steps * batch if steps and batch else None,
    }


def write_run_report(run: Run) -> Path:
    """Write ``RUN/report/summary.json`` and the report folder (``report.html``, ``assets/``,
    ``latents/``); return the page."""
    from crossdiff.report.claims import run_claims
    from crossdiff.report.sections import report_sections

    summary = build_summary(run)
    settings = crosscoder_settings(run)
    if settings and "crosscoder" in summary:
        summary["crosscoder"]["settings"] = settings
    explorer = run_explorer(run)
    if explorer is not None:
        summary["explorer"] = {"latents": len(explorer[0]["rows"])}
    summary["claims"] = [claim.as_dict() for claim in run_claims(summary)]
    report_dir = run.run_dir / "report"
    atomic_write_json(report_dir / "summary.json", summary)
    sections = report_sections(run, summary, report_dir / "figures")
    return write_report(
        report_dir / "report.html",
        f"crossdiff: {run.config.name}",
        sections,
        intro=INTRO,
        explorer=explorer,
    )


INTRO = (
    "What do the two models have in common, and what does only one of them have? A crosscoder "
    "reads both models' activations at one site and learns one dictionary of latents; each "
    "latent's decoder norms say whether it belongs to both models or to one. The findings come "
    "first: each claim this run can test, the value measured and whether it holds here."
)


def run_explorer(run: Run):
    """``(index, cards)`` of the latent explorer, or None without a finished crosscoder."""
    from crossdiff.crosscoder import Crosscoder
    from crossdiff.crosscoder.stage import WEIGHTS_DIR
    from crossdiff.report.explorer import build_explorer
    from crossdiff.store import open_store

    manifest = read_manifest(run.crosscoder_dir)
    store_dir = run.store_dir("validation")
    if not (manifest and manifest.get("complete")) or read_manifest(store_dir) is None:
        return None
    crosscoder = Crosscoder.from_pretrained(run.crosscoder_dir / WEIGHTS_DIR)
    store = open_store(store_dir)
    inputs = explorer_inputs(run.corpus_dir, crosscoder, store, run.manager)
    inputs.interventions = intervention_cards(run.run_dir)
    return build_explorer(crosscoder, store, inputs)


def intervention_cards(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Latent -> its effects from the ``interventions`` analysis (none if it did not run)."""
    path = Path(run_dir) / "analyses" / "interventions" / "summary.json"
    if not path.is_file():
        return {}
    latents = json.loads(path.read_text()).get("latents", {})
    return {int(latent): effects for latent, effects in latents.items()}


def explorer_inputs(corpus_dir: Path, crosscoder, store, manager, load=None):
    """Tokens, each model's unembedding path and the MoE models' routing, for the explorer.

    The models load from the paths the store records, or through ``load`` (model name ->
    its adapter) where given (``crossdiff.open_run`` passes its own, loaded once)."""
    import functools

    import torch

    from crossdiff.adapters import load_adapter
    from crossdiff.corpus import load_sequences, load_tokenizer
    from crossdiff.errors import CrossdiffError
    from crossdiff.report.explorer import ExpertView, ExplorerInputs
    from crossdiff.store import store_alignments

    split = store.manifest["config"]["store"]["split"]
    input_ids = load_sequences(corpus_dir)[split].input_ids
    tokenizer = load_tokenizer(Path(corpus_dir) / "tokenizer")
    inputs = ExplorerInputs(functools.cache(lambda i: tokenizer.decode([i])), input_ids)
    paths = store.record.get("models", {})
    alignments = store_alignments(store)
    for name in crosscoder.cfg.models:
        if name not in paths:
            continue
        try:
            adapter = load(name) if load else load_adapter(paths[name], manager)
        except (OSError, CrossdiffError):  # e.g. a hub model while offline: no logits, routing
            continue
        # the deepest crosscoded site (logit_directions reads the decoder there)
        site = adapter.site(
            crosscoder.cfg.sites[-1] if crosscoder.cfg.sites else store.sites[name][0]
        )
        parameter = next(adapter.model.parameters())
        unembed = _unembedding(adapter, parameter.device, parameter.dtype)
        try:
            unembed(torch.zeros(1, site.dim))
        except (RuntimeError, ValueError):  # the site is not residual-width: no direct path
            unembed = None
        if unembed is not None:
            inputs.unembeds[name] = unembed
            if adapter.tokenizer is not None:
                own = adapter.tokenizer
                inputs.model_tokens[name] = functools.cache(lambda i, t=own: t.decode([i]))
        if site.layer in adapter.moe_layers():
            own_ids = alignments[name][input_ids] if name in alignments else input_ids
            inputs.experts[name] = ExpertView(
                site.layer, adapter.n_experts(site.layer), _router(adapter, own_ids, site.layer)
            )
    return inputs


def _unembedding(adapter, device, dtype):
    def unembed(hidden):
        return adapter.unembed(hidden.to(device, dtype)).float().cpu()

    return unembed


def _router(adapter, input_ids, layer: int, batch: int = 16):
    """``(sequences [B], positions [B]) -> [B, K]`` chosen experts, routing each sequence once."""
    import numpy as np
    import torch

    routed: dict[int, torch.Tensor] = {}

    def chosen(sequences: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        missing = sorted(set(sequences.tolist()) - set(routed))
        for start in range(0, len(missing), batch):
            rows = missing[start : start + batch]
            tokens = torch.as_tensor(np.asarray(input_ids[rows])).long()
            device = next(adapter.model.parameters()).device
            top = adapter.routing(tokens.to(device), [layer])[layer].topk_indices.cpu()
            for row, per_position in zip(rows, top.reshape(len(rows), tokens.shape[1], -1),
                                         strict=True):  # fmt: skip
                routed[row] = per_position
        return torch.stack(
            [routed[int(s)][int(p)] for s, p in zip(sequences, positions, strict=True)]
        )

    return chosen
