"""Bad input fails early with a ConfigError that names the offending value."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossdiff.cli import main
from crossdiff.errors import ConfigError
from crossdiff.models.config import ModelConfig, TrainConfig, preset
from crossdiff.models.stage import configs_for_corpus


def test_k_larger_than_e() -> None:
    with pytest.raises(ConfigError, match=r"experts_per_token \(k\) 3 exceeds num_experts \(E\) 2"):
        ModelConfig(arch="moe", num_experts=2, experts_per_token=3, d_mlp=96)


def test_width_not_divisible_by_k() -> None:
    with pytest.raises(ConfigError, match="d_mlp 100 is not divisible by experts_per_token 3"):
        ModelConfig(arch="moe", d_mlp=100, experts_per_token=3)


def test_explicit_expert_width_that_breaks_equal_active_params() -> None:
    with pytest.raises(
        ConfigError, match=r"expert_d_mlp 200 × experts_per_token 2 = 400 ≠ d_mlp 512"
    ):
        ModelConfig(arch="moe", d_mlp=512, experts_per_token=2, expert_d_mlp=200)
    assert (
        ModelConfig(arch="moe", d_mlp=512, experts_per_token=2, expert_d_mlp=256).expert_width
        == 256
    )


def test_dense_ignores_expert_settings() -> None:
    assert ModelConfig(arch="dense", num_experts=2, experts_per_token=3).expert_width == 512


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "sparse"}, "unknown model arch 'sparse'"),
        ({"n_layers": 0}, "model.n_layers 0 must be a positive integer"),
        ({"d_model": 130, "n_heads": 4}, "d_model 130 is not divisible by n_heads 4"),
    ],
)
def test_other_model_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "train.lr 0.0 must be positive"),
        ({"precision": "fp8"}, "unknown train precision 'fp8'"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio 2.0"),
        ({"batch_size": 0}, "train.batch_size 0"),
    ],
)
def test_train_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_unknown_preset_and_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown model preset 'tiney'.*did you mean 'tiny'"):
        preset("tiney", "moe", 300, 16)
    with pytest.raises(ConfigError, match=r"unknown key 'num_expert'.*did you mean 'num_experts'"):
        preset("tiny", "moe", 300, 16, model_overrides={"num_expert": 4})


def test_corpus_tokenizer_differs_from_model_vocabulary(tiny_corpus: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"model.vocab_size 512 differs from the corpus tokenizer"
    ):
        configs_for_corpus(tiny_corpus, "moe", "tiny", model_overrides={"vocab_size": 512})
    model, _, tokenizer, _ = configs_for_corpus(tiny_corpus, "moe", "tiny")
    assert model.vocab_size == len(tokenizer) == 300


def test_cli_reports_bad_input_without_a_trace(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[model]\nnum_experts = 2\nexperts_per_token = 4\n")
    args = ["train-model", "--arch", "moe", "--corpus", str(tiny_corpus), "--out", str(tmp_path)]
    assert main([*args, "--config", str(config)]) == 2
    assert "experts_per_token (k) 4 exceeds num_experts (E) 2" in capsys.readouterr().err
    config.write_text("[modle]\n")
    assert main([*args, "--config", str(config)]) == 2
    assert "unknown tables ['modle']" in capsys.readouterr().err


def test_sequences_longer_than_the_model_context(tmp_path: Path) -> None:
    from crossdiff.models.ddp import DistContext
    from crossdiff.models.train import train
    from tests.models.conftest import synthetic_sequences

    model = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, vocab_size=64, n_ctx=8)
    context = DistContext(rank=0, world_size=1, device="cpu")
    with pytest.raises(ConfigError, match=r"sequences have 16 tokens but model.n_ctx is 8"):
        train(model, TrainConfig(), synthetic_sequences(), tmp_path, context, log=None)
    with pytest.raises(ConfigError, match="batch_size 3 is not divisible by the 2 processes"):
        train(
            model,
            TrainConfig(batch_size=3),
            synthetic_sequences(),
            tmp_path,
            DistContext(rank=0, world_size=2, device="cpu"),
            log=None,
        )
