"""crossdiff: sparse crosscoders and MoE analyses for diffing transformers.

Importing this package is cheap and has no side effects; heavy libraries load on first use.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("crossdiff")
"""Marker for plugin hook implementations: ``@crossdiff.hookimpl``."""

__all__ = ["__version__", "hookimpl"]
