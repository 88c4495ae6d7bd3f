"""Every claim on constructed inputs: one where it must hold, one where it must not (its negative
control), and undefined statistics (collapsed routing, identical sequences, NaN, None, too small
a sample) that must come out "not testable" without an exception."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from crossdiff.pipeline.report import moe_summary
from crossdiff.report.claims import ALPHA, Claim, holm, run_claims
from crossdiff_analyses.routing import layer_statistics
from crossdiff_analyses.routing_similarity import (
    collapse,
    cross_model,
    sequence_level,
    token_level,
)

# ---------------------------------------------------------------- the framework


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04: ×3 = 0.03, ×2 = 0.06, ×1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_a_claim_significant_alone_fails_after_holm_and_keeps_both_p_values() -> None:
    # fewer exclusive latents: 32 vs 50 -> one-sided binomial p ≈ 0.030; with two density claims
    # also tested (p = 0.1 each) Holm multiplies the smallest p by 3
    tests = {
        "m_only_vs_shared": _density_test(0.1, 0.8, 50),
        "d_only_vs_shared": _density_test(0.1, 0.8, 30),
    }
    fewer = run_claims(_features(50, 32, tests))[0]
    raw = binomtest(32, 82, 0.5, alternative="less").pvalue
    assert fewer.p_value == pytest.approx(raw) and raw < ALPHA
    assert fewer.p_adjusted == pytest.approx(3 * raw) and fewer.p_adjusted > ALPHA
    assert fewer.holds is False and fewer.verdict == "does not hold"
    alone = run_claims(_features(50, 32, {}))[0]  # the only test: nothing to correct for
    assert alone.p_adjusted == pytest.approx(raw) and alone.holds is True
    record = fewer.as_dict()
    assert record["verdict"] == "does not hold" and "condition" not in record
    assert {"p_value", "p_adjusted", "n", "holds"} <= set(record)


def test_a_numpy_bool_becomes_a_plain_bool() -> None:
    claim = Claim("s", "c", "m", "t", np.bool_(True))
    assert claim.holds is True and claim.verdict == "holds"


# ---------------------------------------------------------------- seed paper


def _features(dense_only: int, moe_only: int, tests: dict[str, Any], **extra) -> dict[str, Any]:
    return {
        "models": {"d": {"arch": "dense"}, "m": {"arch": "moe"}},
        "features": {"counts": {"shared": 100, "d_only": dense_only, "m_only": moe_only}},
        "density": {"median": {"shared": 0.01, "d_only": 0.04, "m_only": 0.03}, "tests": tests},
        **extra,
    }


def _density_test(p_greater: float, effect: float, n: int, shared: int = 500) -> dict:
    return {"p_greater": p_greater, "p_less": 1 - p_greater, "effect_size": effect,
            "p_value": 2 * min(p_greater, 1 - p_greater), "n": [n, shared]}  # fmt: skip


def _by_claim(claims: list[Claim], word: str) -> Claim:
    (claim,) = [c for c in claims if word in c.claim]
    return claim


def test_fewer_exclusive_latents_holds_fails_and_is_not_testable() -> None:
    assert run_claims(_features(54, 17, {}))[0].verdict == "holds"
    # negative control: 9 vs 11 is fewer, but a binomial test cannot tell them apart
    assert run_claims(_features(11, 9, {}))[0].verdict == "does not hold"
    assert run_claims(_features(0, 0, {}))[0].verdict == "not testable"
    dedicated = _features(54, 17, {}, crosscoder={"settings": {"n_dedicated": [64, 64]}})
    claim = run_claims(dedicated)[0]
    assert claim.holds is None and "dedicated blocks" in claim.statistic


def test_density_claims_follow_the_one_sided_test() -> None:
    tests = {
        "m_only_vs_shared": _density_test(1e-6, 0.4, 40),  # MoE-only denser: holds
        "d_only_vs_shared": _density_test(1e-6, 0.4, 40),  # dense-only denser, claim says less
    }
    claims = run_claims(_features(50, 40, tests))
    more, less = _by_claim(claims, "m-only"), _by_claim(claims, "d-only")
    assert more.verdict == "holds" and more.p_value == pytest.approx(1e-6)
    assert less.verdict == "does not hold"  # negative control: the opposite direction
    assert less.p_value == pytest.approx(1 - 1e-6)


def test_density_one_sided_p_derived_from_a_two_sided_test() -> None:
    tests = {
        "m_only_vs_shared": {"p_value": 0.002, "effect_size": 0.3, "n": [20, 300]},
        "d_only_vs_shared": {"p_value": 0.002, "effect_size": 0.3, "n": [20, 300]},
    }
    claims = run_claims(_features(20, 20, tests))
    assert _by_claim(claims, "m-only").p_value == pytest.approx(0.001)
    assert _by_claim(claims, "d-only").p_value == pytest.approx(0.999)


def test_one_exclusive_latent_cannot_make_a_density_claim_hold() -> None:
    tests = {"m_only_vs_shared": _density_test(1e-9, 1.0, 1)}
    claim = _by_claim(run_claims(_features(50, 1, tests)), "m-only")
    assert claim.verdict == "not testable" and "fewer than 10" in claim.statistic


@pytest.mark.parametrize(
    "test",
    [
        {"p_value": None, "effect_size": None, "n": [0, 300]},
        {"p_value": float("nan"), "effect_size": float("nan"), "n": [30, 300]},
        {"p_value": 0.01, "effect_size": 0.5},  # no sizes recorded
        {},
    ],
)
def test_undefined_density_tests_are_not_testable(test: dict) -> None:
    claim = _by_claim(run_claims(_features(50, 30, {"m_only_vs_shared": test})), "m-only")
    assert claim.verdict == "not testable" and claim.p_value is None


# ---------------------------------------------------------------- MoE Lens: early decoding


def _early(cos1: list[float], cos0: list[float] | None, increase: float) -> dict[str, Any]:
    data: dict[str, Any] = {
        "cosine": {str(i): {"1": {"contribution": 0.8, "hidden": c, "lens_kl": 0.1},
                            "2": {"contribution": 1.0, "hidden": 1.0, "lens_kl": 0.0}}
                   for i, c in enumerate(cos1)},
        "perplexity_increase": {"code": {"1": increase, "2": 0.0}},
    }  # fmt: skip
    if cos0 is not None:
        data["no_routed_experts"] = {
            str(i): {"hidden": c, "lens_kl": 0.5} for i, c in enumerate(cos0)
        }
    return {"models": {}, "moe": {"early_decoding": {"m": data}}}


def test_top1_is_judged_against_the_no_expert_baseline() -> None:
    holds = run_claims(_early([0.95, 0.96], [0.6, 0.7], 0.04))
    assert [c.verdict for c in holds] == ["holds", "holds"]
    assert "min gap closed = 0.87" in holds[0].statistic
    # negative control, the case: the top-1 cosine clears 0.9, but removing EVERY routed
    # expert already gives 0.968; and +8.7% perplexity is above MoE Lens's ~5%
    fails = run_claims(_early([0.970, 0.975], [0.968, 0.971], 0.087))
    assert [c.verdict for c in fails] == ["does not hold", "does not hold"]
    assert "0.970" in fails[0].statistic


@pytest.mark.parametrize(
    ("cos1", "cos0", "increase"),
    [
        ([0.95], None, float("nan")),  # no baseline measured, NaN perplexity
        ([0.95], [1.0], None),  # removing the experts changes nothing: gap undefined
        ([float("nan")], [0.5], None),
        ([None], [None], None),
    ],
)
def test_undefined_early_decoding_is_not_testable(cos1, cos0, increase) -> None:
    claims = run_claims(_early(cos1, cos0, increase))
    assert [c.verdict for c in claims] == ["not testable", "not testable"]


# ---------------------------------------------------------------- MoE Lens: routing


def _routing_summary(topk: torch.Tensor, labels: np.ndarray, n_experts: int) -> dict[str, Any]:
    stats = layer_statistics(topk, n_experts, labels)
    analyses = {"routing": {"models": {"m": {"layers": {"0": stats, "1": stats}}}}}
    return {"models": {}, "moe": moe_summary(analyses)}


def _domain_routing(specialised: bool, tokens: int = 300) -> tuple[torch.Tensor, np.ndarray]:
    """E = 8, K = 2: each domain sends its tokens to its own pair of experts (or everyone to the
    same pair, 0 and 1), with a quarter of the tokens spread at random."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["code", "science", "stories"], tokens)
    rows = []
    for i, _ in enumerate(labels):
        domain = i // tokens
        if rng.random() < 0.25:
            rows.append(rng.choice(8, 2, replace=False))
        else:
            first = 2 * domain if specialised else 0
            rows.append([first, first + 1])
    return torch.as_tensor(np.array(rows)), labels


def test_specialisation_per_domain_against_the_experts_share_elsewhere() -> None:
    topk, labels = _domain_routing(specialised=True)
    (claim,) = run_claims(_routing_summary(topk, labels, 8))
    assert claim.verdict == "holds" and "6 of 6" in claim.measured
    # negative control: the same busiest expert on every domain, concentrated as before
    topk, labels = _domain_routing(specialised=False)
    summary = _routing_summary(topk, labels, 8)
    cell = summary["moe"]["routing"]["m"]["0"]["code"]
    # the old criterion (busiest share ≥ 1.5× uniform) passes it: 0.81 vs 0.25
    assert cell["top_share"] > 3 * summary["moe"]["routing"]["m"]["0"]["uniform_share"]
    assert (
        cell["experts_for_half"] < summary["moe"]["routing"]["m"]["0"]["uniform_experts_for_half"]
    )
    (claim,) = run_claims(summary)
    assert claim.verdict == "does not hold" and "0 of 6" in claim.measured


def test_specialisation_not_testable_with_one_domain_or_few_tokens() -> None:
    topk, labels = _domain_routing(specialised=True)
    one = labels == "code"
    (claim,) = run_claims(_routing_summary(topk[torch.as_tensor(one)], labels[one], 8))
    assert claim.verdict == "not testable" and "one domain" in claim.statistic
    topk, labels = _domain_routing(specialised=True, tokens=20)
    (claim,) = run_claims(_routing_summary(topk, labels, 8))
    assert claim.verdict == "not testable" and "too few tokens" in claim.statistic


# ---------------------------------------------------------------- routing similarity


def _similarity(x: torch.Tensor, topk: torch.Tensor, sequence_length: int = 16) -> dict[str, Any]:
    """The summary of one layer's constructed routing, as the pipeline builds it."""
    from crossdiff.pipeline.report import similarity_summary

    t = len(x)
    sequences = np.arange(t) // sequence_length
    sequence_labels = np.array(["a", "b"])[np.arange(sequences.max() + 1) % 2]
    labels = sequence_labels[sequences]
    rng = np.random.default_rng(0)
    layer = {
        "token": token_level(x, topk, labels, 2000, 10, rng, sequences),
        "sequence": sequence_level(x, topk, sequences, sequence_labels, 8, 10),
        "collapse": collapse(x, topk, labels, 8, 2000, rng),
    }
    model = {"layers": {"0": layer, "1": layer, "2": layer}}
    data = {"models": {"m": model}, "cross_model": {}}
    return {"models": {}, "moe": {"routing_similarity": similarity_summary(data)}}


def _linear_routing(noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, D] drawn around 8 sequence-level directions; top-2 of a random linear router on
    x (plus ``noise``: routing unrelated to x when large)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(64, 12, generator=g)  # one centre per sequence of 16 tokens
    x = centres.repeat_interleave(16, 0) + 0.7 * torch.randn(1024, 12, generator=g)
    router = torch.randn(8, 12, generator=g)
    logits = x @ router.T + noise * torch.randn(1024, 8, generator=g)
    return x, logits.topk(2, dim=-1).indices


def test_rho_claims_hold_for_a_linear_router_and_fail_for_random_routing() -> None:
    claims = run_claims(_similarity(*_linear_routing(noise=0.0)))
    token, sequence = _by_claim(claims, "two tokens"), _by_claim(claims, "sequences'")
    assert token.verdict == sequence.verdict == "holds"
    assert token.p_value < 1e-6 and "95% CI" in token.statistic
    assert "depth trend" not in token.measured  # three identical layers: no trend to report
    # negative control: routing independent of the router input
    x, _ = _linear_routing(noise=0.0)
    random_topk = torch.as_tensor(
        np.stack([np.random.default_rng(i).choice(8, 2, replace=False) for i in range(1024)])
    )
    claims = run_claims(_similarity(x, random_topk))
    assert _by_claim(claims, "two tokens").verdict == "does not hold"
    assert _by_claim(claims, "two tokens").p_value > ALPHA


def test_collapsed_routing_and_identical_sequences_are_not_testable() -> None:
    x, _ = _linear_routing(noise=0.0)
    collapsed = torch.tensor([[0, 1]]).repeat(1024, 1)  # every token to the same two experts
    claims = run_claims(_similarity(x, collapsed))
    for word in ("two tokens", "sequences'"):
        claim = _by_claim(claims, word)
        assert claim.verdict == "not testable" and "collapsed" in claim.statistic
    # identical sequences: every sequence the same tokens, hence the same x and routing
    x, topk = _linear_routing(noise=0.0)
    same_x, same_topk = x[:16].repeat(64, 1), topk[:16].repeat(64, 1)
    claims = run_claims(_similarity(same_x, same_topk))
    assert _by_claim(claims, "sequences'").verdict == "not testable"


def test_deep_layer_collapse_claim() -> None:
    x, topk = _linear_routing(noise=0.0)
    diverse = _by_claim(run_claims(_similarity(x, topk)), "deepest layer")
    assert diverse.verdict == "does not hold"  # negative control: diverse routing
    collapsed = torch.tensor([[0, 1]]).repeat(1024, 1)
    claim = _by_claim(run_claims(_similarity(x, collapsed)), "deepest layer")
    assert claim.verdict == "holds" and float(claim.statistic.split()[-1]) > 3  # 1 vs K/E


def _prompts(advantages: list[float] | None, distinct: int = 8) -> dict[str, Any]:
    layer = {"spearman_within": None, "sequence_spearman": None,
             "prompt_own_continuation": 0.7, "prompt_other_continuations": 0.6,
             "prompt_advantages": advantages, "distinct_prompts": distinct}  # fmt: skip
    return {"models": {}, "moe": {"routing_similarity": {"m": {"3": layer}, "cross_model": {}}}}


def test_prompt_continuation_is_an_equivalence_test() -> None:
    rng = np.random.default_rng(0)
    near_zero = list(rng.normal(0.0, 0.01, 8))
    claim = _by_claim(run_claims(_prompts(near_zero)), "prompt")
    assert claim.verdict == "holds" and claim.n == 8
    # negative control: every prompt's own continuation is clearly closer
    claim = _by_claim(run_claims(_prompts(list(0.2 + rng.normal(0, 0.01, 8)))), "prompt")
    assert claim.verdict == "does not hold"
    # identical prompts (identical validation sequences) and too few prompts
    claim = _by_claim(run_claims(_prompts([0.0] * 8, distinct=1)), "prompt")
    assert claim.verdict == "not testable" and "identical" in claim.statistic
    assert _by_claim(run_claims(_prompts(near_zero[:3])), "prompt").verdict == "not testable"
    assert _by_claim(run_claims(_prompts(None)), "prompt").verdict == "not testable"


def _cross(b_of_a) -> dict[str, Any]:
    from crossdiff.pipeline.report import similarity_summary

    rng = np.random.default_rng(1)
    a = torch.as_tensor(np.stack([rng.choice(6, 2, replace=False) for _ in range(1200)]))
    b = b_of_a(a, rng)
    groups = np.arange(1200) // 20
    result = cross_model(a, b, 6, 6, groups, np.random.default_rng(0))
    data = {"models": {}, "cross_model": {"x|y": {"0|0": result, "1|1": result}}}
    return {"models": {}, "moe": {"routing_similarity": similarity_summary(data)}}


def test_same_versus_different_input() -> None:
    perm = torch.as_tensor([3, 5, 0, 1, 2, 4])
    (claim,) = run_claims(_cross(lambda a, rng: perm[a]))
    assert claim.verdict == "holds" and claim.n == 30
    # negative control: model y routes independently of model x
    independent = torch.as_tensor(np.stack([np.random.default_rng(i + 9).choice(6, 2, replace=False)
                                            for i in range(1200)]))  # fmt: skip
    (claim,) = run_claims(_cross(lambda a, rng: independent))
    assert claim.verdict == "does not hold"


# ---------------------------------------------------------------- nothing crashes


def test_a_summary_of_undefined_values_gives_not_testable_and_no_exception() -> None:
    nan = float("nan")
    summary = {
        "models": {"d": {"arch": "dense"}, "m": {"arch": "moe"}},
        "features": {"counts": {"d_only": None, "m_only": nan}},
        "density": {"median": {}, "tests": {"m_only_vs_shared": None,
                                            "d_only_vs_shared": {"n": [nan, None]}}},
        "moe": {
            "early_decoding": {"m": {"cosine": {"0": {"1": {"hidden": None}}},
                                     "perplexity_increase": {"code": {"1": nan}}}},
            "routing": {"m": {"0": {"uniform_share": 0.25, "code": {"top_share": None}}}},
            "routing_similarity": {
                "m": {"0": {"spearman_within": 0.3, "pairs_within": nan, "sequence_spearman": nan,
                            "ratio": None, "prompt_own_continuation": None,
                            "prompt_advantages": [nan], "distinct_prompts": nan}},
                "cross_model": {"m|n": {"0|0": {"matched_overlap": 0.5, "sequences": nan,
                                                "different_input_overlap": 0.2}}},
            },
        },
    }  # fmt: skip
    claims = run_claims(summary)
    assert len(claims) == 11
    assert {c.verdict for c in claims} == {"not testable"}
    for claim in claims:
        assert claim.statistic.startswith("not testable: ")
        assert claim.p_value is None and claim.p_adjusted is None
        assert not any(isinstance(v, float) and math.isnan(v) for v in claim.as_dict().values())
    assert run_claims({}) == []


def test_collapsed_routing_and_identical_sequences_through_a_model_give_not_testable() -> None:
    """The real chain: a TransformerLens MoE whose router is zeroed (every token to the same
    experts), and held-out batches whose sequences are all the same."""
    from crossdiff.adapters import adapt
    from crossdiff.pipeline.report import similarity_summary
    from crossdiff.plugins import create_plugin_manager
    from crossdiff_analyses.routing_similarity import SimilaritySettings, model_similarity
    from tests.adapters.tiny_models import VOCAB, tl_model

    model = tl_model(moe=True)
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.W_gate.weight.zero_()
    adapter = adapt(model, create_plugin_manager())
    g = torch.Generator().manual_seed(0)
    batches = {d: [torch.randint(3, VOCAB, (6, 12), generator=g)] for d in ("a", "b")}
    settings = SimilaritySettings(pairs=300, bins=4, prompts=6, prompt_tokens=6, new_tokens=4)
    summary, _ = model_similarity("m", adapter, batches, settings)
    data = {"models": {"m": summary}, "cross_model": {}}
    claims = run_claims({"moe": {"routing_similarity": similarity_summary(data)}})
    verdicts = {c.claim.split("(")[0]: c.verdict for c in claims}
    assert _by_claim(claims, "two tokens").verdict == "not testable"
    assert _by_claim(claims, "sequences'").verdict == "not testable"
    assert _by_claim(claims, "deepest layer").verdict == "holds", verdicts  # it IS collapsed
    # identical sequences: one row repeated in both domains
    row = torch.randint(3, VOCAB, (1, 12), generator=g)
    same = {d: [row.repeat(6, 1)] for d in ("a", "b")}
    summary, _ = model_similarity("m", adapt(tl_model(moe=True), create_plugin_manager()), same,
                                  settings)  # fmt: skip
    data = {"models": {"m": summary}, "cross_model": {}}
    claims = run_claims({"moe": {"routing_similarity": similarity_summary(data)}})
    assert _by_claim(claims, "sequences'").verdict == "not testable"
    prompt = _by_claim(claims, "prompt")
    assert prompt.verdict == "not testable" and "1 distinct prompt" in prompt.statistic


def test_the_claims_table_example_prints_every_claim(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    claims = run_claims(_features(54, 17, {"m_only_vs_shared": _density_test(0.5, 0.0, 1)}))
    (tmp_path / "report").mkdir()
    summary = {"claims": [c.as_dict() for c in claims]}
    (tmp_path / "report" / "summary.json").write_text(json.dumps(summary))
    script = Path(__file__).resolve().parents[2] / "examples" / "claims_table.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = result.stdout.strip().splitlines()[2:]
    assert len(rows) == 3  # a density claim with no test is said as not testable, not left out
    assert rows[0].endswith("| **holds** |") and f"{claims[0].p_value:.2g} / " in rows[0]
    assert all(row.endswith("| **not testable** |") and "| – |" in row for row in rows[1:])
    missing = subprocess.run([sys.executable, str(script), str(tmp_path / "nowhere")],
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_the_depth_trend_is_reported_and_every_layer_must_pass() -> None:
    def layer(rho: float, p: float) -> dict[str, Any]:
        return {"spearman_within": rho, "spearman_within_p": p, "pairs_within": 5000,
                "spearman_within_ci": [rho - 0.05, rho + 0.05]}  # fmt: skip

    rising = {str(i): layer(0.1 * (i + 1), 1e-5) for i in range(4)}
    summary = {"moe": {"routing_similarity": {"m": rising}}}
    claim = _by_claim(run_claims(summary), "two tokens")
    assert claim.verdict == "holds" and "depth trend ρ(layer, value) = +1.00" in claim.measured
    assert "0: 0.10, 1: 0.20, 2: 0.30, 3: 0.40" in claim.measured
    # one layer's test fails: the claim "in every layer" takes that layer's p
    rising["3"] = layer(0.02, 0.3)
    claim = _by_claim(run_claims(summary), "two tokens")
    assert claim.verdict == "does not hold" and claim.p_value == 0.3
    assert "layer 3" in claim.statistic
