"""Dependencies: ranges in pyproject.toml, the exact verified set only in constraints.txt."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
