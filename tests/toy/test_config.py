"""Bad toy settings get a one-line error naming the value and what was expected."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from crossdiff.errors import ConfigError
from crossdiff.toy.config import SweepConfig, ToyConfig, load_toy_config, toy_run_config

ROOT = Path(__file__).resolve().parents[2]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_k_above_the_number_of_experts_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        ToyConfig(n_experts=4, k=5)
    assert "k=5" in one_line(error) and "n_experts (4)" in one_line(error)


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_sparsity_outside_the_unit_interval_is_refused(sparsity: float) -> None:
    with pytest.raises(ConfigError) as error:
        ToyConfig(sparsity=sparsity)
    assert repr(sparsity) in one_line(error) and "[0, 1)" in one_line(error)


def test_no_room_for_superposition_is_allowed_but_warned() -> None:
    with pytest.warns(UserWarning, match="d_hidden=3 >= n_features=3.*superposition cannot"):
        config = ToyConfig(n_features=3, d_hidden=3)
    assert config.d_hidden == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ToyConfig(n_features=5, d_hidden=2)


def test_a_misspelt_sweep_axis_suggests_the_setting() -> None:
    with pytest.raises(ConfigError) as error:
        SweepConfig(axes={"sparsty": [0.0, 0.5]})
    assert "unknown sweep axis 'sparsty' (did you mean 'sparsity'?)" in one_line(error)
    with pytest.raises(ConfigError) as error:
        SweepConfig(axes={"experts": [{"n_experts": 2, "kk": 1}]})
    assert "'kk' (did you mean 'k'?)" in one_line(error)


def test_a_bad_model_inside_a_sweep_names_the_sweep() -> None:
    data = {"sweeps": {"grid": {"axes": {"n_experts": [1, 2], "k": [1, 2]}}}}
    with pytest.raises(ConfigError) as error:
        toy_run_config(data)
    assert one_line(error).startswith("toy config: sweep 'grid': k (active experts)")


def test_a_value_of_the_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as error:
        toy_run_config({"sweeps": {"a": {"axes": {"sparsity": ["high"]}}}})
    assert one_line(error).startswith("toy config: sweep 'a': a setting has the wrong type")


def test_joint_axes_sweep_only_valid_expert_counts() -> None:
    sweep = SweepConfig(
        axes={"experts": [{"n_experts": 2, "k": 1}, {"n_experts": 2, "k": 2}], "seed": [0, 1]}
    )
    models = sweep.models()
    assert [(m.n_experts, m.k, m.seed) for m in models] == [
        (2, 1, 0), (2, 1, 1), (2, 2, 0), (2, 2, 1),
    ]  # fmt: skip


def test_unknown_choices_and_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown init 'algned' \(did you mean 'aligned'\?\)"):
        ToyConfig(init="algned")
    with pytest.raises(ConfigError, match=r"unknown key 'modle' \(did you mean 'model'\?\)"):
        toy_run_config({"sweeps": {"a": {"modle": {}}}})
    with pytest.raises(ConfigError, match="at least one"):
        toy_run_config({})


def test_the_example_config_is_valid_and_sweeps_at_least_400_models() -> None:
    config = load_toy_config(ROOT / "examples" / "toy_superposition.toml")
    models = [m for sweep in config.sweeps.values() for m in sweep.models()]
    assert len(models) >= 400
    assert {m.n_experts for m in models} >= {1, 2, 4, 8}
    assert {s.figure for s in config.sweeps.values()} >= {"phase", "network_sparsity", "init"}
