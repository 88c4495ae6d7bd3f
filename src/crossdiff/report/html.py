"""Render the report: one offline folder, ``report.html`` beside its scripts and data.

The folder opens from disk with no server and no network: figures are base64 ``data:`` URIs,
circuitsvis' bundled browser script (``circuitsvis/dist/cdn/iife.js``) and the explorer's code
are files under ``assets/``, and the latent explorer's data are scripts under ``latents/``
(``crossdiff.report.explorer``) that the page loads with ``<script src>`` — the one way to
load data from ``file://`` that browsers allow (``fetch`` of a file URL is refused).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from crossdiff.stages import atomic_write_text

ASSETS = "assets"
LATENTS = "latents"


@dataclass(frozen=True)
class TokenDashboard:
    """Top-activating contexts of one latent, each shown as coloured tokens."""

    title: str
    """Heading, e.g. ``latent 17 (moe_only, density 0.012)``."""
    contexts: list[tuple[list[str], list[float]]]
    """Each context: its tokens (as text) and the latent's activation on each."""


@dataclass(frozen=True)
class Figure:
    """A PNG file and a caption saying what to look at."""

    path: Path
    caption: str = ""


@dataclass(frozen=True)
class ReportSection:
    """One titled part of the report."""

    title: str
    text: str = ""
    """A paragraph of plain text (escaped)."""
    table: dict[str, Any] = field(default_factory=dict)
    """Rows of ``name -> value``; nested dicts are flattened to dotted names."""
    figures: list[Path | Figure] = field(default_factory=list)
    """PNG files (inlined), each optionally with a caption."""
    dashboards: list[TokenDashboard] = field(default_factory=list)
    """Token views, rendered with circuitsvis."""
    blocks: list[str] = field(default_factory=list)
    """Ready HTML (from :func:`html_table` and the like; everything in it already escaped)."""
    anchor: str = ""
    """The section's id (for links); by default made from the title."""


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 76em; color: #222;
  padding: 0 1em; line-height: 1.4; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
nav { font-size: .9em; } nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .92em; }
td, th { padding: .25em .7em; border-bottom: 1px solid #e3e3e3; text-align: left;
  vertical-align: top; }
th { background: #f0f0f0; } caption { caption-side: top; text-align: left; color: #555;
  font-size: .92em; padding-bottom: .3em; }
td.num, th.num { text-align: right; font-family: ui-monospace, monospace;
  white-space: nowrap; }
tr.holds-yes td.verdict { color: #116611; font-weight: bold; }
tr.holds-no td.verdict { color: #aa1111; font-weight: bold; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #444; font-size: .92em; max-width: 60em; }
.dashboard { border: 1px solid #ddd; padding: .5em 1em; margin: 1em 0; }
.note { color: #555; font-size: .92em; }
#explorer-controls { display: flex; gap: 1em; align-items: center; flex-wrap: wrap;
  margin: .5em 0; }
#latent-table { width: 100%; font-size: .85em; table-layout: auto; }
#latent-table th { white-space: normal; }
#latent-table td, #latent-table th { padding: .2em .45em; }
#latent-table td[data-col='top_tokens'], #latent-table td[data-col='expert'] {
  overflow-wrap: anywhere; } #latent-table td[data-col='top_tokens'] { min-width: 9em; }
.table-scroll { max-width: 100%; overflow-x: auto; }
#latent-card { overflow-wrap: anywhere; }
#latent-card svg.histogram { max-width: 100%; }
#latent-table th { cursor: pointer; user-select: none; }
#latent-table th.sorted-asc::after { content: " ▲"; }
#latent-table th.sorted-desc::after { content: " ▼"; }
#latent-table tbody tr { cursor: pointer; } #latent-table tbody tr:hover { background: #eef4ff; }
#latent-table tbody tr.selected { background: #dde8ff; }
#latent-card { border: 2px solid #88a; padding: .5em 1.2em 1em; margin: 1em 0;
  background: #fcfcff; }
.card-grid { display: flex; flex-wrap: wrap; gap: 2em; }
.context { margin: .3em 0; padding: .2em 0; border-bottom: 1px dotted #ccc; }
.logit-list { list-style: none; padding-left: 0; margin: .2em 0; font-size: .9em;
  font-family: ui-monospace, monospace; }
.logit-list li span.v { color: #666; margin-left: .6em; }
"""


def render_report(
    title: str, sections: list[ReportSection], intro: str = "", explorer: bool = False
) -> str:
    """The report page as one HTML string (``explorer``: include the latent explorer)."""
    renders: list[dict[str, Any]] = []
    body = [f"<h1>{html.escape(title)}</h1>"]
    if intro:
        body.append(f"<p>{html.escape(intro)}</p>")
    links = [(s.anchor or _anchor(s.title), s.title) for s in sections]
    if explorer:
        links.append(("latent-explorer", "Latent explorer"))
    body.append(
        "<nav>" + "".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t in links) + "</nav>"
    )
    for number, section in enumerate(sections):
        anchor = section.anchor or _anchor(section.title)
        body.append(f"<h2 id='{anchor}'>{html.escape(section.title)}</h2>")
        if section.text:
            body.append(f"<p>{html.escape(section.text)}</p>")
        body.extend(section.blocks)
        if section.table:
            body.append(_table(section.table))
        for figure in section.figures:
            body.append(_figure(figure if isinstance(figure, Figure) else Figure(Path(figure))))
        for index, dashboard in enumerate(section.dashboards):
            body.append(f'<div class="dashboard"><h3>{html.escape(dashboard.title)}</h3>')
            for context_number, (tokens, values) in enumerate(dashboard.contexts):
                element_id = f"cv-{number}-{index}-{context_number}"
                body.append(f'<div class="token-view" id="{element_id}"></div>')
                # circuitsvis puts token text into the page as HTML: escape it to show it as is
                shown = [html.escape(token) for token in tokens]
                renders.append({"id": element_id, "tokens": shown, "values": list(values)})
            body.append("</div>")
    if explorer:
        body.append(EXPLORER_HTML)
    scripts = []
    if renders or explorer:
        scripts.append(f"<script src='{ASSETS}/circuitsvis.js'></script>")
    if renders:
        calls = json.dumps(renders).replace("</", "<\\/")
        scripts.append(
            "<script>for (const view of " + calls + ") {"
            " CircuitsVis.render(view.id, CircuitsVis.ColoredTokens,"
            " {tokens: view.tokens, values: view.values}); }</script>"
        )
    if explorer:
        scripts.append(f"<script src='{LATENTS}/index.js'></script>")
        scripts.append(f"<script src='{ASSETS}/explorer.js'></script>")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}{''.join(scripts)}</body></html>\n"
    )


EXPLORER_HTML = """
<h2 id='latent-explorer'>Latent explorer</h2>
<p>Every latent that fired on the held-out tokens. Click a column heading to sort, filter by
class or by top token, click a row to open the latent's card: its top-activating held-out
contexts (each token coloured by the latent's activation there), the histogram of its
activations, its density per domain, its logit effects in each model and the experts it goes
with. <span class='note'>relative norm r = |d<sub>B</sub>| / (|d<sub>A</sub>| + |d<sub>B</sub>|),
latent-scaling ν the same ratio of the fitted scales β; density = share of held-out tokens on
which the latent fires; lift = P(expert chosen | latent fires) / P(expert chosen).</span></p>
<div id='explorer-controls'>
 <label>class <select id='class-filter'><option value=''>all</option></select></label>
 <label>top token contains <input id='token-filter' size='12'></label>
 <label><input type='checkbox' id='expert-filter'> expert-specific only</label>
 <span id='row-count'></span>
 <button id='page-prev'>◀</button><span id='page-label'></span><button id='page-next'>▶</button>
</div>
<div class='table-scroll'><table id='latent-table'><thead></thead><tbody></tbody></table></div>
<div id='latent-card' hidden></div>
"""


def write_report(
    path: str | Path,
    title: str,
    sections: list[ReportSection],
    intro: str = "",
    explorer: tuple[dict[str, Any], dict[int, dict[str, Any]]] | None = None,
) -> Path:
    """Render the report into ``path`` (its folder gets ``assets/`` and, with an ``explorer``
    ``(index, cards)``, ``latents/``), every file written atomically."""
    from crossdiff.report.explorer import write_explorer

    path = Path(path)
    page = render_report(title, sections, intro, explorer is not None)
    if explorer is not None or "CircuitsVis.render" in page:
        bundle = resources.files("circuitsvis").joinpath("dist", "cdn", "iife.js")
        atomic_write_text(path.parent / ASSETS / "circuitsvis.js", bundle.read_text("utf-8"))
    if explorer is not None:
        script = resources.files("crossdiff.report").joinpath("explorer.js").read_text("utf-8")
        atomic_write_text(path.parent / ASSETS / "explorer.js", script)
        write_explorer(path.parent / LATENTS, *explorer)
    atomic_write_text(path, page)
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


def number(value: Any, digits: int = 3, unit: str = "") -> str:
    """A value as table text: floats to ``digits`` significant digits, ints with thousands
    separators, None as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    else:
        return str(value)
    return f"{text} {unit}".strip()


def html_table(
    header: list[str],
    rows: list[list[Any]],
    caption: str = "",
    row_classes: list[str] | None = None,
    cell_classes: list[str] | None = None,
    table_id: str = "",
) -> str:
    """An escaped HTML table; numbers (int, float, None) right-aligned and formatted by
    :func:`number`, anything else as text."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    lines = []
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            numeric = value is None or (
                isinstance(value, int | float) and not isinstance(value, bool)
            )
            kind = "num" if numeric else ""
            if cell_classes and c < len(cell_classes) and cell_classes[c]:
                kind = f"{kind} {cell_classes[c]}".strip()
            attr = f" class='{kind}'" if kind else ""
            cells.append(f"<td{attr}>{html.escape(number(value))}</td>")
        attr = f" class='{row_classes[r]}'" if row_classes else ""
        lines.append(f"<tr{attr}>{''.join(cells)}</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    ident = f" id='{table_id}'" if table_id else ""
    return (
        f"<table{ident}>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"
    )


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def _table(rows: dict[str, Any]) -> str:
    return html_table(["name", "value"], [[k, v] for k, v in flatten(rows).items()])


def _figure(figure: Figure) -> str:
    path = Path(figure.path)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.stem.replace("_", " "))
    caption = html.escape(figure.caption) if figure.caption else name
    return (
        f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{caption}</figcaption></figure>"
    )
