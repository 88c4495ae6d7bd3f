"""Packaging: the README's commands, .ci/run, and what a wheel ships."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The shell commands in the README's set-up section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)
    main_command, test_command = commands
    assert "crossdiff corpus build" in main_command or "crossdiff run" in main_command
    assert "pytest" in test_command
    ci_lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci_lines == [test_command]


@pytest.mark.slow
def test_wheel_ships_plugins_data_and_entry_points(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("crossdiff-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "crossdiff/hookspecs.py" in names
    assert "crossdiff_corpus/data/austen-novels.txt.gz" in names
    assert "crossdiff_corpus/data/kjv-chapters.txt.gz" in names
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[crossdiff]" in text and "crossdiff_corpus" in text
    assert "crossdiff = crossdiff.cli:main" in text
