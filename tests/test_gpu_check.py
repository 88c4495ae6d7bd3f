"""benchmarks/gpu_check.py: its CPU parts run end to end; its CUDA run config is a valid run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def gpu_check() -> ModuleType:
    """The script, imported as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cuda_run_config_is_a_valid_bf16_run(tmp_path: Path) -> None:
    from crossdiff.pipeline import load_run_config

    check = gpu_check()
    for size in ("tiny", "small"):
        path = tmp_path / f"{size}.toml"
        path.write_text(check.run_config(check.SIZES[size], "bf16", "cuda"))
        config = load_run_config(path)
        assert config.crosscoder.dtype == "bfloat16" and config.crosscoder.device == "cuda"
        assert config.harvest.dtype == "bf16"
        for spec in config.models.values():
            assert spec.train["precision"] == "bf16"
        assert set(config.models) == {"dense", "moe"} and config.analyses


def test_the_device_tests_are_the_devices_parametrised_modules() -> None:
    files = {p.relative_to(REPO).as_posix() for p in gpu_check().device_test_files()}
    assert {"tests/crosscoder/test_devices.py", "tests/models/test_devices.py"} <= files
    for name in files:
        assert "DEVICES" in (REPO / name).read_text()


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_parts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Device tests (CPU cases), the tiny run end to end, the three throughput figures."""
    out = tmp_path / "check.json"
    status = gpu_check().main(["--device", "cpu", "--out", str(tmp_path / "w"), "--json", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    results = json.loads(out.read_text())
    tests = results["device_tests"]
    assert tests["ok"] and tests["counts"]["passed"] > 0 and "failed" not in tests["counts"]
    run = results["run"]
    assert run["ok"] and run["crosscoder_dtype"] == "float32" and run["l0"] > 0
    assert math.isfinite(run["fve_pooled"]) and run["fve_pooled"] <= 1
    assert run["analyses"] == ["density", "feature_classes", "routing"]
    figures = results["throughput"]
    assert set(figures) == {"model training", "harvest", "crosscoder training"}
    for figure in figures.values():
        assert figure["value"] > 0 and figure["value"] < 1e9
        assert f"{figure['value']:,.0f} {figure['unit']}" in printed
    assert "device tests (cpu)" in printed and "end to end (cpu, fp32)" in printed
