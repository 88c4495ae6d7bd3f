"""Progress bars that stay readable in log files."""

from __future__ import annotations

import sys
from typing import Any

LOG_REFRESH_SECONDS = 30.0
"""How often a bar is redrawn when stderr is a file or pipe (CI logs, ``> run.log``)."""


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm bar; when stderr is not a terminal it is redrawn at most every 30 seconds.

    Every redraw of a bar in a log file is a new line of text: at tqdm's default 0.1 s a
    two-minute stage would write over a thousand of them.
    """
    from tqdm.auto import tqdm

    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_REFRESH_SECONDS)
    return tqdm(iterable, **kwargs)
