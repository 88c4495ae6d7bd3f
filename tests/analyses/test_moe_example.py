"""``examples/moe_lens.py``: a tiny DeepSeek-V3 saved with save_pretrained, loaded back by path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "moe_lens.py"


@pytest.mark.slow
def test_the_moe_lens_example_runs_on_a_saved_deepseek_v3(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tiny-deepseek-v3" / "config.json").is_file()
    data = json.loads((tmp_path / "moe_lens.json").read_text())
    assert data["model"] == str(tmp_path / "tiny-deepseek-v3")
    assert set(data["routing"]["layers"]) == {"1", "2"}  # layer 0 is DeepSeek's dense layer
    for stats in data["routing"]["layers"].values():
        assert (stats["n_experts"], stats["top_k"]) == (8, 3)
        for domain in stats["domains"].values():
            assert domain["share_sum"] == pytest.approx(3.0, abs=1e-12)
    for stats in data["early_decoding"]["layers"].values():
        assert stats["as_routed"]["3"]["hidden_cosine"] == pytest.approx(1.0, abs=1e-6)
        assert stats["as_routed"]["1"]["contribution_cosine"] < 0.99
    for values in data["early_decoding"]["perplexity_increase"]["as_routed"].values():
        assert set(values) == {"1", "2", "3"} and values["3"] == 0.0
    assert "perplexity by n" in result.stdout
