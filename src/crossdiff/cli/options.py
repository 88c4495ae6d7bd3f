"""Parsing of repeated ``KEY=VALUE`` command-line options, shared by the commands."""

from __future__ import annotations

from crossdiff.errors import ConfigError


def parse_assignments(specs: list[str], option: str, form: str) -> dict[str, str]:
    """``["a=x", ...]`` given to ``option`` -> ``{"a": "x"}``; malformed or repeated keys raise.

    ``form`` is how the option is written in errors, e.g. ``NAME=PATH``.
    """
    parsed: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{option} {spec!r} is not of the form {form}")
        if key in parsed:
            raise ConfigError(f"{option} {key!r} is given twice")
        parsed[key] = value
    return parsed
