"""crossdiff: sparse crosscoders and MoE analyses for diffing transformers.

Importing this package is cheap and has no side effects; heavy libraries load on first use
(``crossdiff.open_run`` imports torch when it is first looked up, not before).
"""

from typing import Any

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("crossdiff")
"""Marker for plugin hook implementations: ``@crossdiff.hookimpl``."""

__all__ = ["__version__", "hookimpl", "open_run"]


def __getattr__(name: str) -> Any:
    """``crossdiff.open_run``, imported on first use (it needs torch)."""
    if name == "open_run":
        from crossdiff.explore import open_run

        return open_run
    raise AttributeError(f"module 'crossdiff' has no attribute {name!r}")
