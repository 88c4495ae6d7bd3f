"""The quickstart through the Python API: the same stages as `crossdiff run quickstart.toml`.

    python examples/quickstart.py [RUN_DIR] [CONFIG]

Defaults: RUN_DIR runs/quickstart, CONFIG examples/quickstart.toml. Finished stages are skipped,
so running this after the CLI (or the CLI after this) only prints the results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from crossdiff.pipeline import load_run_config, run_pipeline

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Run the pipeline, then print the headline numbers from summary.json."""
    run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/quickstart")
    config_path = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "quickstart.toml"
    summary = run_pipeline(load_run_config(config_path), run_dir)
    crosscoder = summary["crosscoder"]
    print("FVE:", json.dumps(crosscoder["fve"]))
    print("feature classes:", json.dumps(summary["features"]["counts"]))
    print("median density:", json.dumps(summary["density"]["median"]))
    for test, result in summary["density"]["tests"].items():
        print(f"{test}: p = {result['p_value']}, effect size = {result['effect_size']}")


if __name__ == "__main__":
    main()
