"""Parameter counts read off the built modules: total, active per token, embeddings, router."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

EMBEDDING_PREFIXES = ("embed.", "pos_embed.", "unembed.")


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of one model, counted from its modules.

    ``active`` = ``total`` minus the parameters of the experts a token does NOT use: in each MoE
    layer, (E − k) experts' worth. It includes the embedding, unembedding and the router (every
    token pays for them); ``active_non_embedding`` leaves out embedding and unembedding.
    """

    total: int
    """Every trainable parameter."""
    active: int
    """Parameters used on one token: total minus (E − k) experts per MoE layer."""
    embedding: int
    """Token (and learned position) embedding plus unembedding."""
    router: int
    """Router (gate) weights over all MoE layers; 0 for a dense model."""
    experts: int
    """Parameters of all experts (MoE) or of all MLPs (dense)."""

    @property
    def active_non_embedding(self) -> int:
        """Active parameters outside embedding and unembedding."""
        return self.active - self.embedding

    def to_dict(self) -> dict[str, int]:
        """A JSON-ready dict including ``active_non_embedding``."""
        return {**asdict(self), "active_non_embedding": self.active_non_embedding}


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(model: nn.Module) -> ParamCounts:
    """Count ``model``'s parameters (a HookedTransformer, dense or MoE) from its modules."""
    total = _numel(model)
    embedding = sum(
        p.numel() for name, p in model.named_parameters() if name.startswith(EMBEDDING_PREFIXES)
    )
    inactive = router = experts = 0
    for block in model.blocks:
        mlp = block.mlp
        if hasattr(mlp, "experts"):
            sizes = sorted((_numel(expert) for expert in mlp.experts), reverse=True)
            k = mlp.experts_per_token
            inactive += sum(sizes) - sum(sizes[:k])  # the smallest E − k experts: a lower bound
            router += _numel(mlp.W_gate)
            experts += sum(sizes)
        else:
            experts += _numel(mlp)
    return ParamCounts(
        total=total, active=total - inactive, embedding=embedding, router=router, experts=experts
    )
