"""Render a self-contained HTML report: tables, PNG figures inlined, circuitsvis token views.

The page needs no network: figures are base64 ``data:`` URIs and circuitsvis' bundled browser
script (``circuitsvis/dist/cdn/iife.js``) is inlined once, however many dashboards there are.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from crossdiff.stages import atomic_write_text


@dataclass(frozen=True)
class TokenDashboard:
    """Top-activating contexts of one latent, each shown as coloured tokens."""

    title: str
    """Heading, e.g. ``latent 17 (moe_only, density 0.012)``."""
    contexts: list[tuple[list[str], list[float]]]
    """Each context: its tokens (as text) and the latent's activation on each."""


@dataclass(frozen=True)
class ReportSection:
    """One titled part of the report."""

    title: str
    text: str = ""
    """A paragraph of plain text (escaped)."""
    table: dict[str, Any] = field(default_factory=dict)
    """Rows of ``name -> value``; nested dicts are flattened to dotted names."""
    figures: list[Path] = field(default_factory=list)
    """PNG files, inlined."""
    dashboards: list[TokenDashboard] = field(default_factory=list)
    """Token views, rendered with circuitsvis."""


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 1em 0; } td, th { padding: .2em .8em; }
tr:nth-child(even) { background: #f3f3f3; } td.num { text-align: right; font-family: monospace; }
figure { display: inline-block; margin: .5em; } img { max-width: 34em; border: 1px solid #ddd; }
.dashboard { border: 1px solid #ddd; padding: .5em 1em; margin: 1em 0; }
"""


def render_report(title: str, sections: list[ReportSection]) -> str:
    """The report page as one HTML string."""
    renders: list[dict[str, Any]] = []
    body = [f"<h1>{html.escape(title)}</h1>"]
    for number, section in enumerate(sections):
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            body.append(f"<p>{html.escape(section.text)}</p>")
        if section.table:
            body.append(_table(section.table))
        for figure in section.figures:
            body.append(_figure(Path(figure)))
        for index, dashboard in enumerate(section.dashboards):
            body.append(f'<div class="dashboard"><h3>{html.escape(dashboard.title)}</h3>')
            for context_number, (tokens, values) in enumerate(dashboard.contexts):
                element_id = f"cv-{number}-{index}-{context_number}"
                body.append(f'<div class="token-view" id="{element_id}"></div>')
                # circuitsvis puts token text into the page as HTML: escape it to show it as is
                shown = [html.escape(token) for token in tokens]
                renders.append({"id": element_id, "tokens": shown, "values": list(values)})
            body.append("</div>")
    scripts = _dashboard_scripts(renders) if renders else ""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}{scripts}</body></html>\n"
    )


def write_report(path: str | Path, title: str, sections: list[ReportSection]) -> Path:
    """Render the report and write it atomically to ``path``."""
    path = Path(path)
    atomic_write_text(path, render_report(title, sections))
    return path


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _table(rows: dict[str, Any]) -> str:
    cells = []
    for name, value in flatten(rows).items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        cells.append(
            f"<tr><td>{html.escape(name)}</td><td class='num'>{html.escape(shown)}</td></tr>"
        )
    return f"<table>{''.join(cells)}</table>"


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.stem.replace("_", " "))
    return (
        f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{name}</figcaption></figure>"
    )


def _dashboard_scripts(renders: list[dict[str, Any]]) -> str:
    """circuitsvis' bundled script, inlined once, then one render call per token view."""
    bundle = resources.files("circuitsvis").joinpath("dist", "cdn", "iife.js").read_text("utf-8")
    bundle = bundle.replace("</script", "<\\/script")
    calls = json.dumps(renders).replace("</", "<\\/")
    return (
        f"<script>{bundle}</script>"
        "<script>for (const view of " + calls + ") {"
        " CircuitsVis.render(view.id, CircuitsVis.ColoredTokens,"
        " {tokens: view.tokens, values: view.values}); }</script>"
    )
