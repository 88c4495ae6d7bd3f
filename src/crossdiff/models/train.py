"""The training loop: AdamW, warm-up + cosine, clipping, router losses, checkpoints, DDP.

One function, :func:`train`, runs alone or under torchrun (each rank takes its share of the same
global batch; gradients are averaged by ``DistributedDataParallel``). Every ``checkpoint_every``
steps it saves a checkpoint under ``out_dir/checkpoint``; started again with the same configs it
resumes from there and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossdiff.config import to_dict
from crossdiff.errors import ConfigError
from crossdiff.models.build import build_model
from crossdiff.models.checkpoint import has_checkpoint, load_checkpoint_, save_checkpoint
from crossdiff.models.config import ModelConfig, TrainConfig
from crossdiff.models.data import BatchOrder, validation_sets
from crossdiff.models.ddp import DistContext, all_reduce_sum, barrier, init_distributed
from crossdiff.models.evaluate import Evaluation, evaluate
from crossdiff.models.losses import auxiliary_losses, record_routing
from crossdiff.models.optim import learning_rate, make_optimizer
from crossdiff.runtime import retain_freed_memory

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from crossdiff.corpus import PackedSequences

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainResult:
    """What a finished training run produced."""

    model: HookedTransformer
    """The trained model (unwrapped from DDP)."""
    state: dict[str, Any]
    """Trainer state: ``step``, ``tokens_seen``, ``train_seconds``, ``history`` (one record per
    step: loss, lr, balance, z, grad_norm) and ``evals`` (periodic evaluations)."""
    evaluation: Evaluation | None
    """Final validation results (None on ranks other than 0)."""
    precision: str
    """The precision actually used: ``fp32`` or ``bf16``."""


def resolve_precision(precision: str, device: str) -> str:
    """``fp32`` or ``bf16`` for the requested ``precision`` on ``device``."""
    import torch

    if precision == "auto":
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def autocast_factory(
    precision: str, device: str
) -> Callable[[], AbstractContextManager[Any]] | None:
    """A maker of autocast contexts for ``precision`` (None for full precision)."""
    import torch

    if precision != "bf16":
        return None
    return partial(torch.autocast, device_type=device.split(":")[0], dtype=torch.bfloat16)


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    sequences: dict[str, PackedSequences],
    out_dir: str | Path,
    context: DistContext | None = None,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = print,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train (or resume training) a model on ``sequences["train"]``; evaluate on ``validation``.

    ``on_step(step)`` is called after each optimiser step (after any checkpoint of that step);
    ``on_record(record)`` with that step's metrics (loss, balance, z, lr, grad norm; main
    process only), e.g. for an experiment tracker.
    """
    import torch
    from torch.nn.parallel import DistributedDataParallel

    context = context or init_distributed()
    retain_freed_memory()
    if train_config.batch_size % context.world_size:
        raise ConfigError(
            f"train.batch_size {train_config.batch_size} is not divisible by the "
            f"{context.world_size} processes"
        )
    log = log if context.is_main else None
    train_rows = sequences["train"].input_ids  # [n, ctx]
    if train_rows.shape[1] != model_config.n_ctx:
        raise ConfigError(
            f"the corpus's sequences have {train_rows.shape[1]} tokens but model.n_ctx is "
            f"{model_config.n_ctx}; they must be equal"
        )
    total_steps = train_config.steps(model_config.n_ctx)
    torch.manual_seed(train_config.seed)
    model = build_model(model_config, context.device)
    optimizer = make_optimizer(model, train_config)
    checkpoint = Path(out_dir) / CHECKPOINT_DIR
    state = _resume_(checkpoint, model, optimizer, model_config, train_config, log)
    wrapped = (
        DistributedDataParallel(model, broadcast_buffers=False) if context.distributed else model
    )
    precision = resolve_precision(train_config.precision, context.device)
    autocast = autocast_factory(precision, context.device)
    order = BatchOrder(len(train_rows), train_config.batch_size, train_config.seed)
    periodic_sets = validation_sets(sequences["validation"], train_config.eval_sequences_per_domain)
    reduce = partial(all_reduce_sum, context=context) if context.distributed else None
    moe = model_config.arch == "moe"
    tokens_per_step = train_config.batch_size * model_config.n_ctx
    started = time.perf_counter()
    seconds_before = state["train_seconds"]

    with record_routing(model, logits=moe and train_config.z_loss_coef > 0) as record:
        for step in range(state["step"], total_steps):
            lr = learning_rate(step, total_steps, train_config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rows = order.local_batch(step, context.rank, context.world_size)
            batch = torch.as_tensor(train_rows[rows], dtype=torch.long, device=context.device)
            record.clear()
            with autocast() if autocast else nullcontext():
                lm_loss = wrapped(batch, return_type="loss")  # mean over [batch, pos - 1]
            balance, z = auxiliary_losses(record, model_config.num_experts, reduce)
            loss = lm_loss
            if balance is not None and train_config.load_balance_coef:
                loss = loss + train_config.load_balance_coef * balance
            if z is not None:
                loss = loss + train_config.z_loss_coef * z
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
                if train_config.grad_clip
                else None
            )
            optimizer.step()
            state["step"] = step + 1
            state["tokens_seen"] += tokens_per_step
            state["train_seconds"] = seconds_before + time.perf_counter() - started
            state["history"].append(
                _step_record(step + 1, lr, lm_loss, balance, z, grad_norm, context)
            )
            done = step + 1
            if on_record is not None and context.is_main:
                on_record(state["history"][-1])
            if log and _due(train_config.log_every, done):
                log(_progress(state, total_steps))
            if context.is_main and _due(train_config.eval_every, done) and done < total_steps:
                result = evaluate(model, periodic_sets, autocast=autocast)
                state["evals"].append(
                    {"step": done, "val_loss": result.val_loss, "expert_usage": result.expert_usage}
                )
                if log:
                    log(f"step {done}: val loss {_fmt(result.val_loss)}")
            if done == total_steps or _due(train_config.checkpoint_every, done):
                if context.is_main:
                    save_checkpoint(checkpoint, model, model_config, optimizer, state)
                barrier(context)
            if on_step is not None:
                on_step(step + 1)

    evaluation = None
    if context.is_main:
        final_sets = validation_sets(
            sequences["validation"], train_config.final_eval_sequences_per_domain
        )
        evaluation = evaluate(model, final_sets, autocast=autocast)
        if log:
            log(f"final val loss {_fmt(evaluation.val_loss)}")
    return TrainResult(model=model, state=state, evaluation=evaluation, precision=precision)


def _resume_(
    checkpoint: Path,
    model: HookedTransformer,
    optimizer: Any,
    model_config: ModelConfig,
    train_config: TrainConfig,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Load the checkpoint if there is one (configs must match); else a fresh trainer state."""
    fresh = {
        "step": 0,
        "tokens_seen": 0,
        "train_seconds": 0.0,
        "history": [],
        "evals": [],
        "model_config": to_dict(model_config),
        "train_config": to_dict(train_config),
    }
    if not has_checkpoint(checkpoint):
        return fresh
    state = load_checkpoint_(checkpoint, model, optimizer)
    for key in ("model_config", "train_config"):
        if state.get(key) != fresh[key]:
            raise ConfigError(
                f"the checkpoint at {str(checkpoint)!r} was made with a different {key}; "
                "use a new output directory (or delete the old one) to train with these settings"
            )
    if log:
        log(f"resuming from {checkpoint} at step {state['step']}")
    return state


def _step_record(
    step: int, lr: float, lm_loss: Any, balance: Any, z: Any, grad_norm: Any, context: DistContext
) -> dict[str, float | int | None]:
    """One step's metrics, averaged over processes (the global batch's values)."""
    import torch

    values = torch.stack(
        [
            lm_loss.detach().float(),
            (balance.detach() if balance is not None else torch.zeros((), device=lm_loss.device)),
            (z.detach() if z is not None else torch.zeros((), device=lm_loss.device)),
        ]
    ).float()
    values = (all_reduce_sum(values, context) / context.world_size).tolist()
    return {
        "step": step,
        "lr": lr,
        "loss": values[0],
        "balance": values[1] if balance is not None else None,
        "z": values[2] if z is not None else None,
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
    }


def _due(every: int, step: int) -> bool:
    """True if something done every ``every`` steps (0: never) is due after ``step``."""
    return bool(every) and step % every == 0


def _progress(state: dict[str, Any], total_steps: int) -> str:
    last = state["history"][-1]
    rate = state["tokens_seen"] / max(state["train_seconds"], 1e-9)
    extra = f" balance {last['balance']:.4f}" if last["balance"] is not None else ""
    return (
        f"step {state['step']}/{total_steps} loss {last['loss']:.4f}{extra} "
        f"lr {last['lr']:.2e} {rate:,.0f} tok/s"
    )


def _fmt(losses: dict[str, float]) -> str:
    return ", ".join(f"{domain} {value:.3f}" for domain, value in losses.items())
