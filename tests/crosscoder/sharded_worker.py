"""Run by ``torchrun`` in test_sharded.py: latent-sharded training, selection, memory, resume.

``python -m torch.distributed.run --nproc_per_node N -m tests.crosscoder.sharded_worker OUT.json
DIR LATENT_SHARDS`` writes (from the first process) the loss curves, the kept flat indices of a
fixed tied batch, every process's bytes of parameters + Adam state, and the gathered weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from crossdiff.crosscoder import Crosscoder, TrainConfig
from crossdiff.crosscoder.distributed import finish_distributed, init_distributed
from crossdiff.crosscoder.sharded import Mesh, ShardedCrosscoder
from crossdiff.crosscoder.sharded_train import state_bytes, train_sharded
from crossdiff.crosscoder.train import make_optimizer
from tests.crosscoder.conftest import planted, small_crosscoder

SHARDED_TRAIN = TrainConfig(steps=12, lr=3e-3, warmup_steps=2, dead_tokens=128, aux_k=6)
"""The settings of ``ddp_worker``: aux-k engages after two steps (128 tokens)."""


def initial(n_shared: int = 30) -> Crosscoder:
    """The crosscoder every run starts from: widths 12 and 12, 48 latents of which 30 tied
    (the shared block spans the shards), λ > 0."""
    return small_crosscoder(n_shared=n_shared, sparsity_coeff=0.05)


def data(n: int = 12) -> list[dict[str, torch.Tensor]]:
    """``n`` global batches of 64 planted tokens (the same on every process)."""
    return list(planted(noise=0.05).batches(64, n, seed=5))


def run(latent_shards: int, n_shared: int = 30, out_dir: Path | None = None, n: int = 12):
    """Train from :func:`initial` on :func:`data`; ``(losses, model, history)``."""
    model = initial(n_shared)
    result = train_sharded(model, data(n), SHARDED_TRAIN, latent_shards, out_dir)
    return [s.loss for s in result.history], model, result.history


def tied_preacts() -> torch.Tensor:
    """``[64, 48]`` small-integer pre-activations: most scores tie with many others."""
    return torch.randint(-4, 6, (64, 48), generator=torch.Generator().manual_seed(7)).float()


def tie_selection(latent_shards: int) -> list[int]:
    """Global flat indices the grid keeps (k·B = 200) on :func:`tied_preacts`, each process
    selecting on its tokens × latents block."""
    mesh = Mesh(latent_shards)
    model = small_crosscoder(rank_by_decoder_norm=False)
    shard = ShardedCrosscoder(model.cfg, mesh)
    shard.threshold.fill_(2.0)  # the candidate filter cuts at a tie value
    size = 64 // mesh.data_world
    first = mesh.data_rank * size
    local = tied_preacts()[first : first + size, shard.lo : shard.hi].contiguous()
    rho = torch.ones(shard.hi - shard.lo)
    pattern, _, _ = shard.batch_topk(local, 200, rho, first)
    mine = ((pattern.rows_N + first) * 48 + pattern.cols_N + shard.lo).tolist()
    if not mesh.active:
        return mine
    parts: list = [None] * mesh.world
    dist.all_gather_object(parts, mine)
    return sorted(i for part in parts for i in part)


def memory(latent_shards: int) -> int:
    """Bytes of parameters + Adam state this process holds after one step of a wider
    crosscoder (widths 64 + 64, 1024 latents)."""
    model = small_crosscoder(d_models=(64, 64), dict_size=1024, k=8, n_shared=32)
    batches = [{"A": x, "B": y} for x, y in torch.randn(1, 2, 64, 64).unbind(0)]
    cfg = TrainConfig(steps=1, warmup_steps=0)
    if latent_shards == 0:  # the one-process reference
        optimizer = make_optimizer(model, cfg)
        loss = model(batches[0]).recon_BC.pow(2).sum()
        loss.backward()
        optimizer.step()
        return state_bytes(model, optimizer)
    from crossdiff.crosscoder import sharded_train

    held: dict[str, int] = {}
    original = sharded_train.sharded_step

    def spy(sharded, optimizer, *args):
        stats = original(sharded, optimizer, *args)
        held["bytes"] = state_bytes(sharded, optimizer)
        return stats

    sharded_train.sharded_step = spy
    try:
        train_sharded(model, batches, cfg, latent_shards)
    finally:
        sharded_train.sharded_step = original
    return held["bytes"]


def main(out_path: str, work: str, latent_shards: int) -> None:
    """Everything the test compares, from the first process."""
    losses, model, history = run(latent_shards)
    work_dir = Path(work)
    first, _, _ = run(latent_shards, out_dir=work_dir / "resumed", n=6)  # stops after 6 batches
    rest, resumed, _ = run(latent_shards, out_dir=work_dir / "resumed")  # resumes at step 6
    ties = tie_selection(latent_shards)
    mem = memory(latent_shards)
    gathered: list = [None] * (dist.get_world_size() if dist.is_initialized() else 1)
    if dist.is_initialized():
        dist.all_gather_object(gathered, mem)
    else:
        gathered = [mem]
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        weights = {k: v.tolist() for k, v in model.state_dict().items()}
        record = {
            "losses": losses,
            "l0": [s.l0 for s in history],
            "dead": [s.dead_fraction for s in history],
            "aux": [s.aux for s in history],
            "resumed": first + rest,
            "resumed_weights": {k: v.tolist() for k, v in resumed.state_dict().items()},
            "ties": ties,
            "memory": gathered,
            "weights": weights,
        }
        Path(out_path).write_text(json.dumps(record))


if __name__ == "__main__":
    torch.set_num_threads(1)
    init_distributed()
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    finish_distributed()
