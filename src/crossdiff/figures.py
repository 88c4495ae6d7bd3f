"""Figures without pyplot's global state: make a Figure, draw on it, save it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float = 5.0, height: float = 3.0) -> Figure:
    """A fresh matplotlib Figure (Agg canvas, no pyplot, no global backend switch)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="tight")


def save_figure(figure: Figure, path: str | Path, dpi: int = 110) -> None:
    """Save ``figure`` as PNG at ``path``."""
    figure.savefig(str(path), dpi=dpi)
