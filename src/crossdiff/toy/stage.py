"""The toy stage: each sweep trained in batches into ``OUT/sweeps/<name>/``, then the report.

A sweep's directory holds ``results.json`` (one record per model, see
``crossdiff.toy.evaluate``), ``weights.safetensors`` (``b<i>.W_MEHN``, ``b<i>.b_MEN``,
``b<i>.R_MEN`` per batch i) and ``manifest.json``, written last. A rerun skips every sweep whose
manifest is complete with the same settings, so an interrupted run resumes at its first
unfinished sweep; the report (``OUT/report/``) is rebuilt each time, which takes seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from crossdiff.config import to_dict
from crossdiff.stages import (
    atomic_directory,
    atomic_write_json,
    is_complete,
    save_safetensors,
    write_manifest,
)
from crossdiff.toy.config import SweepConfig, ToyRunConfig

SWEEPS_DIR = "sweeps"
REPORT_DIR = "report"
RESULTS = "results.json"
WEIGHTS = "weights.safetensors"


def sweep_settings(sweep: SweepConfig) -> dict[str, Any]:
    """What a sweep's manifest records and a rerun compares."""
    return to_dict(sweep)


def sweep_done(stage_dir: str | Path, sweep: SweepConfig) -> bool:
    """True if ``stage_dir`` holds this sweep, finished with exactly these settings."""
    return is_complete(stage_dir, sweep_settings(sweep))


def run_sweep(
    sweep: SweepConfig,
    stage_dir: str | Path,
    device: str | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train and evaluate every model of ``sweep`` into ``stage_dir``; its records."""
    import torch

    from crossdiff.toy.evaluate import evaluate_batch
    from crossdiff.toy.train import train_models

    started = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    batches = train_models(sweep.models(), device, progress)
    records, tensors = [], {}
    for number, batch in enumerate(batches):
        for index, record in enumerate(evaluate_batch(batch)):
            records.append({"batch": number, "index": index, **record})
        for name, value in zip(("W_MEHN", "b_MEN", "R_MEN"), batch.params.tensors(), strict=True):
            tensors[f"b{number}.{name}"] = value.detach().cpu().contiguous()
    with atomic_directory(stage_dir) as tmp:
        save_safetensors(tmp / WEIGHTS, tensors)
        atomic_write_json(tmp / RESULTS, records)
        write_manifest(
            tmp, "toy_sweep", sweep_settings(sweep), complete=True, models=len(records),
            batches=len(batches), seconds=round(time.perf_counter() - started, 2),
        )  # fmt: skip
    return records


def load_sweep(stage_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a finished sweep."""
    return json.loads((Path(stage_dir) / RESULTS).read_text(encoding="utf-8"))


def load_expert_weights(stage_dir: str | Path, record: dict[str, Any]) -> Any:
    """The tied weights ``W_EHN`` of the model behind ``record`` (a CPU tensor)."""
    from safetensors import safe_open

    with safe_open(str(Path(stage_dir) / WEIGHTS), framework="pt") as handle:
        index = record["index"]
        W_MEHN = handle.get_slice(f"b{record['batch']}.W_MEHN")[index : index + 1]
    return W_MEHN[0, : record["config"]["n_experts"]]


def run_toy(config: ToyRunConfig, out: str | Path, device: str | None = None) -> dict[str, Any]:
    """Run every unfinished sweep of ``config`` into ``out``, write the report and print each
    listed claim's verdict; the summary."""
    from crossdiff.toy.report import write_toy_report

    out = Path(out)
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    results = {}
    for name, sweep in config.sweeps.items():
        stage_dir = out / SWEEPS_DIR / name
        if sweep_done(stage_dir, sweep):
            print(f"toy: sweep {name!r} is complete, skipped")
            results[name] = load_sweep(stage_dir)
            continue
        print(f"toy: sweep {name!r}: {len(sweep.models())} models")
        results[name] = run_sweep(sweep, stage_dir, device, config.progress)
    summary = write_toy_report(config, out, results)
    for verdict in summary["claims"]:
        why = verdict["measured" if verdict["verdict"] == "not testable" else "statistic"]
        print(f"toy: claim {verdict['claim']}: {verdict['verdict']} ({why})")
    return summary
