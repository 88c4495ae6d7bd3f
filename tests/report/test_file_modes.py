"""Output files get the mode a plain write gets under the user's umask (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from crossdiff.stages import atomic_directory, atomic_write_json, atomic_write_text, current_umask
from tests.report.conftest import REPORT_UMASK


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def plain_modes(directory: Path) -> tuple[int, int]:
    """(file mode, directory mode) of an ordinary ``open(..., "w")`` and ``mkdir`` here."""
    (directory / "plain.txt").write_text("x")
    (directory / "plain-dir").mkdir()
    file_mode = stat.S_IMODE((directory / "plain.txt").stat().st_mode)
    return file_mode, stat.S_IMODE((directory / "plain-dir").stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], indirect=True)
def test_atomic_writes_keep_the_umask_mode(tmp_path: Path, umask: int) -> None:
    assert current_umask() == umask
    file_mode, dir_mode = plain_modes(tmp_path)
    assert file_mode == 0o666 & ~umask
    atomic_write_text(tmp_path / "a.txt", "text")
    atomic_write_json(tmp_path / "b.json", {"a": 1})
    with atomic_directory(tmp_path / "stage") as tmp:
        (tmp / "inside.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "stage").stat().st_mode) == dir_mode
    assert os.umask(umask) == umask  # the umask was left as it was


def _modes(paths: list[Path]) -> dict[str, int]:
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in paths}


@pytest.mark.slow
def test_a_run_writes_its_report_and_analyses_with_the_umask_modes(
    report_run: Path, tmp_path: Path
) -> None:
    """``stat`` of report.html, summary.json, the explorer's files and the analysis outputs."""
    if os.environ.get("CROSSDIFF_REPORT_RUN"):
        pytest.skip("modes are only known for the run built here under REPORT_UMASK")
    before = os.umask(REPORT_UMASK)
    try:
        file_mode, dir_mode = plain_modes(tmp_path)
    finally:
        os.umask(before)
    report = report_run / "report"
    files = [report / "report.html", report / "summary.json", *report.glob("latents/*.js"),
             *report.glob("assets/*.js")]  # fmt: skip
    files += [p for p in (report_run / "analyses").rglob("*") if p.is_file()]
    files += [
        report_run / "crosscoder" / "manifest.json",
        report_run / "crosscoder" / "metrics.json",
    ]
    directories = [report, *(p for p in (report_run / "analyses").iterdir() if p.is_dir())]
    assert len(files) > 10
    assert _modes(files) == dict.fromkeys(map(str, files), file_mode)
    assert _modes(directories) == dict.fromkeys(map(str, directories), dir_mode)
