"""The run report's sections, findings first: claims, what was compared, training and quality,
latent classes, the MoE analyses as layer × domain grids, the other analyses, caveats."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from crossdiff.report.html import Figure, ReportSection, html_table

CAPTIONS = {
    "decoder_norm_histogram": "Relative decoder norm r of every latent (log count). Look at the "
    "tails: left of the dashed line at 0.1 the first model's exclusive latents, right of 0.9 the "
    "second's; the designated shared block (orange) sits at r = 0.5 by construction.",
    "density_per_class": "Firing density of the live latents of each class. Compare the exclusive "
    "classes with the shared one: the paper expects MoE-only latents denser, dense-only sparser.",
    "density_per_domain": "The same densities per domain: does the order of the classes hold "
    "in every domain?",
    "tokens_per_domain": "Tokens per domain and split: the balance of the data both models saw.",
    "routing": "Share of each domain's tokens routed to each expert, per MoE layer. A cell far "
    "above the uniform share is an expert that specialises in that domain.",
    "lift_matrix": "log2 lift P(expert | latent fires) / P(expert) of the most expert-specific "
    "latents (rows) over the experts (columns): red, the expert is chosen more often than "
    "average when the latent fires; blue, less.",
    "cosine_vs_n": "Cosine between the hidden state (or the MoE contribution) with only the top n "
    "experts kept and the model's own, per layer: how well the top expert approximates the "
    "mixture. n = 0 (hidden panel) removes every routed expert: the residual stream alone; the "
    "top expert matters only as far as it rises above that.",
    "perplexity_vs_n": "Held-out perplexity when every MoE layer keeps only its top n experts: "
    "the cost of dropping the rest.",
    "similarity_overlap": "Top-k overlap of token pairs against the cosine of their router "
    "inputs, per layer: a rising curve means similar inputs are routed alike.",
    "kl_by_class": "How far each model's next-token distribution moves (KL, log scale) when "
    "every latent of a class is removed from its activation at the crosscoded site. An "
    "exclusive class should move its own model and leave the other alone (bars at 1e-12: no "
    "change at all).",
    "collapse": "Cross-domain top-k overlap per layer against a shuffled baseline: a curve well "
    "above the baseline would mean unrelated inputs share experts.",
}


def caption(stem: str) -> str:
    """The caption of an analysis figure named ``stem`` (model suffixes ignored)."""
    for prefix, text in CAPTIONS.items():
        if stem == prefix or stem.startswith(prefix + "_"):
            model = stem[len(prefix) + 1 :]
            return f"{text} ({model})" if model else text
    return stem.replace("_", " ")


def report_sections(run: Any, summary: dict[str, Any], figure_dir: Path) -> list[ReportSection]:
    """Every section of a run's report, in reading order."""
    sections = [findings(summary), compared(summary)]
    sections.append(training(run, summary, figure_dir))
    if "features" in summary:
        sections.append(latent_classes(run, summary))
    if "interventions" in summary:
        sections.append(interventions(run, summary))
    moe = summary.get("moe", {})
    if "routing" in moe:
        sections.append(routing(run, summary))
    if "early_decoding" in moe:
        sections.append(early_decoding(run, summary))
    if "expert_alignment" in moe:
        sections.append(expert_alignment(run, summary))
    if "routing_similarity" in moe:
        sections.append(routing_similarity(run, summary))
    if "corpus_stats" in summary["analyses"]:
        sections.append(corpus(run, summary))
    sections.append(caveats(summary))
    if summary.get("warnings"):  # after every section has read its inputs
        sections.insert(1, warnings_section(summary["warnings"]))
    return sections


def warnings_section(warnings: list[str]) -> ReportSection:
    """The inputs the report could not read, each named, so no part is silently missing."""
    items = "".join(f"<li>{_escape(line)}</li>" for line in warnings)
    text = (
        f"{len(warnings)} input(s) of this report were damaged or missing; the parts built "
        "from them are left out."
    )
    return ReportSection("Warnings", text, blocks=[f'<ul class="warnings">{items}</ul>'])


def _figures(run: Any, analysis: str) -> list[Figure]:
    directory = run.run_dir / "analyses" / analysis
    return [Figure(p, caption(p.stem)) for p in sorted(directory.glob("*.png"))]


# ---------------------------------------------------------------- findings


def findings(summary: dict[str, Any]) -> ReportSection:
    """The claims table."""
    claims = summary.get("claims", [])
    verdicts = [_verdict(c) for c in claims]
    rows = [
        [c["source"], c["claim"], c["measured"], c["statistic"], _p(c), verdict]
        for c, verdict in zip(claims, verdicts, strict=True)
    ]
    css = {"holds": "holds-yes", "does not hold": "holds-no", "not testable": "holds-na"}
    classes = [css[v] for v in verdicts]
    held = verdicts.count("holds")
    untestable = verdicts.count("not testable")
    text = (
        f"{held} of {len(claims)} claims hold in this run"
        + (f" ({untestable} not testable)" if untestable else "")
        + ". Each claim names its criterion; the statistic is what the criterion was applied "
        "to. Claims judged by a test are Holm-adjusted together: p is the raw one-sided p and "
        "the Holm-adjusted one, and the verdict rests on the adjusted p."
        if claims
        else "This run measured nothing a claim could be judged on (no crosscoder or MoE "
        "analysis finished)."
    )
    table = html_table(
        ["source", "claim (criterion)", "measured", "statistic", "p (raw / Holm)", "verdict"],
        rows,
        "The claims this run can test",
        classes,
        ["", "", "", "", "", "verdict"],
        "claims-table",
    )
    return ReportSection("Findings", text, blocks=[table] if claims else [])


def _verdict(claim: dict[str, Any]) -> str:
    """``holds`` / ``does not hold`` / ``not testable`` (also from a summary without verdicts)."""
    if claim.get("verdict"):
        return claim["verdict"]
    return {True: "holds", False: "does not hold", None: "not testable"}[claim.get("holds")]


def _p(claim: dict[str, Any]) -> str:
    """``raw / adjusted`` p of a tested claim, ``–`` for one judged against a criterion."""
    if claim.get("p_value") is None:
        return "–"
    adjusted = claim.get("p_adjusted")
    return f"{claim['p_value']:.2g} / " + ("–" if adjusted is None else f"{adjusted:.2g}")


# ---------------------------------------------------------------- what was compared


def compared(summary: dict[str, Any]) -> ReportSection:
    """The models side by side and the crosscoder's settings."""
    models = summary["models"]
    names = list(models)
    settings = summary.get("crosscoder", {}).get("settings", {})
    sites = settings.get("sites", {})
    rows: list[list[Any]] = [
        ["architecture", *(_architecture(models[n]) for n in names)],
        ["loaded from", *(models[n].get("path") or "trained in this run" for n in names)],
        ["crosscoded site", *(sites.get(n) for n in names)],
        ["active parameters", *(models[n].get("active_params") for n in names)],
        ["total parameters", *(models[n].get("total_params") for n in names)],
        ["training tokens", *(_training_tokens(models[n]) for n in names)],
    ]
    domains = sorted({d for n in names for d in models[n].get("val_loss", {})})
    for domain in domains:
        rows.append(
            [
                f"held-out loss, {domain} (nats)",
                *(models[n].get("val_loss", {}).get(domain) for n in names),
            ]
        )
    for domain in domains:
        rows.append(
            [
                f"unigram entropy, {domain} (nats)",
                *(models[n].get("unigram_entropy", {}).get(domain) for n in names),
            ]
        )
    if any("expert_usage_min_share" in models[n] for n in names):
        rows.append(
            [
                "least-used expert's share of tokens",
                *(models[n].get("expert_usage_min_share") for n in names),
            ]
        )
    blocks = [html_table(["", *names], rows, "The models, side by side", table_id="models")]
    if settings:
        ratio = settings.get("shared_sparsity_ratio")
        lam = settings.get("sparsity_coeff")
        crosscoder_rows = [
            ["dictionary size (latents)", settings.get("dict_size")],
            ["k (mean active latents per token, BatchTopK)", settings.get("k")],
            ["sparsity weight λ", lam],
            ["designated shared block (latents, tied decoder)", settings.get("n_shared")],
            ["λ of the shared block", lam * ratio if lam is not None and ratio else None],
            [
                "dedicated blocks (latents per model, zero decoder into the others)",
                ", ".join(str(n) for n in settings.get("n_dedicated") or []) or "none",
            ],
            ["training steps", settings.get("steps")],
            ["batch size (tokens)", settings.get("batch_size")],
            ["training tokens", settings.get("train_tokens")],
            ["held-out tokens (evaluation)", summary["crosscoder"].get("eval_window_tokens")],
        ]
        blocks.append(
            html_table(
                ["crosscoder setting", "value"],
                crosscoder_rows,
                "The crosscoder",
                table_id="crosscoder-settings",
            )
        )
    return ReportSection("What was compared", blocks=blocks)


def _architecture(model: dict[str, Any]) -> Any:
    """``dense``/``moe``, with the class of a model given by path (``moe — Qwen2MoeFor…``)."""
    arch, architecture = model.get("arch"), model.get("architecture")
    return f"{arch} — {architecture}" if arch and architecture else arch


def _training_tokens(model: dict[str, Any]) -> Any:
    """Tokens the model trained on, or why they are not known."""
    if model.get("tokens_seen") is None and model.get("path") and "arch" in model:
        return "not recorded (given by path)"
    return model.get("tokens_seen")


def ce_comment(summary: dict[str, Any]) -> str:
    """A note for CE recovered outside [0, 1] (above 1: the spliced run beat the model's own
    activations; below 0: it did worse than zeroing the site), with the zero-ablation effect
    that the ratio divides by; empty when every value is in [0, 1]."""
    quality = summary.get("crosscoder", {})
    outside = {
        m: v for m, v in (quality.get("ce_recovered") or {}).items()
        if v is not None and not 0 <= v <= 1
    }  # fmt: skip
    if not outside:
        return ""
    gaps = quality.get("ce_zero_ablation_increase") or {}
    parts = [
        f"{m} {v:.3g}"
        + (
            f" (zero-ablating the site changes the loss by {gaps[m]:+.2g} nats)"
            if m in gaps
            else ""
        )
        for m, v in outside.items()
    ]
    return (
        "CE recovered outside [0, 1] (" + "; ".join(parts) + "). Above 1 the spliced "
        "reconstruction gave a lower loss than the model's own activations, below 0 a higher "
        "one than zeroing the site. Neither is a verdict on the crosscoder by itself: the ratio "
        "divides by the loss increase of zero-ablating the site, and when that is small or "
        "negative (an untrained or randomly initialised model, a site that matters little) a "
        "small difference in the spliced loss becomes a large ratio, or a meaningless one. Read "
        "it with that increase beside it, and over more held-out sequences "
        "(crosscoder.ce_sequences)."
    )


# ---------------------------------------------------------------- training and quality


def training(run: Any, summary: dict[str, Any], figure_dir: Path) -> ReportSection:
    """Training curves of the models and the crosscoder's held-out quality."""
    from crossdiff.report.inputs import read_input

    figures = []
    logs = {}
    warnings = summary.setdefault("warnings", [])
    for name, model in summary["models"].items():
        path = run.run_dir / "models" / name / "train_log.json"
        trained = model.get("path") is None and "arch" in model  # its models stage finished
        log = read_input(path, f"model {name!r}'s train_log.json", warnings, trained)
        if log is not None:
            logs[name] = log
    if logs:
        figure_dir.mkdir(parents=True, exist_ok=True)
        path = figure_dir / "model_training.png"
        draw_training(logs, path)
        figures.append(
            Figure(
                path,
                "The models' training loss (left, per step) and held-out loss per "
                "domain (right, at each evaluation). Look for both models ending at "
                "similar held-out losses: the comparison assumes comparable models.",
            )
        )
    crosscoder_log = read_input(
        run.run_dir / "crosscoder" / "train_log.json", "the crosscoder's train_log.json",
        warnings, "crosscoder" in summary,
    )  # fmt: skip
    if crosscoder_log is not None:
        figure_dir.mkdir(parents=True, exist_ok=True)
        path = figure_dir / "crosscoder_training.png"
        draw_crosscoder_training(crosscoder_log["history"], path)
        figures.append(
            Figure(
                path,
                "The crosscoder's training: loss, pooled FVE on each training batch, active "
                "latents per token (L0) and the dead fraction, per step. Look for FVE levelling "
                "off, L0 near k and the dead fraction falling.",
            )
        )
    blocks = []
    quality = summary.get("crosscoder")
    if quality:
        names = list(quality["fve"])
        rows = [[f"fraction of variance explained, {n}", quality["fve"][n]] for n in names]
        rows += [
            ["mean active latents per token (L0)", quality.get("l0")],
            ["dead fraction (never fired in the evaluation window)", quality.get("dead_fraction")],
        ]
        rows += [[f"CE loss recovered, {m}", v] for m, v in quality.get("ce_recovered", {}).items()]
        blocks.append(
            html_table(
                ["crosscoder quality (held-out)", "value"],
                rows,
                "FVE = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²; CE recovered = (CE_zero − "
                "CE_spliced) / (CE_zero − CE_clean)",
                table_id="crosscoder-quality",
            )
        )
        comment = ce_comment(summary)
        if comment:
            blocks.append(f"<p class='note' id='ce-outside'>{html.escape(comment)}</p>")
    text = (
        "The crosscoder's curve is drawn when its stage kept one (train_log.json, written since "
        "this report's version); its held-out quality is in the table."
    )
    return ReportSection("Training and quality", text, figures=figures, blocks=blocks)


def draw_crosscoder_training(history: list[dict[str, Any]], path: Path) -> None:
    """Four panels against the step: loss, FVE, L0, dead fraction."""
    from crossdiff.figures import new_figure, save_figure

    figure = new_figure(12, 3.2)
    steps = [h["step"] for h in history]
    panels = (
        ("loss", "loss (normalised units)"),
        ("fve", "FVE (training batch)"),
        ("l0", "L0 (active latents / token)"),
        ("dead_fraction", "dead fraction"),
    )
    for axes, (key, label) in zip(figure.subplots(1, 4), panels, strict=True):
        axes.plot(steps, [h[key] for h in history], linewidth=1)
        axes.set_xlabel("training step")
        axes.set_ylabel(label)
    save_figure(figure, path)


def draw_training(logs: dict[str, dict[str, Any]], path: Path) -> None:
    """Two panels: training loss per step, held-out loss per domain at each evaluation."""
    from crossdiff.figures import new_figure, save_figure

    figure = new_figure(10, 3.6)
    left, right = figure.subplots(1, 2)
    for name, log in logs.items():
        history = log.get("history", [])
        left.plot(
            [h["step"] for h in history], [h["loss"] for h in history], label=name, linewidth=1
        )
        evals = log.get("evals", [])
        domains = sorted({d for e in evals for d in e.get("val_loss", {})})
        for domain in domains:
            points = [(e["step"], e["val_loss"][domain]) for e in evals if domain in e["val_loss"]]
            right.plot(*zip(*points, strict=True), marker=".", label=f"{name}, {domain}")
    left.set_xlabel("training step")
    left.set_ylabel("training loss (nats / token)")
    left.legend()
    right.set_xlabel("training step")
    right.set_ylabel("held-out loss (nats / token)")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7, ncol=2)
    save_figure(figure, path)


# ---------------------------------------------------------------- latent classes


def latent_classes(run: Any, summary: dict[str, Any]) -> ReportSection:
    """Class counts, densities per class and domain, latent scaling."""
    features = summary["features"]
    density = summary["analyses"].get("density", {})
    scaling = summary["analyses"].get("feature_classes", {}).get("latent_scaling", {})
    domains = sorted(density.get("per_domain_median", {}))
    rows = []
    for label, count in features["counts"].items():
        flagged = scaling.get(label, {}).get("flagged_as_shared")
        rows.append(
            [
                label,
                count,
                density.get("median", {}).get(label),
                *(density["per_domain_median"][d].get(label) for d in domains),
                flagged,
                scaling.get(label, {}).get("median_scaled_ratio"),
            ]
        )
    header = [
        "class",
        "live latents",
        "median density",
        *(f"median density, {d}" for d in domains),
        "flagged by latent scaling",
        "median ν",
    ]
    shared = features.get("designated_shared", {})
    text = (
        f"{features.get('dead', 0)} latents never fired on the held-out tokens. Of the shared "
        f"latents, {shared.get('total', 0)} are the designated (tied) block and "
        f"{features.get('emergent_shared', 0)} emerged. Density is the share of held-out tokens on "
        "which a latent fires. Latent scaling flags an exclusive latent whose fitted scales ν lie "
        "in the shared band (0.1–0.9): it also explains the other model's activations."
    )
    table = html_table(header, rows, "Latents per class", table_id="classes")
    figures = _figures(run, "feature_classes") + _figures(run, "density")
    return ReportSection("Latent classes", text, blocks=[table], figures=figures)


# ---------------------------------------------------------------- MoE analyses


def interventions(run: Any, summary: dict[str, Any]) -> ReportSection:
    """Δ loss and KL per class and model when the whole class is ablated."""
    data = summary["interventions"]
    models = list(next(iter(data.values()))["delta_loss"]) if data else []
    rows = [
        [
            label,
            c["latents"],
            c["own_model"] or "all",
            *(c["delta_loss"][m] for m in models),
            *(c["kl"][m] for m in models),
            c["kl_own_over_other"],
        ]
        for label, c in data.items()
    ]
    table = html_table(
        ["class", "latents", "own model", *(f"Δ loss {m}" for m in models),
         *(f"KL {m}" for m in models), "KL own / other"],
        rows,
        "Ablating every latent of a class in each model (held-out text, nats per token)",
    )  # fmt: skip
    settings = summary["analyses"]["interventions"]["settings"]
    text = (
        "Does a latent class matter causally to the model it decodes into? Each class's latents "
        "are removed from a model's activation at the crosscoded site (their activation times "
        "their decoder vector into that model) and the model runs on; the table gives the "
        "change in next-token loss (negative: the model predicts better without them) and the "
        "KL of the next-token distribution, on "
        f"{settings['max_sequences']} held-out sequences per domain. A latent's card in the "
        "explorer shows the same for the most active latents of each class, one at a time."
    )
    return ReportSection(
        "Interventions", text, blocks=[table], figures=_figures(run, "interventions")
    )


def _grid(layers: dict[str, dict[str, Any]], key: str, domains: list[str]) -> list[list[Any]]:
    return [
        [int(layer), *(layers[layer].get(d, {}).get(key) for d in domains)]
        for layer in sorted(layers, key=int)
    ]


def routing(run: Any, summary: dict[str, Any]) -> ReportSection:
    """Layer × domain grids of the busiest expert's share, experts for half, entropy."""
    blocks = []
    for model, layers in summary["moe"]["routing"].items():
        any_layer = next(iter(layers.values()))
        domains = [d for d in any_layer if isinstance(any_layer[d], dict)]
        uniform = any_layer["uniform_share"]
        for key, what in (
            (
                "top_share",
                f"share of the domain's tokens routed to its busiest expert "
                f"(uniform: {uniform:.3g})",
            ),
            (
                "top_share_elsewhere",
                "the same expert's share of the other domains' tokens (a domain-specific expert "
                "has it well below its share on the domain)",
            ),
            ("experts_for_half", "fewest experts covering half of the domain's routing decisions"),
            ("entropy", "routing entropy / log E (1 = uniform)"),
        ):
            blocks.append(
                html_table(["layer", *domains], _grid(layers, key, domains), f"{model}: {what}")
            )
    return ReportSection(
        "Routing",
        "Rows are MoE layers, columns domains.",
        blocks=blocks,
        figures=_figures(run, "routing"),
    )


def early_decoding(run: Any, summary: dict[str, Any]) -> ReportSection:
    """Cosines per layer × n kept, perplexity per domain × n."""
    blocks = []
    for model, data in summary["moe"]["early_decoding"].items():
        ns = sorted({n for by_n in data["cosine"].values() for n in by_n}, key=int)
        baseline = data.get("no_routed_experts") or {}
        rows = [
            [
                int(layer),
                *(by_n.get(n, {}).get(k) for n in ns for k in ("contribution", "hidden")),
                (baseline.get(layer) or {}).get("hidden"),
            ]
            for layer, by_n in sorted(data["cosine"].items(), key=lambda x: int(x[0]))
        ]
        header = [
            "layer",
            *(f"top {n}: cos({k})" for n in ns for k in ("contribution", "hidden")),
            "no routed expert: cos(hidden)",
        ]
        blocks.append(html_table(header, rows, f"{model}: keeping the top n experts in one layer"))
        pns = sorted({n for by_n in data["perplexity"].values() for n in by_n}, key=int)
        rows = [
            [
                d,
                *(by_n.get(n) for n in pns),
                *(data["perplexity_increase"].get(d, {}).get(n) for n in pns[:-1]),
            ]
            for d, by_n in data["perplexity"].items()
        ]
        header = [
            "domain",
            *(f"perplexity, top {n}" for n in pns),
            *(f"increase, top {n} (fraction)" for n in pns[:-1]),
        ]
        blocks.append(
            html_table(
                header,
                rows,
                f"{model}: held-out perplexity when every MoE layer keeps its "
                "top n experts (weights as routed)",
            )
        )
    return ReportSection("Early decoding", blocks=blocks, figures=_figures(run, "early_decoding"))


def expert_alignment(run: Any, summary: dict[str, Any]) -> ReportSection:
    """Latents owned per expert and the share of each class that is expert-specific."""
    blocks = []
    for model, data in summary["moe"]["expert_alignment"].items():
        owned = data["owned"]
        blocks.append(
            html_table(
                ["expert", *range(len(owned))],
                [["latents owned", *owned]],
                f"{model}, layer {data['layer']}: expert-specific latents owned by each expert",
            )
        )
        blocks.append(
            html_table(
                ["class", "share expert-specific"],
                [[c, v] for c, v in data["specific_share"].items()],
                f"{model}: share of each class's live latents that one expert owns",
            )
        )
    return ReportSection(
        "Expert alignment", blocks=blocks, figures=_figures(run, "expert_alignment")
    )


SIMILARITY_COLUMNS = [
    ("spearman_within", "ρ within domains"),
    ("spearman_across", "ρ across domains"),
    ("spearman_mean_removed", "ρ, mean removed"),
    ("sequence_spearman", "ρ, sequences"),
    ("overlap_across", "cross-domain overlap"),
    ("shuffled_baseline", "shuffled baseline"),
    ("mean_direction_share", "mean-direction share"),
    ("entropy", "routing entropy"),
    ("prompt_own_continuation", "prompt vs own continuation"),
    ("prompt_other_continuations", "prompt vs others' continuations"),
]


def routing_similarity(run: Any, summary: dict[str, Any]) -> ReportSection:
    """One row per layer: the similarity–overlap correlations and the collapse measures."""
    blocks = []
    for model, layers in summary["moe"]["routing_similarity"].items():
        if model == "cross_model":
            continue
        rows = [
            [int(layer), *(layers[layer].get(k) for k, _ in SIMILARITY_COLUMNS)]
            for layer in sorted(layers, key=int)
        ]
        blocks.append(
            html_table(
                ["layer", *(t for _, t in SIMILARITY_COLUMNS)],
                rows,
                f"{model}: Spearman ρ of cos(router inputs) vs top-k overlap, "
                "and the overlap of unrelated inputs",
            )
        )
    return ReportSection(
        "Routing similarity", blocks=blocks, figures=_figures(run, "routing_similarity")
    )


def corpus(run: Any, summary: dict[str, Any]) -> ReportSection:
    """Tokens and unigram entropy per domain and split."""
    stats = summary["analyses"]["corpus_stats"]
    rows = [
        [
            d,
            s.get("train", {}).get("tokens"),
            s.get("validation", {}).get("tokens"),
            s.get("validation", {}).get("unigram_entropy"),
        ]
        for d, s in stats.items()
        if isinstance(s, dict)
    ]
    table = html_table(
        ["domain", "training tokens", "held-out tokens", "held-out unigram entropy (nats)"],
        rows,
        "The corpus",
    )
    return ReportSection("Corpus", blocks=[table], figures=_figures(run, "corpus_stats"))


def caveats(summary: dict[str, Any]) -> ReportSection:
    """What limits the conclusions, from the run's own numbers."""
    items = [
        "Exclusive classes depend on the sparsity weight λ: with λ = 0 no exclusive latent forms; "
        "counts move with λ (see docs/results.md for a sweep).",
        "Density tests treat latents as independent samples; with few exclusive latents a "
        "p-value rests on a handful of them.",
        "Logit effects follow the direct path only (decoder direction → final norm → "
        "unembedding); later blocks can change what a latent does to the output.",
        "The models are trained separately, so a shared latent's two decoder directions live "
        "in unaligned bases; their cosine does not measure sameness.",
    ]
    scaling = summary["analyses"].get("feature_classes", {}).get("latent_scaling", {})
    for label, data in scaling.items():
        if data.get("latents"):
            items.append(
                f"Latent scaling flags {data['flagged_as_shared']} of {data['latents']} {label} "
                "latents as also explaining the other model: many 'exclusive' latents are "
                "skewed rather than absent from the other model."
            )
    blocks = ["<ul>" + "".join(f"<li>{_escape(i)}</li>" for i in items) + "</ul>"]
    return ReportSection("Caveats", blocks=blocks)


def _escape(text: str) -> str:
    import html

    return html.escape(text)
