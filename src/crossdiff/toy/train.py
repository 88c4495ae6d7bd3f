"""Training many toy models at once: one leading model axis, one optimiser, no loop over models.

Each model's loss depends only on its own weights, so the gradient of the summed loss is each
model's own gradient, and Adam is elementwise: a batch of M models follows exactly the M
trajectories the models would follow one at a time (tested).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from crossdiff.errors import ConfigError
from crossdiff.toy.config import PER_MODEL, ToyConfig, batch_key
from crossdiff.toy.data import UniformStream, feature_importance, sample_features
from crossdiff.toy.model import ToyForward, ToyParams, expert_generator, forward, init_params

DENSE_INIT_NOISE = 0.05
"""Std of the noise added to a trained dense model's weights when it initialises every expert."""


@dataclass
class TrainedBatch:
    """Models trained together, with the settings each was trained with."""

    configs: list[ToyConfig]
    """One config per model, in the order of the model axis."""
    params: ToyParams
    """Their final weights (detached)."""
    loss_M: torch.Tensor
    """Each model's reconstruction loss over its last 100 steps."""


def per_model(configs: Sequence[ToyConfig], name: str, device: torch.device) -> torch.Tensor:
    """The setting ``name`` of every model as a float tensor ``[M]``."""
    return torch.tensor([float(getattr(c, name)) for c in configs], device=device)


def reconstruction_loss(
    x_MBN: torch.Tensor, out: ToyForward, importance_MN: torch.Tensor
) -> torch.Tensor:
    """Importance-weighted squared error per model: mean_b Σ_i I_i (x_i − x̂_i)², ``[M]``."""
    return ((x_MBN - out.x_hat_MBN) ** 2 * importance_MN[:, None]).sum(-1).mean(-1)


def load_balance_loss(out: ToyForward, experts_M: torch.Tensor) -> torch.Tensor:
    """Switch-style balance E·Σ_e f_e·P_e per model, ``[M]`` (1 when routing is uniform).

    f_e is expert e's share of the routed slots, P_e its mean router probability.
    """
    routed_MBE = (out.gates_MBE > 0).to(out.probs_MBE.dtype)
    share_ME = routed_MBE.mean(1) / routed_MBE.sum(-1).mean(-1, keepdim=True)
    return experts_M * (share_ME * out.probs_MBE.mean(1)).sum(-1)


def train_batch(
    configs: Sequence[ToyConfig],
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> TrainedBatch:
    """Train models that share a batch key (n, m, data options, steps, batch size, lr) together."""
    configs = list(configs)
    if not configs:
        raise ConfigError("train_batch needs at least one toy config")
    if len({batch_key(c) for c in configs}) > 1:
        raise ConfigError(
            "models trained in one batch must share every setting but "
            f"{', '.join(PER_MODEL)}; got {len({batch_key(c) for c in configs})} kinds"
        )
    device = torch.device(device)
    first = configs[0]
    seeds = [c.seed for c in configs]
    params = init_params(
        seeds, [c.n_experts for c in configs], [c.k for c in configs],
        [c.init for c in configs], first.n_features, first.d_hidden, first.group_size, device,
        [c.renormalised for c in configs],
    )  # fmt: skip
    from_dense = [m for m, c in enumerate(configs) if c.init == "dense"]
    if from_dense:
        dense = [
            dataclasses.replace(configs[m], n_experts=1, k=1, init="random", load_balance=0.0)
            for m in from_dense
        ]
        base = train_batch(dense, device, progress).params
        with torch.no_grad():
            for row, m in enumerate(from_dense):
                E = configs[m].n_experts
                noise_EHN = torch.stack(
                    [
                        torch.randn(
                            base.W_MEHN.shape[2:], generator=expert_generator(seeds[m], e, 1)
                        )
                        for e in range(E)
                    ]
                ).to(device)
                params.W_MEHN[m, :E] = base.W_MEHN[row, 0] + DENSE_INIT_NOISE * noise_EHN
                params.b_MEN[m, :E] = base.b_MEN[row, 0]
    sparsity_M = per_model(configs, "sparsity", device)
    importance_MN = feature_importance(
        first.n_features, per_model(configs, "importance_decay", device)
    )
    balance_M = per_model(configs, "load_balance", device)
    stream = UniformStream(seeds, first.batch_size, first.n_features, device=device)
    optimiser = torch.optim.Adam(params.tensors(), lr=first.lr)
    recent_M = torch.zeros(len(configs), device=device)
    window = min(100, first.steps)
    balanced = bool(balance_M.any())
    steps = range(first.steps)
    if progress:
        from crossdiff.progress import progress_bar

        steps = progress_bar(steps, desc=f"{len(configs)} toy models", leave=False)
    for step in steps:
        x_MBN = sample_features(stream, sparsity_M, first.correlation, first.group_size)
        out = forward(params, x_MBN)
        loss_M = reconstruction_loss(x_MBN, out, importance_MN)
        total_M = loss_M
        if balanced:
            total_M = loss_M + balance_M * load_balance_loss(out, params.experts_M)
        optimiser.zero_grad(set_to_none=True)
        total_M.sum().backward()
        optimiser.step()
        if step >= first.steps - window:
            recent_M += loss_M.detach() / window
    return TrainedBatch(configs, params.detached(), recent_M)


def train_models(
    configs: Sequence[ToyConfig], device: torch.device | str = "cpu", progress: bool = False
) -> list[TrainedBatch]:
    """Train every model, batching together those that share a batch key (first-seen order)."""
    groups: dict[tuple, list[ToyConfig]] = {}
    for config in configs:
        groups.setdefault(batch_key(config), []).append(config)
    return [train_batch(group, device, progress) for group in groups.values()]
