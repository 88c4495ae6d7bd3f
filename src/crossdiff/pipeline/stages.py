"""The stages of ``crossdiff run``: each ``run_<stage>(run, log)`` and ``<stage>_done(run)``."""

from __future__ import annotations

from collections.abc import Callable

from crossdiff.pipeline.run import SPLITS, Run, stage_complete

Log = Callable[[str], None]


# ---------------------------------------------------------------- corpus


def run_corpus(run: Run, log: Log) -> None:
    """Build the corpus, tokenizer and packed sequences."""
    from crossdiff.cli.corpus import format_stats
    from crossdiff.corpus import build_corpus

    stats = build_corpus(run.config.corpus, run.corpus_dir, run.manager, overwrite=run.overwrite)
    log(format_stats(stats))


def corpus_done(run: Run) -> bool:
    """The corpus manifest says complete."""
    return stage_complete(run.corpus_dir)


# ---------------------------------------------------------------- models


def run_models(run: Run, log: Log) -> None:
    """Train every model the config trains (models given by path are used as they are)."""
    from crossdiff.models.stage import train_model_stage

    for name, spec in run.config.models.items():
        if spec.path is not None:
            description = describe_path_model(run, name)
            losses = ", ".join(f"{d} {v:.2f}" for d, v in description["val_loss"].items())
            log(
                f"  {name}: using {spec.path} ({description['architecture']}; "
                f"{description['active_params']:,} active of {description['total_params']:,} "
                f"parameters; held-out loss {losses})"
            )
            continue
        manifest = train_model_stage(
            run.corpus_dir, run.model_dir(name), spec.arch, spec.preset, spec.model, spec.train,
            overwrite=run.overwrite, progress=run.progress, tracking=run.config.tracking,
        )  # fmt: skip
        losses = ", ".join(f"{d} {v:.2f}" for d, v in manifest["val_loss"].items())
        log(f"  {name}: {manifest['active_params']:,} active parameters; val loss {losses}")


def models_done(run: Run) -> bool:
    """Every trained model's manifest says complete; every model given by path is described."""
    return all(
        (run.model_dir(name) / DESCRIPTION).is_file()
        if spec.path is not None
        else stage_complete(run.model_dir(name))
        for name, spec in run.config.models.items()
    )


DESCRIPTION = "description.json"
"""``RUN/models/<name>/description.json``: architecture, parameters and held-out loss of a model
given by path (``crossdiff.models.describe``), for the report."""


def describe_path_model(run: Run, name: str) -> dict:
    """Describe model ``name`` (given by path) on the corpus' held-out split; write it."""
    from crossdiff.adapters import load_adapter
    from crossdiff.corpus import load_sequences
    from crossdiff.models.data import validation_sets
    from crossdiff.models.describe import EVAL_SEQUENCES_PER_DOMAIN, describe_model
    from crossdiff.stages import atomic_write_json

    adapter = load_adapter(run.model_source(name), run.manager, run.config.harvest.device)
    validation = load_sequences(run.corpus_dir)["validation"]
    description = describe_model(adapter, validation_sets(validation, EVAL_SEQUENCES_PER_DOMAIN))
    description["path"] = run.config.models[name].path
    run.model_dir(name).mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.model_dir(name) / DESCRIPTION, description)
    return description


# ---------------------------------------------------------------- harvest


def run_harvest(run: Run, log: Log) -> None:
    """The same token batches through every model: a training and a held-out store."""
    from crossdiff.adapters import load_adapter
    from crossdiff.corpus import load_sequences, load_tokenizer
    from crossdiff.stages import reference
    from crossdiff.store import StoreConfig, harvest

    spec = run.config.harvest
    adapters = {
        name: load_adapter(run.model_source(name), run.manager, spec.device)
        for name in run.config.models
    }
    if spec.model_dtype != "fp32":
        from crossdiff.store.capture import cast_models

        cast_models(adapters, spec.model_dtype)
    sequences = load_sequences(run.corpus_dir)
    tokenizer = load_tokenizer(run.corpus_dir / "tokenizer")
    limits = {"train": spec.train_sequences, "validation": spec.validation_sequences}
    for split in SPLITS:
        config = StoreConfig(
            dtype=spec.dtype, split=split, max_sequences=limits[split],
            batch_sequences=spec.batch_sequences, shard_sequences=spec.shard_sequences,
        )  # fmt: skip
        record = {  # relative to the store inside the run, so a copied run reads its own files
            "models": {name: run.source_reference(name, split) for name in run.config.models},
            "corpus": reference(run.corpus_dir, run.store_dir(split), run.run_dir),
            **({"model_dtype": spec.model_dtype} if spec.model_dtype != "fp32" else {}),
        }
        info = harvest(
            adapters, spec.harvested, sequences[split], run.store_dir(split), config,
            corpus_tokenizer=tokenizer, record=record, progress=run.progress,
            overwrite=run.overwrite,
        )  # fmt: skip
        where = ", ".join(spec.harvested)
        log(f"  {split}: {info.tokens:,} tokens of {', '.join(adapters)} at {where}")


def harvest_done(run: Run) -> bool:
    """Both stores are complete and every shard matches its recorded size and checksum; a
    damaged shard raises, named, unless ``run.repair`` (then the harvest redoes it)."""
    from crossdiff.errors import DamagedFileError
    from crossdiff.store import open_store

    if not all(stage_complete(run.store_dir(split)) for split in SPLITS):
        return False
    try:
        for split in SPLITS:
            open_store(run.store_dir(split))
    except DamagedFileError:
        if run.repair:
            return False  # the harvest stage checks every shard and redoes the damaged ones
        raise
    return True


# ---------------------------------------------------------------- crosscoder


def run_crosscoder(run: Run, log: Log) -> None:
    """Train the crosscoder on the training store; evaluate it on the held-out store."""
    import dataclasses

    from crossdiff.crosscoder.stage import train_crosscoder_stage

    config = run.config.crosscoder
    config = dataclasses.replace(config, progress=config.progress and run.progress)
    metrics = train_crosscoder_stage(
        run.store_dir("train"), run.crosscoder_dir, config,
        heldout_store=run.store_dir("validation"), models=tuple(run.config.models),
        overwrite=run.overwrite, tracking=run.config.tracking,
    )  # fmt: skip
    fve = ", ".join(f"{m} {v:.3f}" for m, v in metrics["fve"].items())
    log(f"  FVE {fve}; L0 {metrics['l0']:.1f}; dead {metrics['dead_fraction']:.1%}")


def crosscoder_done(run: Run) -> bool:
    """The crosscoder manifest says complete."""
    return stage_complete(run.crosscoder_dir)


# ---------------------------------------------------------------- analyses


def run_analyses(run: Run, log: Log) -> None:
    """Every configured analysis plugin, each into ``RUN/analyses/<name>``."""
    from crossdiff.analysis import run_analysis

    for name in run.config.analyses:
        _, target = run_analysis(name, run.run_dir, run.manager)
        log(f"  {name}: {target}")


def analyses_done(run: Run) -> bool:
    """Every configured analysis wrote its summary."""
    return all(
        (run.run_dir / "analyses" / name / "summary.json").is_file() for name in run.config.analyses
    )


# ---------------------------------------------------------------- report


def run_report(run: Run, log: Log) -> None:
    """``RUN/report/summary.json`` and the self-contained ``RUN/report/report.html``."""
    from crossdiff.pipeline.report import write_run_report

    html = write_run_report(run, log)
    log(f"  {html}")


def report_done(run: Run) -> bool:
    """The report's manifest says complete (it is written after every file of the report); a
    report written before reports had a manifest: both its files exist."""
    from crossdiff.stages import read_manifest

    report = run.run_dir / "report"
    manifest = read_manifest(report)
    if manifest is not None:
        return bool(manifest.get("complete"))
    return (report / "summary.json").is_file() and (report / "report.html").is_file()
