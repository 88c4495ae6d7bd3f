"""The devices tests run on: the CPU always, CUDA where present (skipped with a reason otherwise).

@pytest.mark.parametrize("device", DEVICES)
def test_something(device: str) -> None: ...
"""

from __future__ import annotations

import pytest
import torch

NO_CUDA = "no CUDA device on this machine (run the suite on a GPU machine to exercise it)"

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA),
    ),
]
"""``device`` parameters: ``cpu`` and ``cuda``."""
