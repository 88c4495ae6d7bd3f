"""Progress bars that stay readable in log files."""

from __future__ import annotations

import functools
import sys
from typing import Any

LOG_REFRESH_SECONDS = 30.0
"""How often a bar is redrawn when it writes to a file or pipe (CI logs, ``> run.log``)."""


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm bar; when its output is not a terminal it writes at most one line per 30 seconds.

    Every redraw of a bar in a log file is a new line of text: at tqdm's default 0.1 s a
    two-minute stage would write over a thousand of them. Into a log the bar writes nothing when
    it starts, a line when 30 s have passed since its last one (``set_postfix`` and
    ``set_description`` included: they wait for the next line instead of forcing one) and its
    final state when it closes, so a bar that ran T seconds writes at most 1 + T/30 lines.
    """
    from tqdm.auto import tqdm

    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(iterable, **kwargs)
    if any(base.__name__ == "tqdm_notebook" for base in tqdm.__mro__):
        return tqdm(iterable, **kwargs)  # a Jupyter widget redraws in place: no log lines
    kwargs.setdefault("mininterval", LOG_REFRESH_SECONDS)
    kwargs.setdefault("maxinterval", LOG_REFRESH_SECONDS)
    return _log_bar_type()(iterable, **kwargs)


@functools.cache
def _log_bar_type() -> type:
    """The tqdm subclass for logs (built on first use: tqdm is imported lazily)."""
    from tqdm import tqdm

    class LogBar(tqdm):
        """A tqdm bar whose lines are at least ``mininterval`` apart, the final one excepted."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._closing = False
            self._line_t: float | None = None
            self._line_state: tuple[Any, ...] | None = None
            super().__init__(*args, **kwargs)

        def display(self, msg: str | None = None, pos: int | None = None) -> Any:
            """Write a line only when the interval has passed, or the final one at close."""
            if msg == "":
                return True  # tqdm clears a bar it leaves: nothing to clear in a log
            now = self._time()
            start = getattr(self, "start_t", now)
            state = (self.n, self.postfix, self.desc)
            if self._closing:
                if state == self._line_state:
                    return True  # the last line already shows the final state
            elif now - (self._line_t if self._line_t is not None else start) < self.mininterval:
                return True
            self._line_t, self._line_state = now, state
            return super().display(msg, pos)

        def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any):
            """Record the postfix; it is shown with the next line (no forced redraw)."""
            super().set_postfix(ordered_dict, refresh=False, **kwargs)
            if refresh:
                self.refresh()  # display() decides whether a line is due

        def close(self) -> None:
            """Write the final state (unless the last line shows it), then close."""
            self._closing = True
            super().close()

    return LogBar
