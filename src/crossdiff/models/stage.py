"""The ``models`` stage: train one in-repo model on a corpus and write its manifest.

The output directory holds ``cfg.json`` + ``model.safetensors`` (the final weights),
``tokenizer/`` (the corpus tokenizer), ``checkpoint/`` (for resuming), ``train_log.json``
(per-step losses) and ``manifest.json`` (written last).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from crossdiff.config import to_dict
from crossdiff.corpus.stats import unigram_entropy
from crossdiff.models.config import ModelConfig, TrainConfig, preset
from crossdiff.models.data import check_vocabulary, validation_sets
from crossdiff.models.params import count_parameters
from crossdiff.stages import (
    atomic_write_json,
    is_main_process,
    named_checkpoint_errors,
    prepare_stage,
    read_manifest,
    require_stage,
    stage_lock,
    write_manifest,
)
from crossdiff.tracking import TrackingConfig, open_tracker

STAGE = "models"


def configs_for_corpus(
    corpus_dir: str | Path,
    arch: str,
    preset_name: str,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> tuple[ModelConfig, TrainConfig, Any, dict[str, Any]]:
    """Configs of ``preset_name`` fitted to the corpus's vocabulary and context, the corpus's
    tokenizer and its packed sequences; raises if the model's vocabulary differs from the
    tokenizer's."""
    from crossdiff.corpus import load_sequences, load_tokenizer

    corpus_dir = Path(corpus_dir)
    require_stage(corpus_dir, "corpus", "crossdiff corpus build")
    tokenizer = load_tokenizer(corpus_dir / "tokenizer")
    sequences = load_sequences(corpus_dir)
    n_ctx = int(sequences["train"].input_ids.shape[1])
    model_config, train_config = preset(
        preset_name, arch, len(tokenizer), n_ctx, model_overrides, train_overrides
    )
    check_vocabulary(sequences, model_config.vocab_size, len(tokenizer), corpus_dir / "tokenizer")
    return model_config, train_config, tokenizer, sequences


def partner_active_params(config: ModelConfig) -> dict[str, Any]:
    """Parameter counts of the other arch built with the same settings (on the meta device)."""
    import dataclasses

    import torch

    from crossdiff.models.build import build_model

    other = "moe" if config.arch == "dense" else "dense"
    with torch.device("meta"):
        model = build_model(dataclasses.replace(config, arch=other), device="meta")
    return {"arch": other, **count_parameters(model).to_dict()}


def train_model_stage(
    corpus_dir: str | Path,
    out_dir: str | Path,
    arch: str,
    preset_name: str,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    on_step: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    tracking: TrackingConfig | None = None,
) -> dict[str, Any]:
    """Train (resuming if interrupted; skipping if finished) and return the manifest.

    ``out_dir`` holding a model trained with other settings (or on another corpus) is refused,
    naming the settings, or emptied first with ``overwrite``. ``progress`` prints a line every
    ``log_every`` steps; ``tracking`` sends each step's losses to an experiment tracker.
    """
    import contextlib

    started = time.perf_counter()
    require_stage(corpus_dir, "corpus", "crossdiff corpus build")
    lock = stage_lock(out_dir) if is_main_process() else contextlib.nullcontext()
    with lock:
        return _train_in_context(
            corpus_dir, out_dir, arch, preset_name, model_overrides, train_overrides, on_step,
            overwrite, started, progress, tracking,
        )  # fmt: skip


def _train_in_context(
    corpus_dir: str | Path,
    out_dir: str | Path,
    arch: str,
    preset_name: str,
    model_overrides: dict[str, Any] | None,
    train_overrides: dict[str, Any] | None,
    on_step: Any,
    overwrite: bool,
    started: float,
    progress: bool,
    tracking: TrackingConfig | None,
) -> dict[str, Any]:
    from crossdiff.models.ddp import init_distributed, shutdown

    context = init_distributed()
    try:
        return _train_and_record(
            corpus_dir,
            out_dir,
            arch,
            preset_name,
            model_overrides,
            train_overrides,
            on_step,
            context,
            started,
            overwrite,
            progress,
            tracking,
        )
    finally:
        shutdown(context)


def _train_and_record(
    corpus_dir: str | Path,
    out_dir: str | Path,
    arch: str,
    preset_name: str,
    model_overrides: dict[str, Any] | None,
    train_overrides: dict[str, Any] | None,
    on_step: Any,
    context: Any,
    started: float,
    overwrite: bool = False,
    progress: bool = True,
    tracking: TrackingConfig | None = None,
) -> dict[str, Any]:
    """Train in this process (one rank of possibly several) and, on rank 0, write the stage."""
    from crossdiff.corpus.build import corpus_fingerprint
    from crossdiff.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_weights
    from crossdiff.models.ddp import barrier
    from crossdiff.models.load import TOKENIZER_DIR
    from crossdiff.models.train import train
    from crossdiff.verify import file_records

    out_dir = Path(out_dir)
    model_config, train_config, tokenizer, sequences = configs_for_corpus(
        corpus_dir, arch, preset_name, model_overrides, train_overrides
    )
    settings = {
        "preset": preset_name,
        "corpus": corpus_fingerprint(corpus_dir),
        "model": to_dict(model_config),
        "train": to_dict(train_config),
    }
    manifest = read_manifest(out_dir)
    if manifest and manifest.get("complete") and manifest.get("config") == settings:
        return manifest
    if context.is_main:
        prepare_stage(out_dir, STAGE, settings, overwrite)
        write_manifest(out_dir, STAGE, settings, complete=False)
    barrier(context)
    tokens_per_step = train_config.batch_size * model_config.n_ctx
    tracked = tracking if context.is_main else None
    with (
        open_tracker(
            tracked, out_dir, f"models/{out_dir.name}", settings, tokens_per_step, "tokens"
        ) as tracker,
        named_checkpoint_errors(out_dir / "checkpoint", ("load_checkpoint_", "load_weights_")),
    ):
        result = train(
            model_config, train_config, sequences, out_dir, context, on_step=on_step,
            log=print if progress else None,
            on_record=lambda r: tracker.log(_record_metrics(r), r["step"]),
        )  # fmt: skip
    if not context.is_main:
        return {}
    save_weights(out_dir, result.model, model_config)
    tokenizer.save_pretrained(str(out_dir / TOKENIZER_DIR))
    atomic_write_json(
        out_dir / "train_log.json",
        {"history": result.state["history"], "evals": result.state["evals"]},
    )
    evaluation = result.evaluation
    final_sets = validation_sets(
        sequences["validation"], train_config.final_eval_sequences_per_domain
    )
    entropy = {
        domain: unigram_entropy(rows[:, 1:], model_config.vocab_size)
        for domain, rows in final_sets.items()
    }
    counts = count_parameters(result.model)
    partner = partner_active_params(model_config)
    fields: dict[str, Any] = {
        "complete": True,
        "arch": arch,
        "active_params": counts.active,
        "total_params": counts.total,
        "params": counts.to_dict(),
        "partner_params": partner,
        "active_params_ratio_to_partner": counts.active / partner["active"],
        "tokens_seen": result.state["tokens_seen"],
        "steps": result.state["step"],
        "train_seconds": round(result.state["train_seconds"], 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "precision": result.precision,
        "device": context.device,
        "world_size": context.world_size,
        "val_loss": evaluation.val_loss,
        "val_tokens": evaluation.tokens,
        "unigram_entropy": entropy,
        "val_loss_below_unigram": {d: entropy[d] - evaluation.val_loss[d] for d in entropy},
    }
    if arch == "moe":
        fields["expert_usage"] = evaluation.expert_usage
        fields["expert_usage_min_share"] = evaluation.min_expert_share()
        fields["expert_usage_floor"] = 1 / (4 * model_config.num_experts)
    fields["files"] = file_records(out_dir, [CONFIG_FILE, WEIGHTS_FILE])  # verified when read
    write_manifest(out_dir, STAGE, settings, **fields)
    return read_manifest(out_dir)


def _record_metrics(record: dict[str, Any]) -> dict[str, float | None]:
    """A model training step's record as a tracker receives it."""
    return {f"model/{k}": v for k, v in record.items() if k != "step"}
