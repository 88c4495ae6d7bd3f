"""Training a latent-sharded crosscoder (:mod:`crossdiff.crosscoder.sharded`) under ``torchrun``.

Same inputs, schedules, losses and checkpoints as :func:`crossdiff.crosscoder.train.train`:
every process reads the same global batches and keeps its data rank's contiguous slice; each
optimises only its slice of the dictionary. Checkpoints are gathered onto the first process and
written in the one-process format (a sharded run resumes from a one-process checkpoint and vice
versa, with any number of shards), and the trained weights end in the caller's full
:class:`~crossdiff.crosscoder.model.Crosscoder` on the first process.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from crossdiff.crosscoder.config import TrainConfig
from crossdiff.crosscoder.evaluate import fve_from
from crossdiff.crosscoder.model import Crosscoder
from crossdiff.crosscoder.sharded import (
    PARAMS,
    SUPPORTED_KERNELS,
    Mesh,
    ShardedCrosscoder,
    sharded_aux_k_loss,
    sharded_sparsity_penalty,
)
from crossdiff.crosscoder.train import (
    CHECKPOINT_DIR,
    StepStats,
    TrainingError,
    TrainResult,
    TrainState,
    k_at,
    load_checkpoint,
    lr_at,
    make_optimizer,
    record_step,
    save_checkpoint,
    skip_nonfinite,
    to_device,
    update_threshold_,
)
from crossdiff.errors import ConfigError
from crossdiff.progress import progress_bar
from crossdiff.runtime import retain_freed_memory


def sharded_step(
    model: ShardedCrosscoder,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, torch.Tensor],
    state: TrainState,
    cfg: TrainConfig,
) -> StepStats:
    """One optimiser step of this process's shard on its data rank's slice of a global batch."""
    mesh = model.mesh
    lr, k = lr_at(cfg, state.step), k_at(cfg, model.cfg.k, state.step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    global_batch = next(iter(batch.values())).shape[0]
    if global_batch % mesh.data_world:
        raise ConfigError(
            f"global batch {global_batch} is not divisible by {mesh.data_world} data ranks"
        )
    size = global_batch // mesh.data_world
    first = mesh.data_rank * size
    local = {name: x[first : first + size] for name, x in batch.items()}
    out = model(local, k, global_batch, first)
    x = out.x_BC
    with torch.no_grad():
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        count = torch.tensor([x.shape[0]], dtype=torch.float64, device=x.device)
        moments = mesh.sum_(
            torch.cat([count, wide.sum(0).double(), wide.pow(2).sum()[None].double()]), "data"
        )
    n_global, sum_x, sq_x = float(moments[0]), moments[1:-1], float(moments[-1])
    variance = max(sq_x - float(sum_x.pow(2).sum()) / n_global, 1e-30) / n_global
    mse = (x - out.recon_BC).pow(2).sum() / x.shape[0]
    dead_l = state.tokens_since_fired >= cfg.dead_tokens
    aux_k = cfg.aux_k or max(model.cfg.d_models) // 2
    aux = cfg.aux_coeff * sharded_aux_k_loss(model, out, dead_l, aux_k)
    penalty = (
        sharded_sparsity_penalty(model, out) if model.cfg.sparsity_coeff else mse.new_zeros(())
    )
    loss = mse + penalty + aux * variance  # this shard's gradients; the penalty is per shard
    with torch.no_grad():
        n_kept = torch.tensor(out.pattern.rows_N.numel(), dtype=torch.float64, device=x.device)
        # mse and aux are equal on every shard: summed over data ranks; the penalty and the
        # kept entries are each shard's own: summed over the world
        replicated = mesh.sum_(torch.stack([mse.detach().double(), aux.detach().double()]), "data")
        own = mesh.sum_(torch.stack([penalty.detach().double(), n_kept]), "world")
    mse_g, aux_g, penalty_g = (float(v) / mesh.data_world for v in (*replicated, own[0]))
    kept = float(own[1])
    loss_g = mse_g + penalty_g + aux_g * variance
    if not math.isfinite(loss_g):
        raise TrainingError(
            f"non-finite loss at step {state.step} (inputs were finite); stopping without "
            "writing a checkpoint: lower the learning rate"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _average_gradients_(model, mesh)
    optimizer.step()
    with torch.no_grad():
        fired = torch.bincount(out.pattern.cols_N, minlength=model.hi - model.lo)
        fired = mesh.sum_(fired.to(torch.float64), "data") > 0
        state.tokens_since_fired += int(n_global)
        state.tokens_since_fired[fired] = 0
        n_dead = float(mesh.sum_(dead_l.sum().double().reshape(1), "latent"))
        update_threshold_(model.threshold, out.batch_threshold, state.step, cfg)
    state.step += 1
    return StepStats(
        step=state.step,
        loss=loss_g,
        mse=mse_g,
        aux=aux_g,
        fve=fve_from(mse_g, variance),
        l0=kept / n_global,
        dead_fraction=n_dead / model.cfg.dict_size,
        lr=lr,
        k=k,
    )


def _average_gradients_(model: ShardedCrosscoder, mesh: Mesh) -> None:
    """Average the slice's gradients over the data group, the replicated ones (the decoder
    bias, equal on every shard) over the world, so every copy takes the same step."""
    for p in model.parameters():  # every shard keeps Adam state for every parameter
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if mesh.world == 1:
        return
    for axis, names in (("data", PARAMS[:-1]), ("world", PARAMS[-1:])):
        params = [getattr(model, name) for name in names]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = mesh.sum_(torch.cat([g.reshape(-1) for g in grads]), axis)
        flat /= mesh.size(axis)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
            offset += g.numel()


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by ``model``'s parameters and ``optimizer``'s state tensors."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for per_param in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in per_param.values() if torch.is_tensor(v))
    return total


def shard_state_(
    sharded: ShardedCrosscoder,
    optimizer: torch.optim.Optimizer,
    full: Crosscoder,
    full_optimizer: torch.optim.Optimizer | None,
) -> None:
    """Load this shard's slice of a full model (and of its Adam state, if it has one)."""
    sharded.load_full_(full)
    if full_optimizer is None or not full_optimizer.state:
        return
    saved = full_optimizer.state_dict()
    state = {
        i: {
            key: (sharded.slice_of(name, v).clone() if v.ndim else v)
            for key, v in saved["state"][i].items()
        }
        for i, name in enumerate(PARAMS)
        if i in saved["state"]
    }
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def gather_state(
    sharded: ShardedCrosscoder,
    optimizer: torch.optim.Optimizer,
    full: Crosscoder,
    cfg: TrainConfig,
) -> torch.optim.Optimizer | None:
    """Gather every shard's weights into ``full`` and their Adam state into a full optimiser
    on the first process (returned there; None elsewhere). A collective."""
    sharded.gather_into_(full)
    mine = optimizer.state_dict()
    gathered: dict[int, dict[str, torch.Tensor]] = {}
    for i, name in enumerate(PARAMS):
        for key, v in sorted(mine["state"].get(i, {}).items()):
            whole = sharded.gather_full(name, v) if v.ndim else v
            if whole is not None:
                gathered.setdefault(i, {})[key] = whole.cpu()
    if sharded.mesh.rank != 0:
        return None
    full_optimizer = make_optimizer(full, cfg)
    groups = full_optimizer.state_dict()["param_groups"]
    for group in groups:
        group["lr"] = mine["param_groups"][0]["lr"]
    full_optimizer.load_state_dict({"state": gathered, "param_groups": groups})
    return full_optimizer


def train_sharded(
    model: Crosscoder,
    batches: Iterable[Mapping[str, torch.Tensor]],
    cfg: TrainConfig,
    latent_shards: int,
    out_dir: str | Path | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    on_step: Callable[[StepStats], None] | None = None,
) -> TrainResult:
    """Train ``model`` with its dictionary split over ``latent_shards`` processes (the world
    is ``data × latent_shards``); on the first process ``model`` holds the result.

    ``model`` is the full initial crosscoder on the CPU (each process copies its slice to
    ``device``, default the model's); call
    :func:`~crossdiff.crosscoder.distributed.init_distributed` first. Checkpoints in
    ``out_dir`` are the one-process format, written by the first process.
    """
    if cfg.kernels not in SUPPORTED_KERNELS:
        raise ConfigError(
            f"latent sharding runs the sparse kernels only, got kernels={cfg.kernels!r}"
        )
    names = tuple(name for name, _ in model.named_parameters())
    if names != PARAMS or set(model.state_dict()) != set(ShardedCrosscoder.KEYS):
        raise ConfigError(
            f"latent sharding knows a crosscoder of parameters {list(PARAMS)}; this one has "
            f"{sorted(model.state_dict())}: train it with latent_shards = 1"
        )
    mesh = Mesh(latent_shards)
    retain_freed_memory()
    device = torch.device(device) if device is not None else model.b_enc_L.device
    sharded = ShardedCrosscoder(model.cfg, mesh).to(device)
    optimizer = make_optimizer(sharded, cfg)
    out = Path(out_dir) if out_dir is not None else None
    full_optimizer = make_optimizer(model, cfg) if out is not None and resume else None
    full_state = load_checkpoint(out, model, full_optimizer) if full_optimizer else None
    shard_state_(sharded, optimizer, model, full_optimizer)
    del full_optimizer
    fresh = full_state is None
    state = TrainState(tokens_since_fired=torch.zeros(sharded.hi - sharded.lo, dtype=torch.long))
    if full_state is not None:
        state.step, state.batches_consumed = full_state.step, full_state.batches_consumed
        state.nan_batches = full_state.nan_batches
        state.tokens_since_fired = sharded.slice_of(
            "tokens_since_fired", full_state.tokens_since_fired
        )
    state.tokens_since_fired = state.tokens_since_fired.to(device).clone()
    result = TrainResult(steps=state.step, nan_batches=state.nan_batches)
    stream = itertools.islice(iter(batches), state.batches_consumed, None)
    bar = None
    if cfg.progress and mesh.rank == 0:
        bar = progress_bar(total=cfg.steps, initial=state.step, desc="crosscoder", unit="step")
    while state.step < cfg.steps:
        batch = next(stream, None)
        if batch is None:
            result.exhausted = True
            break
        state.batches_consumed += 1
        batch = to_device(batch, device)
        if skip_nonfinite(batch, state, cfg):
            continue
        if fresh:
            sharded.fit_input_scales_(batch)
            fresh = False
        stats = sharded_step(sharded, optimizer, batch, state, cfg)
        record_step(stats, result, cfg, bar, on_step)
        if out is not None and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            _checkpoint(out, sharded, optimizer, model, state, cfg)
    if bar is not None:
        bar.close()
    if out is not None:
        _checkpoint(out, sharded, optimizer, model, state, cfg)
    else:
        sharded.gather_into_(model)
    result.steps, result.nan_batches = state.step, state.nan_batches
    return result


def _checkpoint(
    out: Path,
    sharded: ShardedCrosscoder,
    optimizer: torch.optim.Optimizer,
    model: Crosscoder,
    state: TrainState,
    cfg: TrainConfig,
) -> None:
    """Gather onto the first process and write ``out/checkpoint`` in the one-process format."""
    full_optimizer = gather_state(sharded, optimizer, model, cfg)
    counters = sharded.gather_full("tokens_since_fired", state.tokens_since_fired)
    if full_optimizer is not None and counters is not None:
        full_state = TrainState(
            step=state.step,
            batches_consumed=state.batches_consumed,
            nan_batches=state.nan_batches,
            tokens_since_fired=counters.cpu(),
        )
        save_checkpoint(out, model, full_optimizer, full_state, cfg)
    if sharded.mesh.active:
        torch.distributed.barrier()


__all__ = [
    "CHECKPOINT_DIR",
    "gather_state",
    "shard_state_",
    "sharded_step",
    "state_bytes",
    "train_sharded",
]
