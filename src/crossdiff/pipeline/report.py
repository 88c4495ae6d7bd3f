"""Assemble a run's ``summary.json`` (schema: docs/results-schema.md) and ``report.html``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from crossdiff.pipeline.run import Run
from crossdiff.pipeline.stages import DESCRIPTION
from crossdiff.report import write_report
from crossdiff.report.inputs import read_input
from crossdiff.stages import atomic_write_json, read_manifest

MODEL_KEYS = ("arch", "active_params", "total_params", "tokens_seen", "val_loss", "unigram_entropy")
DENSITY_TEST_KEYS = ("p_value", "p_greater", "p_less", "effect_size", "ratio", "ratio_ci", "n")
"""The entries of each density test that summary.json keeps (docs/results-schema.md); the claims
read the one-sided p and n."""


def _manifest(directory: Path, what: str, warnings: list[str]) -> dict[str, Any] | None:
    from crossdiff.errors import DamagedFileError

    try:
        return read_manifest(directory) if directory.is_dir() else None
    except DamagedFileError as error:
        warnings.append(f"{what}: {error}")
        return None


def build_summary(run: Run, warnings: list[str] | None = None) -> dict[str, Any]:
    """The run's results in one JSON document (see docs/results-schema.md); an input that is
    damaged, or missing where its stage ran, adds a line to ``warnings``."""
    warnings = [] if warnings is None else warnings
    summary: dict[str, Any] = {"name": run.config.name, "models": {}, "analyses": {}}
    for name, spec in run.config.models.items():
        directory = run.model_dir(name) if spec.path is None else Path(spec.path)
        manifest = _manifest(directory, f"model {name!r}", warnings)
        if spec.path is None and not (manifest and manifest.get("stage") == "models"):
            warnings.append(
                f"model {name!r} has no models manifest.json in {str(directory)!r}: its row "
                "of the comparison is left out; rerun `crossdiff run` to train it"
            )
        if manifest and manifest.get("stage") == "models":
            summary["models"][name] = {k: manifest[k] for k in MODEL_KEYS if k in manifest}
            if spec.path is not None:
                summary["models"][name]["path"] = spec.path
            if "expert_usage_min_share" in manifest:
                summary["models"][name]["expert_usage_min_share"] = manifest[
                    "expert_usage_min_share"
                ]
        elif (run.model_dir(name) / DESCRIPTION).is_file():  # given by path, described
            description = (
                read_input(
                    run.model_dir(name) / DESCRIPTION, f"model {name!r}'s description", warnings
                )
                or {}
            )
            keys = (*MODEL_KEYS, "architecture", "val_tokens", "path")
            summary["models"][name] = {k: description[k] for k in keys if k in description}
        else:
            summary["models"][name] = {"path": spec.path}
    metrics_path = run.crosscoder_dir / "metrics.json"
    crosscoder_ran = (run.crosscoder_dir / "manifest.json").is_file()
    metrics = read_input(metrics_path, "the crosscoder's metrics.json", warnings, crosscoder_ran)
    if metrics is not None:
        summary["crosscoder"] = {
            "fve": {**metrics["fve"], "pooled": metrics["fve_pooled"]},
            "l0": metrics["l0"],
            "dead_fraction": metrics["dead_fraction"],
            "ce_recovered": {
                m: r["recovered"] for m, r in (metrics.get("ce_recovered") or {}).items()
            },
            "eval_window_tokens": metrics.get("eval_window_tokens"),
            "ce_zero_ablation_increase": {
                m: r["ce_zero"] - r["ce_clean"]
                for m, r in (metrics.get("ce_recovered") or {}).items()
            },
        }
    for name in run.config.analyses:
        path = run.run_dir / "analyses" / name / "summary.json"
        data = read_input(path, f"analysis {name!r}'s summary.json", warnings)
        if data is not None:
            summary["analyses"][name] = data
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
                name: {k: t[k] for k in DENSITY_TEST_KEYS if k in t}
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
ROUTING_DOMAIN_KEYS = (
    "top_share",
    "top_expert",
    "top_share_elsewhere",
    "experts_for_half",
    "entropy",
    "tokens",
)


def moe_summary(analyses: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of the MoE analyses that ran (docs/results-schema.md, ``moe``)."""
    out: dict[str, Any] = {}
    routing = analyses.get("routing")
    if routing:
        out["routing"] = {
            model: {
                layer: {
                    "uniform_share": stats["uniform_share"],
                    **(
                        {"uniform_experts_for_half": stats["uniform_experts_for_half"]}
                        if "uniform_experts_for_half" in stats
                        else {}
                    ),
                    **{
                        domain: {k: d[k] for k in ROUTING_DOMAIN_KEYS if k in d}
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
                        n: {
                            **{k: m[f"{k}_cosine"] for k in ("contribution", "hidden")},
                            "lens_kl": m.get("lens_kl"),
                        }
                        for n, m in stats["as_routed"].items()
                    }
                    for layer, stats in data["layers"].items()
                    if "as_routed" in stats
                },
                "no_routed_experts": {
                    layer: {
                        "hidden": stats["no_routed_experts"]["hidden_cosine"],
                        "lens_kl": stats["no_routed_experts"]["lens_kl"],
                    }
                    for layer, stats in data["layers"].items()
                    if "no_routed_experts" in stats
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


CROSS_MODEL_KEYS = (
    "matched_overlap",
    "unmatched_overlap",
    "chance",
    "different_input_overlap",
    "same_vs_different_p",
    "sequences",
)


def similarity_summary(data: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of ``routing_similarity`` (docs/results-schema.md)."""
    out: dict[str, Any] = {}
    for model, summary in data["models"].items():
        prompts_info = summary.get("prompt_continuation", {})
        prompts = prompts_info.get("layers", {})
        out[model] = {}
        for layer, stats in summary["layers"].items():
            token, prompt = stats["token"], prompts.get(layer, {})
            collapse = stats["collapse"]
            within, sequence = token["within"], stats["sequence"]["all"]
            out[model][layer] = {
                "spearman_within": within["spearman"],
                "spearman_within_p": within.get("spearman_p"),
                "spearman_within_ci": within.get("spearman_ci"),
                "pairs_within": within["pairs"],
                "spearman_across": token["across"]["spearman"],
                "spearman_mean_removed": token["within_mean_removed"]["spearman"],
                "overlap_within": token["within"]["mean_overlap"],
                "overlap_across": token["across"]["mean_overlap"],
                "sequence_spearman": sequence["spearman"],
                "sequence_spearman_p": sequence.get("spearman_p"),
                "sequence_spearman_ci": sequence.get("spearman_ci"),
                "sequence_pairs": sequence["pairs"],
                "shuffled_baseline": collapse["shuffled_baseline"],
                "ratio": collapse["ratio"],
                "mean_direction_share": collapse["mean_direction_share"],
                "entropy": collapse["entropy"],
                "prompt_own_continuation": prompt.get("own_continuation"),
                "prompt_other_continuations": prompt.get("other_continuations"),
                "prompt_advantages": prompt.get("advantages"),
                "distinct_prompts": prompts_info.get("distinct_prompts"),
            }
    out["cross_model"] = {
        pair: {
            layers: {k: v[k] for k in CROSS_MODEL_KEYS if k in v} for layers, v in per_layer.items()
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


REPORT_STAGE = "report"


def report_settings(run: Run) -> dict[str, Any]:
    """What the report's manifest records as its settings."""
    return {"name": run.config.name}


def write_run_report(run: Run, log: Callable[[str], None] | None = None) -> Path:
    """Write ``RUN/report/summary.json`` and the report folder (``report.html``, ``assets/``,
    ``latents/``); return the page.

    The report directory is locked while it is written (a second writer is refused by name),
    and its ``manifest.json`` says ``complete`` only once every file is written. A damaged or
    missing input is a warning in the report (``summary["warnings"]``, a section) and in
    ``log``, never a silently missing part."""
    from crossdiff.stages import stage_lock, write_manifest

    report_dir = run.run_dir / "report"
    with stage_lock(report_dir):
        write_manifest(report_dir, REPORT_STAGE, report_settings(run), complete=False)
        page = _write_report_files(run, report_dir, log or (lambda line: None))
        write_manifest(report_dir, REPORT_STAGE, report_settings(run), complete=True)
    return page


def _write_report_files(run: Run, report_dir: Path, log: Callable[[str], None]) -> Path:
    from crossdiff.report.claims import run_claims
    from crossdiff.report.sections import report_sections

    warnings: list[str] = []
    summary = build_summary(run, warnings)
    settings = crosscoder_settings(run)
    if settings and "crosscoder" in summary:
        summary["crosscoder"]["settings"] = settings
    explorer = run_explorer(run, warnings)
    if explorer is not None:
        summary["explorer"] = {"latents": len(explorer[0]["rows"])}
    summary["claims"] = [claim.as_dict() for claim in run_claims(summary)]
    summary["warnings"] = warnings  # report_sections adds those of the inputs it reads
    sections = report_sections(run, summary, report_dir / "figures")
    for line in warnings:
        log(f"  warning: {line}")
    atomic_write_json(report_dir / "summary.json", summary)
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


def run_explorer(run: Run, warnings: list[str] | None = None):
    """``(index, cards)`` of the latent explorer, or None without a finished crosscoder; a
    model whose logit effects or routing cannot be shown adds a line to ``warnings``."""
    from crossdiff.crosscoder import Crosscoder
    from crossdiff.crosscoder.stage import WEIGHTS_DIR
    from crossdiff.errors import CrossdiffError
    from crossdiff.report.explorer import build_explorer
    from crossdiff.store import open_store
    from crossdiff.verify import verify_stage_files

    warnings = [] if warnings is None else warnings
    try:
        manifest = read_manifest(run.crosscoder_dir)
        store_dir = run.store_dir("validation")
        if not (manifest and manifest.get("complete")) or read_manifest(store_dir) is None:
            return None
        verify_stage_files(run.crosscoder_dir, manifest)
        crosscoder = Crosscoder.from_pretrained(run.crosscoder_dir / WEIGHTS_DIR)
        store = open_store(store_dir)
        inputs = explorer_inputs(run.corpus_dir, crosscoder, store, run.manager, warnings=warnings)
    except CrossdiffError as error:  # a damaged or missing input: named, not dropped
        warnings.append(f"{error}: the latent explorer is left out")
        return None
    inputs.interventions = intervention_cards(run.run_dir, warnings)
    return build_explorer(crosscoder, store, inputs)


def intervention_cards(
    run_dir: Path, warnings: list[str] | None = None
) -> dict[int, dict[str, Any]]:
    """Latent -> its effects from the ``interventions`` analysis (none if it did not run); a
    damaged summary adds a line to ``warnings`` (the cards then show no effects)."""
    path = Path(run_dir) / "analyses" / "interventions" / "summary.json"
    summary = read_input(path, "the interventions analysis's summary.json", [] if warnings
                         is None else warnings, required=False)  # fmt: skip
    latents = summary.get("latents", {}) if isinstance(summary, dict) else {}
    return {int(latent): effects for latent, effects in latents.items()}


def explorer_inputs(
    corpus_dir: Path, crosscoder, store, manager, load=None, warnings: list[str] | None = None
):
    """Tokens, each model's unembedding path and the MoE models' routing, for the explorer.

    The models load from the paths the store records, or through ``load`` (model name ->
    its adapter) where given (``crossdiff.open_run`` passes its own, loaded once); a model that
    cannot be loaded is named in ``warnings`` (its logit effects and routing are left out)."""
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
    warnings = [] if warnings is None else warnings
    for name in crosscoder.cfg.models:
        if name not in paths:
            warnings.append(
                f"the store records no path for model {name!r}: the explorer shows no logit "
                "effects or routing for it"
            )
            continue
        try:
            adapter = load(name) if load else load_adapter(paths[name], manager)
        except (OSError, ValueError, CrossdiffError) as error:  # e.g. a hub model offline
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            warnings.append(
                f"model {name!r} could not be loaded from {paths[name]!r} ({first}): the "
                "explorer shows no logit effects or routing for it"
            )
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
