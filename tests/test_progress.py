"""Progress bars in logs: at most one line per 30 s per bar, postfix updates included."""

from __future__ import annotations

import io
import itertools
import re
import sys
from collections.abc import Iterator

import pytest

from crossdiff.progress import LOG_REFRESH_SECONDS, progress_bar


class Clock:
    """A fake wall clock that the test moves forward."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class TimedLog(io.StringIO):
    """A non-terminal stream that remembers the (fake) time of every line it was given."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.lines: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        for piece in re.split(r"[\r\n]", text):
            if piece.strip():
                self.lines.append((self.clock.now, piece.strip()))
        return super().write(text)

    def isatty(self) -> bool:
        return False


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import tqdm.std

    fake = Clock()
    monkeypatch.setattr(tqdm.std, "time", fake)
    return fake


def check_spacing(lines: list[tuple[float, str]], duration: float) -> None:
    """Every line but the last at least 30 s after the one before; at most 1 + T/30 lines."""
    times = [t for t, _ in lines]
    assert len(times) <= 1 + duration / LOG_REFRESH_SECONDS
    for before, after in itertools.pairwise(times[:-1]):
        assert after - before >= LOG_REFRESH_SECONDS


def test_a_crosscoder_run_logs_one_line_per_30_seconds(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 steps of 5 s, postfix every 10 steps (the quickstart's crosscoder bar): ≤ 11 lines."""
    import torch

    from crossdiff.crosscoder import TrainConfig
    from crossdiff.crosscoder.train import train
    from tests.crosscoder.conftest import planted, small_crosscoder

    log = TimedLog(clock)
    monkeypatch.setattr(sys, "stderr", log)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is fastest on the shared cores

    def batches() -> Iterator:
        for batch in planted(noise=0.05).batches(32, 60, seed=1):
            clock.now += 5.0
            yield batch

    start = clock.now
    try:
        train(small_crosscoder(), batches(), TrainConfig(steps=60, warmup_steps=2, progress=True))
    finally:
        torch.set_num_threads(threads)
    lines = [line for line in log.lines if "crosscoder" in line[1]]
    check_spacing(lines, clock.now - start)
    assert len(lines) >= 9  # it did write while running: 30, 60, ... 270 s and the end
    assert "60/60" in lines[-1][1] and "fve=" in lines[-1][1]  # the final state is logged


def test_postfix_updates_do_not_force_lines(clock: Clock) -> None:
    log = TimedLog(clock)
    bar = progress_bar(total=1_000, desc="harvest", file=log)
    for step in range(1_000):
        clock.now += 0.5
        bar.update(1)
        bar.set_postfix(step=step)
        bar.set_description("harvest")
    bar.close()
    check_spacing(log.lines, 500.0)
    assert 10 <= len(log.lines) <= 17 and "1000/1000" in log.lines[-1][1]


def test_a_short_bar_writes_only_its_final_line(clock: Clock) -> None:
    log = TimedLog(clock)
    for _ in progress_bar(range(100), desc="work", file=log):
        clock.now += 0.01
    assert [text.split("|")[0].strip() for _, text in log.lines] == ["work: 100%"]


def test_a_terminal_gets_the_ordinary_bar() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = progress_bar(range(3), file=Terminal())
    assert bar.mininterval == 0.1 and not hasattr(bar, "_closing")
    bar.close()
