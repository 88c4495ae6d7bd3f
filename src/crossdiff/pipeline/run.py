"""``crossdiff run``: corpus -> models -> harvest -> crosscoder -> analyses -> report.

Each stage writes its own directory under the run directory. ``RUN/pipeline.json`` records a
fingerprint per finished stage: a hash of the stage's settings and of every upstream stage's
fingerprint. A rerun skips a stage whose fingerprint is unchanged and whose output is complete,
and redoes it (and everything downstream) otherwise; stages resume their own partial work.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdiff.config import to_dict
from crossdiff.pipeline.config import RunConfig
from crossdiff.plugins import CrossdiffPluginManager, create_plugin_manager
from crossdiff.runtime import retain_freed_memory
from crossdiff.stages import atomic_write_json, read_manifest

STAGES = ("corpus", "models", "harvest", "crosscoder", "analyses", "report")
SPLITS = ("train", "validation")


@dataclass
class Run:
    """A run directory, its config and plugins, as the stages see them."""

    config: RunConfig
    run_dir: Path
    manager: CrossdiffPluginManager

    @property
    def corpus_dir(self) -> Path:
        """``RUN/corpus``."""
        return self.run_dir / "corpus"

    def model_dir(self, name: str) -> Path:
        """``RUN/models/<name>`` (trained models only)."""
        return self.run_dir / "models" / name

    def store_dir(self, split: str) -> Path:
        """``RUN/activations/<split>``."""
        return self.run_dir / "activations" / split

    @property
    def crosscoder_dir(self) -> Path:
        """``RUN/crosscoder``: the stage (metrics, manifest); weights in its ``crosscoder/``."""
        return self.run_dir / "crosscoder"

    def model_source(self, name: str) -> str:
        """Where model ``name`` is loaded from: its trained directory or its given path."""
        spec = self.config.models[name]
        return spec.path if spec.path is not None else str(self.model_dir(name))


def run_pipeline(
    config: RunConfig,
    run_dir: str | Path,
    manager: CrossdiffPluginManager | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or finish) every stage of ``config`` in ``run_dir``; return ``summary.json``'s data."""
    from crossdiff.pipeline import stages

    retain_freed_memory()
    run = Run(config, Path(run_dir), manager or create_plugin_manager())
    run.run_dir.mkdir(parents=True, exist_ok=True)
    _check_analyses(run)
    record_path = run.run_dir / "pipeline.json"
    record = read_manifest_file(record_path)
    upstream = ""
    for number, stage in enumerate(STAGES, start=1):
        settings = stage_settings(config, stage)
        fingerprint = _hash(upstream + json.dumps(settings, sort_keys=True, default=str))
        upstream = fingerprint
        label = f"[{number}/{len(STAGES)}] {stage}"
        done = getattr(stages, f"{stage}_done")(run)
        if record.get(stage) == fingerprint and done:
            log(f"{label}: up to date, skipped")
            continue
        started = time.perf_counter()
        log(f"{label}: running")
        getattr(stages, f"run_{stage}")(run, log)
        record[stage] = fingerprint
        atomic_write_json(record_path, record)
        log(f"{label}: done in {time.perf_counter() - started:.1f} s")
    return json.loads((run.run_dir / "report" / "summary.json").read_text())


def stage_settings(config: RunConfig, stage: str) -> dict[str, Any]:
    """The part of the config a stage depends on directly."""
    return {
        "corpus": lambda: to_dict(config.corpus),
        "models": lambda: to_dict(config.models),
        "harvest": lambda: to_dict(config.harvest),
        "crosscoder": lambda: to_dict(config.crosscoder),
        "analyses": lambda: list(config.analyses),
        "report": lambda: {"name": config.name},
    }[stage]()


def read_manifest_file(path: Path) -> dict[str, str]:
    """The pipeline record, or an empty one."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _check_analyses(run: Run) -> None:
    from crossdiff.analysis import available_analyses
    from crossdiff.errors import unknown_choice

    known = available_analyses(run.manager)
    for name in run.config.analyses:
        if name not in known:
            raise unknown_choice("analysis", name, known)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_complete(path: Path) -> bool:
    """True if ``path`` holds a manifest that says complete."""
    manifest = read_manifest(path)
    return bool(manifest and manifest.get("complete"))
