"""The allocator setting that keeps large freed blocks in the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHURN = """
import resource, sys
import torch
from crossdiff.runtime import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
for _ in range(10):  # glibc settles after a few rounds of heap growth
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MiB, freed at once
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_retained_memory_stops_the_page_faults_of_reallocating_a_large_tensor() -> None:
    pages = (20 * (64 << 20)) // 4096  # what re-faulting every allocation would cost
    assert _page_faults("default") > pages // 2
    assert _page_faults("retain") < pages // 20
