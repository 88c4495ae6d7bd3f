"""Progress bars in logs: few redraws."""

from __future__ import annotations

import io
import sys

import pytest

from crossdiff.progress import LOG_REFRESH_SECONDS, progress_bar


def test_a_bar_writing_to_a_log_file_redraws_rarely(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress_bar(range(10_000), desc="work", file=log)
    assert bar.mininterval == LOG_REFRESH_SECONDS
    for _ in bar:
        pass
    assert log.getvalue().count("work") <= 3  # the first draw, the last, and at most one between
