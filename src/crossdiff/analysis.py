"""The analysis contract: a named computation over a run's stage outputs, giving JSON and figures.

An analysis plugin returns objects with ``name``, ``description``, ``needs`` (the stages whose
outputs it reads) and ``run(context) -> AnalysisResult`` from the ``crossdiff_analyses`` hook.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from crossdiff.errors import StageError, unknown_choice
from crossdiff.plugins import CrossdiffPluginManager, collect
from crossdiff.stages import atomic_directory, read_manifest, stage_lock

FigureWriter = Callable[[Path], None]
"""Draws one figure and saves it to the given path (PNG)."""


@dataclass
class AnalysisResult:
    """What an analysis found: a JSON-serialisable summary and named figures."""

    summary: dict[str, Any]
    """Plain JSON data (numbers, strings, lists, dicts); goes into ``summary.json``."""
    figures: dict[str, FigureWriter] = field(default_factory=dict)
    """Figure name -> function that draws it to a PNG path."""


@dataclass(frozen=True)
class RunContext:
    """A run directory, with one subdirectory per stage (``corpus``, ``models``, ...)."""

    run_dir: Path

    def stage_dir(self, stage: str) -> Path:
        """The directory of a finished stage, its recorded files verified; :class:`StageError`
        if it is missing or unfinished, :class:`DamagedFileError` naming a damaged file."""
        from crossdiff.verify import verify_stage_files

        path = self.run_dir / stage
        manifest = read_manifest(path)
        if manifest is None or not manifest.get("complete"):
            raise StageError(
                f"stage {stage!r} has no finished output at {str(path)!r} "
                "(its manifest.json is missing or incomplete): run that stage first"
            )
        verify_stage_files(path, manifest)  # the weights it recorded, against their checksums
        return path


class Analysis(Protocol):
    """What the ``crossdiff_analyses`` hook returns, one object per analysis."""

    name: str
    description: str
    needs: tuple[str, ...]

    def run(self, context: RunContext) -> AnalysisResult:
        """Compute the analysis from the stage outputs in ``context``."""
        ...


@dataclass(frozen=True)
class LazyAnalysis:
    """An analysis declared by name, imported only when it runs (keeps plugin loading light).

    ``target`` is ``"module:Class"``; the class is instantiated without arguments.
    """

    name: str
    description: str
    needs: tuple[str, ...]
    target: str

    def run(self, context: RunContext) -> AnalysisResult:
        """Import the target class and run it."""
        import importlib

        module_name, _, class_name = self.target.partition(":")
        analysis = getattr(importlib.import_module(module_name), class_name)()
        return analysis.run(context)


def available_analyses(manager: CrossdiffPluginManager) -> dict[str, Analysis]:
    """Every analysis the plugins provide, by name (the newest plugin wins a clash)."""
    analyses: dict[str, Analysis] = {}
    for analysis in collect(manager.hook.crossdiff_analyses()):
        analyses.setdefault(analysis.name, analysis)
    return analyses


def run_analysis(
    name: str, run_dir: str | Path, manager: CrossdiffPluginManager
) -> tuple[AnalysisResult, Path]:
    """Run analysis ``name`` on ``run_dir``; write ``analyses/<name>/`` (summary + figures)."""
    analyses = available_analyses(manager)
    if name not in analyses:
        raise unknown_choice("analysis", name, analyses)
    analysis = analyses[name]
    context = RunContext(Path(run_dir))
    for stage in analysis.needs:
        context.stage_dir(stage)
    target = context.run_dir / "analyses" / name
    with stage_lock(target):
        result = analysis.run(context)
        _write_result(result, target)
    return result, target


def _write_result(result: AnalysisResult, target: Path) -> None:
    with atomic_directory(target) as tmp:
        (tmp / "summary.json").write_text(json.dumps(result.summary, indent=2, sort_keys=True))
        for figure_name, draw in result.figures.items():
            draw(tmp / f"{figure_name}.png")
