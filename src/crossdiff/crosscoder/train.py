"""Training a crosscoder from any iterable of batches: Adam, schedules, aux-k, checkpoints, DDP.

A batch is ``dict[str, Tensor]``: model name -> activations ``[B, D_m]`` (the store's reader
yields these). On resume the iterable is replayed from its start and the consumed batches are
skipped, so it must yield the same sequence every time it is iterated.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crossdiff.checkpoints import (
    load_json,
    load_optimizer_,
    load_tensors,
    refuse_legacy,
    save_optimizer,
    save_tensors,
)
from crossdiff.config import to_dict
from crossdiff.crosscoder.aux_k import AuxPathRule, aux_k_loss
from crossdiff.crosscoder.config import TrainConfig
from crossdiff.crosscoder.distributed import Collectives
from crossdiff.crosscoder.evaluate import fve_from
from crossdiff.crosscoder.model import Crosscoder, ForwardOutput
from crossdiff.errors import ConfigError, CrossdiffError
from crossdiff.progress import progress_bar
from crossdiff.runtime import retain_freed_memory
from crossdiff.stages import atomic_directory, atomic_write_json

CHECKPOINT_DIR = "checkpoint"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_STATE = "trainer_state.json"


class TrainingError(CrossdiffError):
    """Training cannot go on (too many bad batches, a non-finite loss); no checkpoint is written."""


@dataclass
class StepStats:
    """What one optimiser step measured (global over processes)."""

    step: int
    loss: float
    """Total loss: reconstruction + optional sparsity + aux-k × the batch's variance."""
    mse: float
    """Σ_C (x̃ − x̂)² averaged over tokens, in normalised units."""
    aux: float
    """Weighted aux-k loss."""
    fve: float
    """Pooled fraction of variance explained on this batch, in the normalised space: the
    formula of :class:`~crossdiff.crosscoder.evaluate.FVESums`."""
    l0: float
    """Active latents per token."""
    dead_fraction: float
    """Share of latents without a firing in the last ``dead_tokens`` tokens."""
    lr: float
    k: float


@dataclass
class TrainState:
    """Counters that, with the weights and Adam's moments, make a run resumable exactly."""

    step: int = 0
    batches_consumed: int = 0
    nan_batches: int = 0
    tokens_since_fired: torch.Tensor | None = None
    aux_rule: AuxPathRule = field(default_factory=AuxPathRule)
    """Which path aux-k takes (measured at its first use; saved with the checkpoint)."""


@dataclass
class TrainResult:
    """The outcome of :func:`train`."""

    history: list[StepStats] = field(default_factory=list)
    """Stats of the steps run by this call."""
    steps: int = 0
    """Optimiser steps done in total (including before a resume)."""
    nan_batches: int = 0
    """Batches skipped because they held NaN or inf."""
    exhausted: bool = False
    """True if the batches ran out before ``steps``."""


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate at ``step``: linear warm-up, flat, then linear decay to the end fraction."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_from = int(cfg.decay_start * cfg.steps)
    if step < decay_from or cfg.steps <= decay_from:
        return cfg.lr
    progress = (step - decay_from) / (cfg.steps - decay_from)
    return cfg.lr * (1 - progress * (1 - cfg.lr_end_fraction))


def k_at(cfg: TrainConfig, k: float, step: int) -> float:
    """BatchTopK's k at ``step`` under optional linear annealing from ``k_start``."""
    if cfg.k_start is None or cfg.k_anneal_steps == 0 or step >= cfg.k_anneal_steps:
        return k
    return cfg.k_start + (k - cfg.k_start) * step / cfg.k_anneal_steps


def sparsity_penalty(model: Crosscoder, out: ForwardOutput) -> torch.Tensor:
    """λ·Σ_i f_i·w_i·Σ_m ‖d_i^m‖ per token (w = ``shared_sparsity_ratio`` on the shared block)."""
    cfg = model.cfg
    weight_L = model.decoder_norms(out.W_dec_LC).sum(dim=1)
    if cfg.n_shared:
        ratio = torch.ones_like(weight_L)
        ratio[: cfg.n_shared] = cfg.shared_sparsity_ratio
        weight_L = weight_L * ratio
    per_entry = out.acts_N * weight_L[out.pattern.cols_N]
    return cfg.sparsity_coeff * per_entry.sum() / out.x_BC.shape[0]


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on ``device`` (no copy where they already are)."""
    return {name: x.to(device, non_blocking=True) for name, x in batch.items()}


def _is_finite(batch: Mapping[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in batch.values())


def train_step(
    model: Crosscoder,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, torch.Tensor],
    state: TrainState,
    cfg: TrainConfig,
    coll: Collectives,
) -> StepStats:
    """One optimiser step on this process's slice of a global batch."""
    lr, k = lr_at(cfg, state.step), k_at(cfg, model.cfg.k, state.step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    local = coll.local_slice(batch)
    gather = coll.topk_cut if coll.active else None
    global_batch = next(iter(batch.values())).shape[0]
    out = model(local, k=k, kernels=cfg.kernels, gather=gather, global_batch=global_batch)
    x = out.x_BC
    with torch.no_grad():  # the global batch's token count, Σx and Σ‖x‖² (one all-reduce)
        wide = x.to(torch.promote_types(x.dtype, torch.float32))  # no copy for fp32/fp64
        count = torch.tensor([x.shape[0]], dtype=torch.float64, device=x.device)
        moments = coll.sum_(
            torch.cat([count, wide.sum(0).double(), wide.pow(2).sum()[None].double()])
        )
    n_global, sum_x, sq_x = float(moments[0]), moments[1:-1], float(moments[-1])
    variance = max(sq_x - float(sum_x.pow(2).sum()) / n_global, 1e-30) / n_global
    err_BC = x - out.recon_BC
    mse = err_BC.pow(2).sum() / x.shape[0]
    dead_L = state.tokens_since_fired >= cfg.dead_tokens
    aux_k = cfg.aux_k or max(model.cfg.d_models) // 2
    aux = cfg.aux_coeff * aux_k_loss(
        model, out, dead_L, aux_k, coll, cfg.kernels, rule=state.aux_rule
    )
    # aux-k is a normalised loss (≈ 1) while the reconstruction is in squared units (≈ V × FVU):
    # weighting aux by V makes the loss V × (FVU + α·aux), so α = 1/32 weighs what it does in
    # Gao et al. (2024). Multiplying aux rather than dividing the rest keeps the gradients at
    # their natural size, where Adam's ε is negligible.
    recon = mse
    if model.cfg.sparsity_coeff:
        recon = recon + sparsity_penalty(model, out)
    loss = recon + aux * variance
    with torch.no_grad():
        n_kept = torch.tensor(out.pattern.rows_N.numel(), dtype=torch.float64, device=x.device)
        logged = coll.sum_(torch.stack([*(v.detach().double() for v in (loss, mse, aux)), n_kept]))
    loss_g, mse_g, aux_g = (float(v) / coll.world for v in logged[:3])
    if not math.isfinite(loss_g):
        raise TrainingError(
            f"non-finite loss at step {state.step} (inputs were finite); stopping without "
            "writing a checkpoint: lower the learning rate"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    coll.average_gradients_(params)
    optimizer.step()

    with torch.no_grad():
        fired = torch.bincount(out.pattern.cols_N, minlength=model.cfg.dict_size)
        fired = coll.sum_(fired.to(torch.float64)) > 0
        n_tokens = int(n_global)
        state.tokens_since_fired += n_tokens
        state.tokens_since_fired[fired] = 0
        update_threshold_(model.threshold, out.batch_threshold, state.step, cfg)
    state.step += 1
    return StepStats(
        step=state.step,
        loss=loss_g,
        mse=mse_g,
        aux=aux_g,
        fve=fve_from(mse_g, variance),
        l0=float(logged[3]) / n_global,
        dead_fraction=float(dead_L.float().mean()),
        lr=lr,
        k=k,
    )


def update_threshold_(threshold: torch.Tensor, t: float, step: int, cfg: TrainConfig) -> None:
    """θ ← EMA of the batch's smallest kept score ``t`` (skipped when there is none); early
    steps average over fewer batches, so that θ does not lag the fast-moving start."""
    if math.isfinite(t) and t > 0:
        decay = min(cfg.threshold_decay, (1 + step) / (10 + step))
        threshold.fill_(decay * float(threshold) + (1 - decay) * t)


def make_optimizer(model: Crosscoder, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam over every trainable parameter (refuses float16 weights)."""
    if any(p.dtype == torch.float16 for p in model.parameters()):
        raise ConfigError(
            "cannot train a float16 crosscoder: Adam's second moments underflow in float16 and "
            "the steps blow up; train in bfloat16 or float32 and cast for inference"
        )
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, fused=fused)


def save_checkpoint(
    out_dir: Path,
    model: Crosscoder,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    cfg: TrainConfig,
) -> None:
    """Write ``out_dir/checkpoint`` (weights, Adam state, counters) atomically, without pickle:
    ``model/`` (cfg.json + safetensors), ``optimizer.safetensors`` + ``optimizer.json``,
    ``trainer.safetensors`` (the dead-latent counters) and ``trainer_state.json``."""
    with atomic_directory(out_dir / CHECKPOINT_DIR) as tmp:
        model.save_pretrained(tmp / "model")
        save_optimizer(tmp, optimizer)
        save_tensors(tmp / TRAINER_TENSORS, {"tokens_since_fired": state.tokens_since_fired})
        atomic_write_json(
            tmp / TRAINER_STATE,
            {
                "step": state.step,
                "batches_consumed": state.batches_consumed,
                "nan_batches": state.nan_batches,
                "aux_dense_share": state.aux_rule.dense_share,
                "train_config": to_dict(cfg),
            },
        )


def load_checkpoint(
    out_dir: Path, model: Crosscoder, optimizer: torch.optim.Optimizer
) -> TrainState | None:
    """Restore a checkpoint written by :func:`save_checkpoint` onto the model's device, or None
    if there is none. A pickle checkpoint of an older crossdiff is refused by name."""
    ckpt = out_dir / CHECKPOINT_DIR
    refuse_legacy(ckpt)
    if not (ckpt / TRAINER_STATE).is_file():
        return None
    saved = Crosscoder.from_pretrained(ckpt / "model")
    if saved.cfg != model.cfg:
        raise CrossdiffError(f"checkpoint in {str(ckpt)!r} is for a different crosscoder config")
    model.load_state_dict(saved.state_dict())
    load_optimizer_(ckpt, optimizer)
    trainer = load_json(ckpt / TRAINER_STATE)
    counters = load_tensors(ckpt / TRAINER_TENSORS)["tokens_since_fired"]
    return TrainState(
        step=trainer["step"],
        batches_consumed=trainer["batches_consumed"],
        nan_batches=trainer["nan_batches"],
        tokens_since_fired=counters.to(model.b_enc_L.device),
        aux_rule=AuxPathRule(dense_share=trainer.get("aux_dense_share")),
    )


def train(
    model: Crosscoder,
    batches: Iterable[Mapping[str, torch.Tensor]],
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = True,
    on_step: Callable[[StepStats], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on global ``batches``; checkpoints into ``out_dir`` if given.

    ``on_step(stats)`` is called after each optimiser step (e.g. an experiment tracker).

    With ``resume`` and a checkpoint in ``out_dir``, training continues from it exactly. Under
    ``torchrun`` (call :func:`~crossdiff.crosscoder.distributed.init_distributed` first) each
    process trains on its slice of every batch and only rank 0 writes.
    """
    coll = Collectives()
    retain_freed_memory()
    optimizer = make_optimizer(model, cfg)
    out = Path(out_dir) if out_dir is not None else None
    state = load_checkpoint(out, model, optimizer) if out is not None and resume else None
    fresh = state is None
    if state is None:
        device = model.b_enc_L.device
        zeros = torch.zeros(model.cfg.dict_size, dtype=torch.long, device=device)
        state = TrainState(tokens_since_fired=zeros)
    result = TrainResult(steps=state.step, nan_batches=state.nan_batches)
    stream = itertools.islice(iter(batches), state.batches_consumed, None)
    bar = _progress(cfg, state.step, coll)
    while state.step < cfg.steps:
        batch = next(stream, None)
        if batch is None:
            result.exhausted = True
            break
        state.batches_consumed += 1
        batch = to_device(batch, model.b_enc_L.device)
        if skip_nonfinite(batch, state, cfg):
            continue
        if fresh:
            model.fit_input_scales_(batch)
            fresh = False
        stats = train_step(model, optimizer, batch, state, cfg, coll)
        record_step(stats, result, cfg, bar, on_step)
        if out is not None and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            _checkpoint(out, model, optimizer, state, cfg, coll)
    if bar is not None:
        bar.close()
    if out is not None:
        _checkpoint(out, model, optimizer, state, cfg, coll)
    result.steps, result.nan_batches = state.step, state.nan_batches
    return result


def skip_nonfinite(batch: Mapping[str, torch.Tensor], state: TrainState, cfg: TrainConfig) -> bool:
    """True, and counted, if ``batch`` holds NaN or inf; past ``cfg.max_nan_batches`` such
    batches training stops with a named error (before any checkpoint of the damage)."""
    if _is_finite(batch):
        return False
    state.nan_batches += 1
    if state.nan_batches > cfg.max_nan_batches:
        raise TrainingError(
            f"{state.nan_batches} batches held NaN/inf (limit {cfg.max_nan_batches}); "
            "stopping without writing a checkpoint"
        )
    return True


def record_step(
    stats: StepStats,
    result: TrainResult,
    cfg: TrainConfig,
    bar: Any,
    on_step: Callable[[StepStats], None] | None,
) -> None:
    """After a step: keep its stats, call ``on_step``, advance the bar (live numbers every 10)."""
    result.history.append(stats)
    if on_step is not None:
        on_step(stats)
    if bar is not None:
        bar.update(1)
        if stats.step % 10 == 0 or stats.step == cfg.steps:
            bar.set_postfix(
                fve=f"{stats.fve:.3f}", l0=f"{stats.l0:.1f}", dead=f"{stats.dead_fraction:.3f}"
            )


def _checkpoint(
    out: Path,
    model: Crosscoder,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    cfg: TrainConfig,
    coll: Collectives,
) -> None:
    if coll.rank == 0:
        save_checkpoint(out, model, optimizer, state, cfg)
    coll.barrier()


def _progress(cfg: TrainConfig, initial: int, coll: Collectives):
    if not cfg.progress or coll.rank != 0:
        return None
    return progress_bar(total=cfg.steps, initial=initial, desc="crosscoder", unit="step")
