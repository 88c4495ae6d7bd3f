"""The density verdicts on planted truth, through the chain real runs use (crosscoder → classes →
the ``density`` measurement → verdict), in the realistic regime: a dictionary 2× the planted
features, k ≥ 3× the data's L0. Five seeds per setting (``pytest -k sparser`` selects them)."""

from __future__ import annotations

import pytest
import torch

from crossdiff.crosscoder.calibration import (
    DENSER,
    NO_DIFFERENCE,
    SPARSER,
    CalibrationResult,
    run_calibration,
    small_setting,
)

SEEDS = range(5)


def run_seeds(scale: tuple[float, float]) -> list[CalibrationResult]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [run_calibration(small_setting(scale), seed, compare_raw=False) for seed in SEEDS]
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ordered() -> list[CalibrationResult]:
    """A_only planted at half the shared densities, B_only at twice."""
    return run_seeds((0.5, 2.0))


@pytest.fixture(scope="module")
def null() -> list[CalibrationResult]:
    """Both exclusive classes planted as dense as the shared one."""
    return run_seeds((1.0, 1.0))


def ordering(result: CalibrationResult, label: str):
    return next(o for o in result.orderings if o.label == label)


@pytest.mark.slow
def test_sparser_setting_is_the_realistic_regime_and_its_classes_are_recovered(ordered, null):
    for result in ordered + null:
        assert result.dict_size >= 2 * result.n_features
        assert result.k >= 3 * result.data_l0, (result.k, result.data_l0)
        assert result.fve > 0.9
        assert min(result.recall.values()) >= 0.9, (result.seed, result.recall)


@pytest.mark.slow
def test_planted_sparser_class_is_called_sparser_in_at_least_four_of_five_seeds(ordered):
    rows = [ordering(r, "A_only") for r in ordered]
    assert all(o.expected == SPARSER for o in rows)
    called = [o.test["p_less"] < 0.05 for o in rows]
    assert sum(called) >= 4, [(o.test["p_less"], o.ratio, o.planted_ratio) for o in rows]
    assert all(o.ratio < 1 for o in rows)


@pytest.mark.slow
def test_planted_denser_class_is_called_denser_with_the_ratio_within_1_5x_not_sparser(ordered):
    rows = [ordering(r, "B_only") for r in ordered]
    assert all(o.expected == DENSER for o in rows)
    report = [(o.test["p_greater"], o.ratio, o.planted_ratio) for o in rows]
    assert sum(o.recovered for o in rows) >= 4, report
    assert all(o.ratio_error() <= 1.5 for o in rows), report
    assert not any(o.test["p_less"] < 0.05 for o in rows), report


@pytest.mark.slow
def test_planted_no_difference_is_not_called_sparser_or_denser_in_more_than_one_of_five(null):
    for label in ("A_only", "B_only"):
        rows = [ordering(r, label) for r in null]
        assert all(o.expected == NO_DIFFERENCE for o in rows)
        different = [o.test["p_value"] < 0.05 for o in rows]
        assert sum(different) <= 1, [(o.test["p_value"], o.ratio) for o in rows]
        assert all(o.ratio_error() <= 1.5 for o in rows), [(o.ratio, o.planted_ratio) for o in rows]
