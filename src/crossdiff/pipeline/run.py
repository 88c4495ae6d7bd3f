"""``crossdiff run``: corpus -> models -> harvest -> crosscoder -> analyses -> report.

Each stage writes its own directory under the run directory. ``RUN/pipeline.json`` records a
fingerprint per finished stage: a hash of the stage's settings and of every upstream stage's
fingerprint. A rerun skips a stage whose fingerprint is unchanged and whose output is complete
and calls the stage otherwise: it resumes its own partial work, and refuses output made with
other settings (naming them) unless the run is started with ``overwrite``. Every setting is
checked (:func:`check_run`) before the first stage starts.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdiff.config import compact_record, to_dict
from crossdiff.errors import ConfigError
from crossdiff.pipeline.config import HarvestSpec, RunConfig
from crossdiff.plugins import CrossdiffPluginManager, create_plugin_manager
from crossdiff.runtime import retain_freed_memory
from crossdiff.stages import atomic_write_json, read_json_file, read_manifest

STAGES = ("corpus", "models", "harvest", "crosscoder", "analyses", "report")
SPLITS = ("train", "validation")


@dataclass
class Run:
    """A run directory, its config and plugins, as the stages see them."""

    config: RunConfig
    run_dir: Path
    manager: CrossdiffPluginManager
    overwrite: bool = False
    """Replace stage output made with other settings instead of refusing it."""
    progress: bool = True
    """Progress bars in the harvest and crosscoder stages."""
    repair: bool = False
    """Harvest again the shards whose bytes differ from their record (else: a named error)."""

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

    def source_reference(self, name: str, split: str) -> str:
        """Model ``name`` as the ``split`` store records it (relative inside the run)."""
        from crossdiff.stages import reference

        return reference(self.model_source(name), self.store_dir(split), self.run_dir)


def run_pipeline(
    config: RunConfig,
    run_dir: str | Path,
    manager: CrossdiffPluginManager | None = None,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
    progress: bool = True,
    until: str | None = None,
    repair: bool = False,
) -> dict[str, Any]:
    """Run (or finish) every stage of ``config`` in ``run_dir``; return ``summary.json``'s data.

    Every setting is checked before the first stage; a stage whose directory holds output of
    other settings refuses (naming them) unless ``overwrite``. ``until`` names the last stage
    to run (one of :data:`STAGES`); stopping before the report returns ``{}``. A finished
    store whose shards no longer match their checksums is a named error unless ``repair``,
    which harvests the damaged shards again.
    """
    if until is not None and until not in STAGES:
        from crossdiff.errors import unknown_choice

        raise unknown_choice("stage", until, STAGES)
    from crossdiff.pipeline import stages
    from crossdiff.stages import named_write_errors

    retain_freed_memory()
    run = Run(
        config, Path(run_dir), manager or create_plugin_manager(), overwrite, progress, repair
    )
    check_run(run)
    record_path = run.run_dir / "pipeline.json"
    record = read_manifest_file(record_path)
    with named_write_errors(run.run_dir):
        run.run_dir.mkdir(parents=True, exist_ok=True)
    upstream = ""
    for number, stage in enumerate(STAGES, start=1):
        settings = stage_settings(config, stage)
        fingerprint = _hash(upstream + json.dumps(settings, sort_keys=True, default=str))
        upstream = fingerprint
        label = f"[{number}/{len(STAGES)}] {stage}"
        done = getattr(stages, f"{stage}_done")(run)
        if record.get(stage) == fingerprint and done:
            log(f"{label}: up to date, skipped")
            if stage == until and stage != STAGES[-1]:
                return {}
            continue
        started = time.perf_counter()
        log(f"{label}: running")
        getattr(stages, f"run_{stage}")(run, log)
        record[stage] = fingerprint
        atomic_write_json(record_path, record)
        log(f"{label}: done in {time.perf_counter() - started:.1f} s")
        if stage == until and stage != STAGES[-1]:
            return {}
    return json.loads((run.run_dir / "report" / "summary.json").read_text())


HARVEST_NEW_FIELDS = {"sites": (), "model_dtype": "fp32"}
"""Harvest settings added after the first runs, with their defaults (left out of the
fingerprint while at them, so an older run's stages stay up to date)."""


def harvest_settings(spec: HarvestSpec) -> dict[str, Any]:
    """The harvest's fingerprinted settings: new fields only when used, and not the device
    (where the models run does not change what the store holds beyond float rounding)."""
    settings = compact_record(to_dict(spec), HARVEST_NEW_FIELDS)
    settings.pop("device")
    return settings


def stage_settings(config: RunConfig, stage: str) -> dict[str, Any]:
    """The part of the config a stage depends on directly."""
    return {
        "corpus": lambda: config.corpus.record(),
        "models": lambda: to_dict(config.models),
        "harvest": lambda: harvest_settings(config.harvest),
        "crosscoder": lambda: config.crosscoder.record(),
        "analyses": lambda: list(config.analyses),
        "report": lambda: {"name": config.name},
    }[stage]()


def read_manifest_file(path: Path) -> dict[str, str]:
    """The pipeline record, or an empty one if there is none; a damaged one raises, named."""
    return read_json_file(path, "pipeline record") or {}


def check_run(run: Run) -> None:
    """Check every setting of the run before any stage starts: each stage's config is built
    and validated, and the constraints between stages hold (k below the dictionary size, the
    harvested site inside every trained model, the analyses and local model paths exist)."""
    from crossdiff.analysis import available_analyses
    from crossdiff.errors import unknown_choice
    from crossdiff.models.config import preset
    from crossdiff.store import StoreConfig

    config = run.config
    known = available_analyses(run.manager)
    for name in config.analyses:
        if name not in known:
            raise unknown_choice("analysis", name, known)
    spec = config.harvest
    for split, limit in (
        ("train", spec.train_sequences),
        ("validation", spec.validation_sequences),
    ):
        StoreConfig(
            dtype=spec.dtype, split=split, max_sequences=limit,
            batch_sequences=spec.batch_sequences, shard_sequences=spec.shard_sequences,
        )  # fmt: skip
    widths: dict[str, int] = {}
    for name, model in config.models.items():
        if model.path is not None:
            _check_local_path(name, model.path)
            continue
        model_config, _ = preset(
            model.preset, model.arch, config.corpus.vocab_size, config.corpus.context_length,
            model.model, model.train,
        )  # fmt: skip
        widths[name] = model_config.d_model
        for site in spec.harvested:
            layer, dot, _ = site.partition(".")
            if dot and layer.isdigit() and int(layer) >= model_config.n_layers:
                raise ConfigError(
                    f"harvest site {site!r} is past model {name!r}, which has "
                    f"{model_config.n_layers} layers (0..{model_config.n_layers - 1})"
                )
        check_sites(name, site_vocabulary(model_config, run.manager), spec.harvested)
    if not _corpus_up_to_date(run):
        from crossdiff.corpus.build import resolve_sources

        resolve_sources(config.corpus, run.manager)  # every local source path exists
    check_tokenizers_up_front(run)
    crosscoder = config.crosscoder
    for site in crosscoder.sites:
        if site not in spec.harvested:
            raise ConfigError(
                f"crosscoder site {site!r} is not harvested (harvest sites {spec.harvested})"
            )
    if len(spec.harvested) > 1 and not crosscoder.sites:
        raise ConfigError(
            f"harvest has several sites {spec.harvested}: set crosscoder.sites to the ones the "
            "crosscoder reads"
        )
    if len(widths) == len(config.models):  # every width known before training
        dims = tuple(widths.values())
        size = crosscoder.resolved_dict_size(dims)
        how = (
            "dict_size" if crosscoder.dict_size else f"{crosscoder.expansion} x d_model {max(dims)}"
        )
        crosscoder.check_dictionary(size, f" ({how})")
        n_shared = crosscoder.resolved_n_shared(size, dims)
        crosscoder.check_partition(size, len(dims), f" ({how})", n_shared)


def site_vocabulary(model_config: Any, manager: CrossdiffPluginManager) -> list[str]:
    """The site names a model of ``model_config`` offers, from the model built on the meta
    device (no weights, no training) and seen through its adapter."""
    import torch

    from crossdiff.adapters import adapt
    from crossdiff.models.build import build_model

    with torch.device("meta"):
        model = build_model(model_config, device="meta")
    return adapt(model, manager).site_names()


def check_sites(model: str, vocabulary: list[str], sites: tuple[str, ...] | list[str]) -> None:
    """Raise a :class:`ConfigError` naming the first of ``sites`` that ``model`` lacks, with
    the closest valid names."""
    from crossdiff.errors import unknown_choice

    for site in sites:
        if site not in vocabulary:
            error = unknown_choice("site", site, vocabulary)
            raise ConfigError(f"harvest {error} (model {model!r})")


def _corpus_up_to_date(run: Run) -> bool:
    """The corpus stage will be skipped: its sources need not be read again."""
    record = read_json_file(run.run_dir / "pipeline.json", "pipeline record") or {}
    return "corpus" in record and stage_complete(run.corpus_dir)


def check_tokenizers_up_front(run: Run) -> None:
    """Models given by path that bring a tokenizer must share the corpus tokenizer, when that
    is known before any work (a built corpus, or ``corpus.tokenizer`` a local directory)."""
    from crossdiff.store.checks import check_tokenizers

    paths = {n: m.path for n, m in run.config.models.items() if m.path and Path(m.path).is_dir()}
    with_tokenizer = {n: p for n, p in paths.items() if _has_tokenizer(Path(p))}
    if not with_tokenizer:
        return
    reference = _corpus_tokenizer_dir(run)
    if reference is None:
        return
    from crossdiff.corpus import load_tokenizer

    tokenizers = {n: load_tokenizer(_tokenizer_dir(Path(p))) for n, p in with_tokenizer.items()}
    check_tokenizers(load_tokenizer(reference), tokenizers)


def _tokenizer_dir(path: Path) -> Path:
    return path / "tokenizer" if (path / "tokenizer").is_dir() else path


def _has_tokenizer(path: Path) -> bool:
    directory = _tokenizer_dir(path)
    return any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


def _corpus_tokenizer_dir(run: Run) -> Path | None:
    built = run.corpus_dir / "tokenizer"
    if stage_complete(run.corpus_dir) and built.is_dir():
        return built
    given = run.config.corpus.tokenizer
    if given:
        path = Path(given.removeprefix("hf:")).expanduser()
        if path.is_dir() and _has_tokenizer(path):
            return path
    return None


def _check_local_path(name: str, path: str) -> None:
    if path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().exists():
        raise ConfigError(f"model {name!r}: path {path!r} does not exist")


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_complete(path: Path) -> bool:
    """True if ``path`` holds a manifest that says complete and every file it records matches
    its checksum (a damaged one raises :class:`DamagedFileError`, naming it): "up to date"
    means verified."""
    from crossdiff.verify import verify_stage_files

    manifest = read_manifest(path)
    if not (manifest and manifest.get("complete")):
        return False
    verify_stage_files(path, manifest)
    return True
