"""Experiment tracking: off by default, the training loops' own numbers sent per step."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from crossdiff.cli import main
from crossdiff.errors import ConfigError
from crossdiff.pipeline.config import ModelSpec, RunConfig
from crossdiff.pipeline.run import STAGES, stage_settings
from crossdiff.store import StoreConfig, harvest
from crossdiff.tracking import NullTracker, TrackingConfig, open_tracker
from tests.store.store_helpers import make_sequences, pair

TWO_MODELS = {"a": ModelSpec(arch="dense"), "b": ModelSpec(arch="moe")}


class FakeRun:
    """Records what a W&B run is given."""

    def __init__(self, **kwargs: Any) -> None:
        self.init = kwargs
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.finished = False

    def log(self, values: dict[str, float], step: int) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> list[FakeRun]:
    runs: list[FakeRun] = []

    def init(**kwargs: Any) -> FakeRun:
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    module = types.ModuleType("wandb")  # with a __spec__: libraries probe find_spec("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.init = init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("track_store") / "store"
    harvest(pair(), ["0.mlp_out"], make_sequences(), out,
            StoreConfig(batch_sequences=4, shard_sequences=8))  # fmt: skip
    return out


def _train(store: Path, out: Path, *extra: str) -> int:
    return main(["train-crosscoder", "--acts", str(store), "--out", str(out), "--steps", "12",
                 "--batch-size", "60", "--expansion", "4", "--no-progress",
                 "--checkpoint-every", "0", *extra])  # fmt: skip


def test_tracking_is_off_by_default_and_checks_its_settings(tmp_path: Path) -> None:
    with open_tracker(None, tmp_path, "x", {}, 1, "tokens") as tracker:
        assert isinstance(tracker, NullTracker)
    assert RunConfig(models=TWO_MODELS).tracking.backend == "none"
    with pytest.raises(ConfigError, match=r"tracking backend must be one of .* got 'mlflow'"):
        TrackingConfig(backend="mlflow")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"tracking mode must be one of .* got 'cloud'"):
        TrackingConfig(backend="wandb", mode="cloud")  # type: ignore[arg-type]


def test_crosscoder_steps_reach_the_tracker_with_the_training_numbers(
    store: Path, tmp_path: Path, fake_wandb: list[FakeRun]
) -> None:
    assert _train(store, tmp_path / "cc", "--track", "wandb", "--track-project", "p") == 0
    (run,) = fake_wandb
    assert run.init["project"] == "p" and run.init["mode"] == "offline"
    assert run.init["dir"] == str(tmp_path / "cc") and run.finished
    assert [step for step, _ in run.logged] == list(range(1, 13))
    for _, values in run.logged:
        assert {"crosscoder/loss", "crosscoder/fve", "crosscoder/l0"} <= set(values)
        assert 0 <= values["crosscoder/dead_fraction"] <= 1
    # throughput from the second step on: a positive rate of activations per second
    assert "throughput/activations_per_s" not in run.logged[0][1]
    assert all(v["throughput/activations_per_s"] > 0 for _, v in run.logged[1:])
    # the last step's L0 is near the configured k (BatchTopK keeps k·B per batch)
    k = json.loads((tmp_path / "cc" / "crosscoder" / "cfg.json").read_text())["k"]
    assert run.logged[-1][1]["crosscoder/l0"] == pytest.approx(k, rel=0.05)


def test_missing_wandb_is_named_with_the_extra_to_install(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    assert _train(store, tmp_path / "cc", "--track", "wandb") == 2
    assert "pip install 'crossdiff[wandb]'" in capsys.readouterr().err


def test_tracking_is_in_no_stage_fingerprint() -> None:
    plain = RunConfig(models=TWO_MODELS)
    tracked = RunConfig(models=TWO_MODELS, tracking=TrackingConfig("wandb"))
    assert all(stage_settings(plain, s) == stage_settings(tracked, s) for s in STAGES)


def test_wandb_offline_writes_the_run_locally_without_network(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    assert _train(store, tmp_path / "cc", "--track", "wandb") == 0
    (record,) = (tmp_path / "cc" / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()
    assert b"crosscoder/fve" in data and b"throughput/activations_per_s" in data
