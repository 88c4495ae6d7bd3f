"""Fixtures: one tiny model and its adapter per case, built once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch

from crossdiff.adapters import ModelAdapter, adapt
from crossdiff.plugins import create_plugin_manager
from tests.adapters.tiny_models import HF_DENSE_CASES, HF_MOE_CASES, VOCAB, hf_model, tl_model

MOE_CASES = (*HF_MOE_CASES, "tl_moe")
DENSE_CASES = (*HF_DENSE_CASES, "tl_dense")


@dataclass
class Case:
    """A tiny model, its adapter (chosen through the plugin manager) and its MLP modules."""

    name: str
    model: torch.nn.Module
    adapter: ModelAdapter

    def mlp(self, layer: int) -> torch.nn.Module:
        """The MLP / MoE block module of ``layer``."""
        if self.name.startswith("tl_"):
            return self.model.blocks[layer].mlp
        if self.name == "gpt2":
            return self.model.transformer.h[layer].mlp
        if self.name == "granitemoe":
            return self.model.model.layers[layer].block_sparse_moe
        return self.model.model.layers[layer].mlp


def build_case(name: str) -> Case:
    """Build case ``name`` and adapt it through the installed plugins."""
    model = tl_model(moe=name == "tl_moe") if name.startswith("tl_") else hf_model(name)
    return Case(name, model, adapt(model, create_plugin_manager()))


_CASES: dict[str, Case] = {}


def get_case(name: str) -> Case:
    """Case ``name``, built on first use."""
    if name not in _CASES:
        _CASES[name] = build_case(name)
    return _CASES[name]


@pytest.fixture(params=MOE_CASES)
def moe_case(request: pytest.FixtureRequest) -> Case:
    """Each MoE family in turn (10 Hugging Face families and TransformerLens' native MoE)."""
    return get_case(request.param)


@pytest.fixture(params=DENSE_CASES)
def dense_case(request: pytest.FixtureRequest) -> Case:
    """Each dense model kind in turn."""
    return get_case(request.param)


@pytest.fixture
def tokens() -> torch.Tensor:
    """``[2, 12]`` random token ids (3 batch rows would do as well; 2 keeps it fast)."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, VOCAB, (2, 12), generator=generator)


@contextmanager
def recording(modules: dict[int, torch.nn.Module]) -> Iterator[dict[int, dict[str, torch.Tensor]]]:
    """Record each module's first input and output with plain torch hooks (no adapter code)."""
    seen: dict[int, dict[str, torch.Tensor]] = {key: {} for key in modules}
    handles = []
    for key, module in modules.items():

        def hook(module, args, output, key=key):
            seen[key]["input"] = args[0].detach().reshape(-1, args[0].shape[-1])
            seen[key]["output"] = output.detach().reshape(-1, output.shape[-1])

        handles.append(module.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
