"""The in-repo models on every device present: the forward pass equals the CPU's."""

from __future__ import annotations

import pytest
import torch

from crossdiff.models.build import build_model
from crossdiff.models.config import ModelConfig
from tests.devices import DEVICES

CONFIG = dict(n_layers=2, d_model=16, n_heads=2, d_mlp=32, vocab_size=64, n_ctx=16)


@pytest.mark.parametrize("arch", ["dense", "moe"])
@pytest.mark.parametrize("device", DEVICES)
def test_forward_on_device_equals_the_cpu_forward(device: str, arch: str) -> None:
    extra = {"num_experts": 4, "experts_per_token": 2} if arch == "moe" else {}
    config = ModelConfig(arch=arch, **CONFIG, **extra)
    cpu = build_model(config, "cpu").eval()
    on_device = build_model(config, device).eval()
    on_device.load_state_dict(cpu.state_dict())
    tokens = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = cpu(tokens, return_type="logits")
        got = on_device(tokens.to(device), return_type="logits")
        loss = on_device(tokens.to(device), return_type="loss")
    assert got.device.type == device and loss.device.type == device
    assert torch.allclose(got.cpu(), expected, atol=1e-4 if device == "cpu" else 2e-3)
