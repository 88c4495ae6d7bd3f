"""``torchrun --nproc_per_node 2`` on CPU (gloo) follows one process's loss curve.

Tolerance: per-step losses agree to 1e-4 nats (absolute). Both runs see the same global batch of
8 sequences (4 per rank under torchrun) and DDP averages gradients, so the runs differ only in
floating-point summation order (2 ranks × 4 rows vs 8 rows; 1 vs 2 threads); the MoE's
load-balancing statistics f_e are all-reduced so they are the global batch's in both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crossdiff.cli import main

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4

CONFIG = """
[model]
n_layers = 2
d_model = 32
n_heads = 2
d_mlp = 64
num_experts = 4
experts_per_token = 2

[train]
tokens = 1536          # 12 steps of 8 x 16 tokens
batch_size = 8
lr = 1e-2
warmup_steps = 2
z_loss_coef = 1e-3
eval_every = 0
checkpoint_every = 0
log_every = 0
final_eval_sequences_per_domain = 4
"""


@pytest.mark.slow
def test_torchrun_two_processes_follow_the_single_process_loss_curve(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    args = ["train-model", "--arch", "moe", "--corpus", str(tiny_corpus), "--config", str(config)]

    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    crossdiff = Path(sys.executable).parent / "crossdiff"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "--no-python",
        str(crossdiff),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # A session of its own, so a hung run's ranks can all be killed on timeout.
    proc = subprocess.Popen(
        [*torchrun, *args, "--out", str(tmp_path / "two")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]

    one = json.loads((tmp_path / "one" / "train_log.json").read_text())["history"]
    two = json.loads((tmp_path / "two" / "train_log.json").read_text())["history"]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert len(one) == len(two) == 12
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) <= TOLERANCE, (a, b)
        assert abs(a["balance"] - b["balance"]) <= TOLERANCE, (a, b)
    # The curve is not trivially flat: training moved the loss.
    assert one[-1]["loss"] < one[0]["loss"] - 0.1
