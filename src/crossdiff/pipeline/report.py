"""Assemble a run's ``summary.json`` (schema: docs/results-schema.md) and ``report.html``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossdiff.pipeline.run import Run
from crossdiff.report import ReportSection, TokenDashboard, write_report
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
    moe = moe_summary(summary["analyses"])
    if moe:
        summary["moe"] = moe
    return summary


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


def write_run_report(run: Run) -> Path:
    """Write ``RUN/report/summary.json`` and ``RUN/report/report.html``; return the page."""
    summary = build_summary(run)
    report_dir = run.run_dir / "report"
    atomic_write_json(report_dir / "summary.json", summary)
    sections = [
        ReportSection("Models", "The models compared, as trained here.", summary["models"]),
    ]
    if "crosscoder" in summary:
        sections.append(
            ReportSection(
                "Crosscoder",
                "Held-out fraction of variance explained per model and pooled, inference L0, "
                "dead fraction over the evaluation window, and CE loss recovered when each "
                "model's reconstruction is spliced back into it.",
                summary["crosscoder"],
            )
        )
    for name in run.config.analyses:
        data = summary["analyses"].get(name)
        if data is None:
            continue
        figures = sorted((run.run_dir / "analyses" / name).glob("*.png"))
        if name == "dashboards":
            sections.append(ReportSection("Dashboards", DASHBOARD_TEXT,
                                          dashboards=_dashboards(data)))  # fmt: skip
            continue
        table = summary.get("moe", {}).get(name) or {
            k: v for k, v in data.items() if not isinstance(v, list)
        }
        sections.append(ReportSection(name.replace("_", " ").capitalize(), "", table, figures))
    return write_report(report_dir / "report.html", f"crossdiff: {run.config.name}", sections)


DASHBOARD_TEXT = (
    "Top-activating held-out contexts of latents sampled from each class; each token is "
    "coloured by the latent's activation on it."
)


def _dashboards(data: dict[str, Any]) -> list[TokenDashboard]:
    boards = []
    for board in data.get("dashboards", []):
        title = (
            f"latent {board['latent']} ({board['class']}, density {board['density']:.2e}, "
            f"max activation {board['max_activation']:.3g})"
        )
        contexts = [(c["tokens"], c["values"]) for c in board["contexts"]]
        boards.append(TokenDashboard(title, contexts))
    return boards
