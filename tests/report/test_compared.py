"""The report's "What was compared" for models given by path, its CE note, and seed-paper
claims that cannot be judged."""

from __future__ import annotations

from crossdiff.report.claims import feature_claims
from crossdiff.report.sections import ce_comment, compared

PATH_MODELS = {
    "dense": {"arch": "dense", "architecture": "Qwen2ForCausalLM (qwen2)", "path": "/m/d",
              "active_params": 100, "total_params": 100, "tokens_seen": None,
              "val_loss": {"code": 6.2}},
    "moe": {"arch": "moe", "architecture": "Qwen2MoeForCausalLM (qwen2_moe)", "path": "/m/m",
            "active_params": 120, "total_params": 200, "tokens_seen": None,
            "val_loss": {"code": 6.3}},
}  # fmt: skip


def test_models_given_by_path_are_described_not_dashed() -> None:
    table = compared({"models": PATH_MODELS}).blocks[0]
    assert "moe — Qwen2MoeForCausalLM (qwen2_moe)" in table
    assert table.count("not recorded (given by path)") == 2
    assert "<td class='num'>120</td><td class='num'>200</td>" not in table  # one row each
    assert "<td class='num'>100</td><td class='num'>120</td>" in table  # active, side by side


def test_ce_recovered_outside_0_1_gets_a_note_and_inside_does_not() -> None:
    quality = {"ce_recovered": {"dense": 0.9, "moe": 1.44},
               "ce_zero_ablation_increase": {"dense": 0.5, "moe": 0.0004}}  # fmt: skip
    note = ce_comment({"crosscoder": quality})
    assert "moe 1.44" in note and "+0.0004 nats" in note and "dense" not in note.split("(")[1]
    quality["ce_recovered"]["moe"] = -0.2
    assert "moe -0.2" in ce_comment({"crosscoder": quality})
    quality["ce_recovered"]["moe"] = 1.0
    assert ce_comment({"crosscoder": quality}) == ""


def test_without_exclusive_latents_the_seed_claims_are_not_testable() -> None:
    for counts in ({"shared": 40, "dense_only": 0, "moe_only": 0}, {}):
        claims = feature_claims({"models": PATH_MODELS, "features": {"counts": counts}})
        assert len(claims) == 3
        assert all(c.holds is None and c.statistic.startswith("not testable") for c in claims)
    judged = feature_claims(
        {"models": PATH_MODELS, "features": {"counts": {"dense_only": 30, "moe_only": 5}}}
    )
    assert judged[0].holds is True  # with exclusive latents the first claim is judged
