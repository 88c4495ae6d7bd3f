"""``expert_alignment`` on a hand-worked case: lift, entropy, owners, shares per class."""

from __future__ import annotations

import math

import pytest
import torch

from crossdiff_analyses.expert_alignment import AlignmentSettings, alignment_summary, merge, tally

# 8 tokens, K = 2 of E = 4 experts; N_e = 5, 5, 3, 3
CHOSEN = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 3], [1, 2], [2, 3], [0, 1], [1, 3]])
ACTIVE_TOKENS = {
    0: [0, 1, 6],  # always with experts 0 and 1: lift 8/5 on both
    1: list(range(8)),  # everywhere: lift 1
    2: [5],  # too rare to judge
    3: [2, 4, 5],  # always with expert 2: lift 8/3
}
CLASSES = ["moe_only", "shared", "moe_only", "shared"]


def _active() -> torch.Tensor:
    active = torch.zeros(8, 4, dtype=torch.bool)
    for latent, tokens in ACTIVE_TOKENS.items():
        active[tokens, latent] = True
    return active


def test_alignment_by_hand() -> None:
    active = _active()
    # tallies of two halves merge into the tally of the whole
    counts = merge(tally(active[:3], CHOSEN[:3], 4), tally(active[3:], CHOSEN[3:], 4))
    whole = tally(active, CHOSEN, 4)
    assert torch.equal(counts.joint_LE, whole.joint_LE) and counts.tokens == 8
    settings = AlignmentSettings(min_fires=2)
    summary = alignment_summary(counts, 2, CLASSES, settings)
    assert summary["expert_share"] == [5 / 8, 5 / 8, 3 / 8, 3 / 8]
    assert summary["live_latents"] == 3
    rows = {row["latent"]: row for row in summary["top_latents"]}
    assert rows[3]["lift"] == pytest.approx([8 / 15, 8 / 15, 8 / 3, 8 / 9])
    assert rows[0]["lift"] == pytest.approx([8 / 5, 8 / 5, 0, 0])
    assert rows[1]["lift"] == pytest.approx([1, 1, 1, 1])
    assert [row["latent"] for row in summary["top_latents"]] == [3, 0, 1]  # by largest lift
    assert rows[0]["entropy"] == pytest.approx(0.5)  # q = (1/2, 1/2, 0, 0), log 2 / log 4
    q = torch.tensor([5, 5, 3, 3]) / 16
    assert rows[1]["entropy"] == pytest.approx(float(-(q * q.log()).sum()) / math.log(4))
    assert (rows[0]["owner"], rows[1]["owner"], rows[3]["owner"]) == (0, -1, 2)
    assert summary["owned"] == [1, 0, 1, 0]
    assert summary["expert_specific"]["moe_only"] == {
        "live": 1, "specific": 1, "share": 1.0, "median_entropy": pytest.approx(0.5),
    }  # fmt: skip
    assert summary["expert_specific"]["shared"]["live"] == 2
    assert summary["expert_specific"]["shared"]["share"] == 0.5
    # a stricter lift threshold drops latent 0 (lift 1.6) but keeps latent 3 (lift 2.67)
    strict = alignment_summary(counts, 2, CLASSES, AlignmentSettings(min_fires=2, min_lift=2.0))
    assert strict["owned"] == [0, 0, 1, 0]


def test_an_expert_never_chosen_has_no_lift() -> None:
    # expert 3 never chosen: its lift is undefined (None in the JSON), the others are not
    chosen = torch.tensor([[0, 1], [1, 2], [0, 2], [0, 1]])
    active = torch.ones(4, 1, dtype=torch.bool)
    summary = alignment_summary(tally(active, chosen, 4), 2, ["shared"], AlignmentSettings(1))
    assert summary["top_latents"][0]["lift"] == [1.0, 1.0, 1.0, None]
    assert summary["owned"] == [0, 0, 0, 0]
