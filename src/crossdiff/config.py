"""Dataclass configs from plain dicts (TOML/JSON): unknown keys rejected with a close match."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from crossdiff.errors import ConfigError, did_you_mean

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclass fields.

    Unknown keys raise :class:`ConfigError` naming the key and suggesting the closest valid one.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key {key!r}{did_you_mean(key, fields)}; "
                f"valid keys: {', '.join(sorted(fields))}"
            )
        nested = _dataclass_in(hints[key])
        mapped = _dataclass_values_of(hints[key])
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{where}.{key}")
        elif mapped is not None and isinstance(value, dict):
            value = {
                name: from_dict(mapped, item, f"{where}.{key}.{name}")
                for name, item in value.items()
            }
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a dataclass config (tuples become lists, paths strings)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, with a clear error if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from error


def _dataclass_values_of(hint: Any) -> type | None:
    """The dataclass ``X`` of a ``dict[str, X]`` hint, if any."""
    if typing.get_origin(hint) is dict:
        args = typing.get_args(hint)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return args[1]
    return None


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type inside a hint such as ``Foo`` or ``Foo | None``, if any."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def compact_record(record: dict, defaults: dict) -> dict:
    """``record`` without the keys of ``defaults`` that hold their default value: settings
    added after the first runs stay out of a record (and a fingerprint) until they are used, so
    an older run's record still matches."""
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    return {k: v for k, v in record.items() if k not in plain or v != plain[k]}
