"""Dependencies: ranges in pyproject.toml, the exact verified set only in constraints.txt."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_pyproject_gives_ranges_and_constraints_pin_each_core_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    assert not [r for r in requirements if "==" in r], "exact pins belong in constraints.txt"
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    for requirement in requirements:
        name = _name(requirement)
        if name in pins:  # the pinned version must satisfy the range
            from packaging.requirements import Requirement

            assert Requirement(requirement).specifier.contains(pins[name]), requirement
    for core in ("torch", "transformer-lens", "sae-lens", "nnsight", "transformers", "datasets"):
        assert core in pins, f"{core} is not pinned in constraints.txt"


def _environment_with(root: Path, versions: dict[str, str]) -> Path:
    """A throwaway venv (no pip of its own) where each of ``versions`` looks installed: a
    metadata-only distribution, which is all pip's resolver reads of an installed package."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    for name, version in versions.items():
        info = Path(purelib) / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return python


def _would_install(python: Path, tmp: Path) -> dict[str, str]:
    """What ``pip install crossdiff`` would install or change in ``python``'s environment."""
    import json
    import subprocess
    import sys

    report = tmp / f"{python.parent.parent.name}.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "-q",
         "--report", str(report), str(ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    items = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in items}


@pytest.mark.slow
def test_pip_install_keeps_an_allowed_torch_and_transformers_and_replaces_a_disallowed_one(
    tmp_path: Path,
) -> None:
    """pip's resolver on crossdiff in an environment that already has other versions: versions
    inside the ranges stay (nothing pulls them to the pins); one outside is replaced, which
    shows the dry run does see installed packages."""
    allowed = _environment_with(tmp_path / "allowed", {"torch": "2.14.1", "transformers": "5.24.0"})
    plan = _would_install(allowed, tmp_path)
    assert "crossdiff" in plan and "torch" not in plan and "transformers" not in plan, plan
    too_old = _environment_with(tmp_path / "too_old", {"torch": "2.5.0", "transformers": "5.24.0"})
    plan = _would_install(too_old, tmp_path)
    assert "transformers" not in plan and plan.get("torch", "").startswith("2.1"), plan
