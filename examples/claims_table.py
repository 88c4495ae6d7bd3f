"""Print a finished run's claims as a markdown table (the one in docs/results.md).

    python examples/claims_table.py RUN_DIR

Reads ``RUN_DIR/report/summary.json`` (``claims``, see docs/results-schema.md): one row per claim
with its criterion, the measured values, the statistic, the raw and Holm-adjusted p of a tested
claim, and the verdict (holds / does not hold / not testable).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def claims_table(claims: list[dict[str, Any]]) -> str:
    """Markdown table of ``summary["claims"]``."""
    lines = [
        "| source | claim (criterion) | measured | statistic | p (raw / Holm) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for claim in claims:
        p = claim.get("p_value")
        adjusted = claim.get("p_adjusted")
        p_text = "–" if p is None else f"{p:.2g} / {'–' if adjusted is None else f'{adjusted:.2g}'}"
        verdict = claim.get("verdict") or {True: "holds", False: "does not hold"}.get(
            claim.get("holds"), "not testable"
        )
        cells = [claim["source"], claim["claim"], claim["measured"], claim["statistic"], p_text]
        escaped = [str(cell).replace("|", "\\|") for cell in cells]
        lines.append(f"| {' | '.join(escaped)} | **{verdict}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table of ``RUN_DIR``'s claims."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory with report/summary.json")
    args = parser.parse_args(argv)
    path = args.run_dir / "report" / "summary.json"
    if not path.is_file():
        parser.error(
            f"{path} does not exist: run `crossdiff run CONFIG --out {args.run_dir}` first"
        )
    print(claims_table(json.loads(path.read_text()).get("claims", [])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
