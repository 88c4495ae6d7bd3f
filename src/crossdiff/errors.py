"""Exceptions crossdiff raises for bad input, each naming the value and what was expected."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CrossdiffError(Exception):
    """Base of every error crossdiff raises on purpose; the CLI prints these without a trace."""


class ConfigError(CrossdiffError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class StageError(CrossdiffError):
    """A pipeline stage is missing its inputs or found incompatible outputs."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """A ``did you mean 'x'?`` hint for ``value`` among ``choices``, or an empty string."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(what: str, value: str, choices: Iterable[str]) -> ConfigError:
    """An error for an unknown ``what`` named ``value``, listing the valid ``choices``."""
    choices = sorted(choices)
    return ConfigError(
        f"unknown {what} {value!r}{did_you_mean(value, choices)}; expected one of: "
        + (", ".join(choices) if choices else "(none available)")
    )


class DamagedFileError(StageError):
    """A file crossdiff reads is missing, truncated or not what it should be; the path is named."""


class StageLockedError(StageError):
    """Another process is writing the same stage directory."""


class SettingsChangedError(StageError):
    """A stage directory holds work done with other settings; ``--overwrite`` replaces it."""
