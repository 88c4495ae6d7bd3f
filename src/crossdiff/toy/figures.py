"""The toy report's figures (matplotlib without pyplot): phase diagrams, stick plots, heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossdiff.figures import new_figure, save_figure
from crossdiff.toy.metrics import STATE_NAMES

STATE_COLOURS = ("#f0f0f0", "#2c7bb6", "#d7191c")
"""ignored, dedicated, superposed."""
MAX_EXPERTS_SHOWN = 8


def phase_figure(panels: list[tuple[str, dict[str, Any]]], path: Path, value: str) -> Path:
    """One phase diagram per sweep, side by side: ``state`` (discrete) or ``dimensionality``."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    figure = new_figure(4.2 * len(panels) + 0.8, 3.8)
    figure.set_layout_engine("constrained")  # room for a shared colour bar or legend
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (title, grid) in zip(axes, panels, strict=True):
        x = grid["importance_decay"]
        y = [1 - s for s in grid["sparsity"]]
        if value == "state":
            cmap = ListedColormap(STATE_COLOURS)
            mesh = axis.pcolormesh(
                x, y, grid["state"], cmap=cmap, norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5], 3),
                shading="nearest",
            )  # fmt: skip
        else:
            mesh = axis.pcolormesh(
                x, y, grid["dimensionality"], cmap="viridis", vmin=0, vmax=1, shading="nearest"
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("relative importance of feature 2")
        axis.set_ylabel("feature density 1 − S")
        axis.set_title(title, fontsize=9)
    if value == "state":
        handles = [Patch(color=c, label=n) for c, n in zip(STATE_COLOURS, STATE_NAMES, strict=True)]
        figure.legend(handles=handles, loc="outside right center", fontsize=8)
    else:
        figure.colorbar(mesh, ax=list(axes), label="usage-weighted D of feature 2")
    save_figure(figure, path)
    return path


def stick_figure(record: dict[str, Any], path: Path) -> Path:
    """D_i per feature as sticks, one panel per expert, with D* as a dashed line."""
    experts = min(len(record["usage"]), MAX_EXPERTS_SHOWN)
    figure = new_figure(2.4 * experts + 0.6, 2.6)
    axes = figure.subplots(1, experts, squeeze=False, sharey=True)[0]
    for e, axis in enumerate(axes):
        values = [v or 0.0 for v in record["feature_dimensionality"][e]]
        colours = [STATE_COLOURS[s] for s in record["feature_states"][e]]
        axis.vlines(range(len(values)), 0, values, colors=colours, linewidth=2)
        axis.scatter(range(len(values)), values, c=colours, s=12, zorder=3)
        axis.axhline(record["expert_dimensionality"][e], color="grey", linestyle="--", lw=1)
        axis.set_ylim(0, 1.1)
        axis.set_xlabel("feature i")
        axis.set_title(f"expert {e} (usage {record['usage'][e]:.2f})", fontsize=8)
    axes[0].set_ylabel("D_i (dashed: D*)")
    save_figure(figure, path)
    return path


def gram_figure(W_EHN: Any, path: Path) -> Path:
    """W_eᵀW_e per expert as a heatmap (blue negative, red positive)."""
    experts = min(W_EHN.shape[0], MAX_EXPERTS_SHOWN)
    figure = new_figure(2.4 * experts + 0.8, 2.6)
    figure.set_layout_engine("constrained")
    axes = figure.subplots(1, experts, squeeze=False)[0]
    for e, axis in enumerate(axes):
        gram_NN = (W_EHN[e].T @ W_EHN[e]).float().numpy()
        image = axis.imshow(gram_NN, cmap="RdBu_r", vmin=-1, vmax=1)
        axis.set_title(f"W{e}ᵀW{e}", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(image, ax=list(axes), shrink=0.8)
    save_figure(figure, path)
    return path


def network_sparsity_figure(rows: list[dict[str, Any]], path: Path) -> Path:
    """Monosemantic fraction and specialisation vs k/E, mean ± std over seeds, a series per E."""
    figure = new_figure(8.5, 3.4)
    axes = figure.subplots(1, 2)
    for axis, metric in zip(axes, ("monosemantic_fraction", "specialisation"), strict=True):
        for E in sorted({row["n_experts"] for row in rows}):
            mine = [row for row in rows if row["n_experts"] == E and row[metric] is not None]
            axis.errorbar(
                [row["k_over_E"] for row in mine], [row[metric] for row in mine],
                yerr=[row[f"{metric}_std"] for row in mine], marker="o", capsize=3,
                label=f"E = {E}",
            )  # fmt: skip
        axis.set_xscale("log")
        axis.set_xlabel("network sparsity k/E")
        axis.set_ylabel(metric.replace("_", " "))
        axis.set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    save_figure(figure, path)
    return path


def init_figure(rows: list[dict[str, Any]], path: Path) -> Path:
    """Specialisation and monosemantic fraction per (init, load balance), mean ± std over seeds."""
    figure = new_figure(7.5, 3.2)
    axis = figure.subplots()
    labels = [
        f"{row['init']}\nLB {row['load_balance']:g}\n"
        + ("renormalised" if row["renormalised"] else "Switch")
        for row in rows
    ]
    positions = range(len(rows))
    for offset, metric in ((-0.2, "specialisation"), (0.2, "monosemantic_fraction")):
        axis.bar(
            [p + offset for p in positions], [row[metric] or 0.0 for row in rows], width=0.4,
            yerr=[row[f"{metric}_std"] or 0.0 for row in rows], capsize=3,
            label=metric.replace("_", " "),
        )  # fmt: skip
    axis.set_xticks(list(positions), labels, fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8)
    save_figure(figure, path)
    return path
