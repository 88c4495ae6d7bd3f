"""The toy run's ``summary.json`` and offline ``report.html`` from the sweeps' records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossdiff.stages import atomic_write_json
from crossdiff.toy import aggregate
from crossdiff.toy.config import ToyRunConfig

SUMMARY = "summary.json"
REPORT = "report.html"


def build_summary(config: ToyRunConfig, results: dict[str, list[dict]]) -> dict[str, Any]:
    """Per sweep: its model count, figure kind, the reduced numbers of that kind and the
    per-expert numbers; the verdicts of the claims the config lists."""
    from crossdiff.toy.claims import judge_claims

    sweeps: dict[str, Any] = {}
    for name, records in results.items():
        sweep = config.sweeps[name]
        entry: dict[str, Any] = {
            "title": sweep.title or name,
            "figure": sweep.figure,
            "models": len(records),
            "mean_loss": sum(r["loss"] for r in records) / len(records),
        }
        if sweep.figure == "phase":
            entry["phase"] = aggregate.phase_grid(records)
        elif sweep.figure == "network_sparsity":
            entry["network_sparsity"] = aggregate.network_sparsity_table(records)
        elif sweep.figure == "init":
            entry["init"] = aggregate.init_table(records)
        entry["per_expert"] = aggregate.per_expert_rows(records)
        sweeps[name] = entry
    figures = {name: config.sweeps[name].figure for name in results}
    verdicts = judge_claims(config.claims, results, figures)
    return {
        "name": config.name,
        "models": sum(len(r) for r in results.values()),
        "claims": [v.as_dict() for v in verdicts],
        "sweeps": sweeps,
    }


VERDICT_CLASSES = {"holds": "holds-yes", "does not hold": "holds-no", "not testable": ""}


def claims_section(verdicts: list[dict[str, Any]]) -> Any:
    """The verdict table: claim, criterion, measured, statistic, n, p, Holm p, verdict."""
    from crossdiff.report import ReportSection
    from crossdiff.report.html import html_table

    rows = [
        [v["statement"], v["criterion"], v["measured"], v["statistic"], v["n"], v["p_value"],
         v["p_adjusted"], v["verdict"]]
        for v in verdicts
    ]  # fmt: skip
    table = html_table(
        ["claim", "criterion", "measured", "statistic", "n", "p (one-sided)", "p (Holm)",
         "verdict"],
        rows,
        row_classes=[VERDICT_CLASSES.get(v["verdict"], "") for v in verdicts],
        cell_classes=[""] * 7 + ["verdict"],
    )  # fmt: skip
    text = (
        "Each claim of the seed study the config lists, judged from this run's sweeps: holds, "
        "does not hold, or not testable (too few models, a missing sweep or an undefined "
        "statistic). p-values are one-sided and Holm-corrected across the claims with one."
    )
    return ReportSection("Claims", text, blocks=[table])


def per_expert_block(rows: list[dict[str, Any]]) -> str:
    """Per setting and expert (ranked by usage): mean over seeds of the per-expert numbers."""
    from crossdiff.report.html import html_table

    header = [
        "setting", "expert (by usage)", "models", "usage", "D*", "superposition", "represented",
        "dedicated share", "monosemantic dims",
    ]  # fmt: skip
    body = [
        [row["setting"], row["rank"], row["models"]] + [row[m] for m in aggregate.EXPERT_METRICS]
        for row in rows
    ]
    caption = (
        "Per expert, mean over seeds: usage share, D* = m/‖W‖², mean superposition "
        "Σ_{j≠i}(Ŵ_i·W_j)² of its represented features, represented features (‖W_i‖ ≥ 0.5), "
        "dedicated share (D_i ≥ 0.9) and monosemantic hidden-dimension fraction."
    )
    return html_table(header, body, caption=caption)


def write_toy_report(
    config: ToyRunConfig, out: str | Path, results: dict[str, list[dict]]
) -> dict[str, Any]:
    """Write ``OUT/report/summary.json``, the figures and ``report.html``; the summary."""
    from crossdiff.report import ReportSection, write_report
    from crossdiff.toy import figures
    from crossdiff.toy.stage import REPORT_DIR, SWEEPS_DIR, load_expert_weights

    target = Path(out) / REPORT_DIR
    target.mkdir(parents=True, exist_ok=True)
    summary = build_summary(config, results)
    sections = [claims_section(summary["claims"])] if summary["claims"] else []
    phases = [(s["title"], s["phase"]) for s in summary["sweeps"].values() if "phase" in s]
    if phases:
        sections.append(
            ReportSection(
                "Phase diagrams (n = 2, m = 1): dense and MoE side by side",
                "The second feature's state in each cell's lowest-loss seed (its experts' states "
                "weighted by their routing weight where the feature is present; ignored when "
                "‖W_i‖ < 0.5, dedicated when D_i ≥ 0.9, superposed otherwise) and its "
                "dimensionality D_i weighted the same way, over feature density and relative "
                "importance.",
                {
                    f"{title}: largest jump of ‖W_2‖² at density {1 - s:.3g}": jump
                    for title, grid in phases
                    for s, jump in zip(grid["sparsity"], grid["max_jump"], strict=True)
                    if s in (grid["sparsity"][0], grid["sparsity"][-1])
                },
                [
                    figures.phase_figure(phases, target / "phase_state.png", "state"),
                    figures.phase_figure(
                        phases, target / "phase_dimensionality.png", "dimensionality"
                    ),
                ],
            )
        )
    for name, entry in summary["sweeps"].items():
        records = results[name]
        figs: list[Path] = []
        table: dict[str, Any] = {
            "models": entry["models"],
            "mean held-out loss": entry["mean_loss"],
        }
        if "network_sparsity" in entry:
            rows = entry["network_sparsity"]
            figs.append(figures.network_sparsity_figure(rows, target / f"{name}_k_over_E.png"))
            for row in rows:
                label = f"E={row['n_experts']} k={row['k']} (k/E {row['k_over_E']:.3g})"
                table[label] = _mean_std_text(row, "monosemantic_fraction", "specialisation")
        if "init" in entry:
            rows = entry["init"]
            figs.append(figures.init_figure(rows, target / f"{name}_init.png"))
            for row in rows:
                label = f"init {row['init']}, load balance {row['load_balance']:g}" + (
                    ", renormalised" if row["renormalised"] else ", Switch weights"
                )
                table[label] = _mean_std_text(
                    row, "group_coverage", "specialisation", "router_uniformity"
                )
        shown = aggregate.showcase(records)
        W_EHN = load_expert_weights(Path(out) / SWEEPS_DIR / name, shown)
        figs.append(figures.stick_figure(shown, target / f"{name}_sticks.png"))
        figs.append(figures.gram_figure(W_EHN, target / f"{name}_gram.png"))
        c = shown["config"]
        text = (
            f"{entry['models']} models. Stick plots and heatmaps: n={c['n_features']}, "
            f"m={c['d_hidden']}, E={c['n_experts']}, k={c['k']}, S={c['sparsity']}, "
            f"importance decay {c['importance_decay']}, init {c['init']}, seed {c['seed']}."
        )
        blocks = [per_expert_block(entry["per_expert"])]
        sections.append(ReportSection(entry["title"], text, table, figs, blocks=blocks))
    atomic_write_json(target / SUMMARY, summary)
    write_report(target / REPORT, config.name, sections)
    return summary


def _mean_std_text(row: dict[str, Any], *metrics: str) -> str:
    parts = []
    for metric in metrics:
        mean, std = row[metric], row[f"{metric}_std"]
        shown = "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"
        parts.append(f"{metric.replace('_', ' ')} {shown}")
    return "; ".join(parts)
