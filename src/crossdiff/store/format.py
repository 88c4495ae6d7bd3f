"""The on-disk layout of a paired activation store, its format version, and opening one.

    <store>/manifest.json                  models, sites, dims, dtype, tokens, normalisation factors
    <store>/shards/shard-000000.safetensors one file per shard of sequences, written atomically

A shard holds, for its ``N`` tokens (rows aligned across every tensor):

    tokens     int32 [N]     corpus token id
    positions  int32 [N]     position in its sequence
    sequences  int32 [N]     index of the sequence in the corpus split
    domains    uint8 [N]     index into the manifest's ``domains`` list
    act/<model>/<site>  [N, D_site]   activations, in the store's dtype

and, as safetensors metadata, the per-shard sums that the normalisation factors come from.
Safetensors was chosen by measurement (docs/store.md): fastest whole-shard read and write of
the formats tried, bf16 native, and one file per shard, so a rename publishes it atomically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdiff.errors import ConfigError, DamagedFileError, StageError
from crossdiff.stages import fingerprint, read_manifest

FORMAT_VERSION = 1
"""Bumped whenever a reader of the old layout would misread the new one."""
STAGE = "harvest"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".safetensors"
META_KEYS = ("tokens", "positions", "sequences", "domains")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class StoreVersionError(StageError):
    """The store was written by a crossdiff whose store format this one cannot read."""


def check_model_name(name: str) -> str:
    """Return ``name`` if usable as a model name in a store (letters, digits, ``_.-``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"model name {name!r} is invalid: use letters, digits, '_', '.' or '-' only"
        )
    return name


def act_key(model: str, site: str) -> str:
    """The tensor name of ``model``'s activations at ``site`` inside a shard."""
    return f"act/{model}/{site}"


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:06d}{SHARD_SUFFIX}"


def shard_path(store: str | Path, index: int) -> Path:
    """Path of shard ``index`` of ``store``."""
    return Path(store) / SHARD_DIR / shard_name(index)


def batch_keys(sites: dict[str, list[str]]) -> dict[str, tuple[str, str]]:
    """Names of the tensors in a training batch -> (model, site).

    A model with one site is named by the model alone (``{"dense": ..., "moe": ...}``, what the
    crosscoder expects); with several, each is ``model/site``.
    """
    keys: dict[str, tuple[str, str]] = {}
    for model, model_sites in sites.items():
        for site in model_sites:
            keys[model if len(model_sites) == 1 else f"{model}/{site}"] = (model, site)
    return keys


@dataclass(frozen=True)
class StoreInfo:
    """What a store's manifest says, checked for a format this crossdiff can read."""

    path: Path
    """The store directory."""
    manifest: dict[str, Any]
    """The raw manifest."""

    @property
    def complete(self) -> bool:
        """True once every shard is written and the normalisation factors are saved."""
        return bool(self.manifest.get("complete"))

    @property
    def sites(self) -> dict[str, list[str]]:
        """Model name -> its harvested sites, in harvest order."""
        return {m: list(info["sites"]) for m, info in self.manifest["models"].items()}

    @property
    def dims(self) -> dict[str, dict[str, int]]:
        """Model name -> site -> width ``D``."""
        return {m: dict(info["sites"]) for m, info in self.manifest["models"].items()}

    @property
    def dtype(self) -> str:
        """Storage dtype: ``fp32``, ``bf16`` or ``fp16``."""
        return self.manifest["config"]["store"]["dtype"]

    @property
    def tokens(self) -> int:
        """Tokens (rows) in the store."""
        return int(self.manifest.get("tokens", 0))

    @property
    def domains(self) -> list[str]:
        """Domain names; a shard's ``domains`` tensor indexes this list."""
        return list(self.manifest["domains"])

    @property
    def norm_factors(self) -> dict[str, dict[str, float]]:
        """Model -> site -> factor ``f`` such that E‖f·x‖ = √D on the harvested tokens."""
        return self.manifest.get("norm_factors", {})

    @property
    def record(self) -> dict[str, Any]:
        """What the harvest recorded of its inputs (``models``: name -> path or hub name,
        ``corpus``), with paths resolved against the store (a moved run reads its own files)
        and checked to exist."""
        from crossdiff.stages import resolve_reference

        record = dict(self.manifest.get("config", {}).get("record") or {})
        if isinstance(record.get("models"), dict):
            record["models"] = {
                name: resolve_reference(str(value), self.path, f"model {name!r}")
                for name, value in record["models"].items()
            }
        if isinstance(record.get("corpus"), str):
            record["corpus"] = resolve_reference(record["corpus"], self.path, "the corpus")
        return record

    def shard_paths(self) -> list[Path]:
        """Paths of every shard, in order (all of them exist once the store is complete)."""
        return [shard_path(self.path, i) for i in range(int(self.manifest["n_shards"]))]


def open_store(path: str | Path, require_complete: bool = True) -> StoreInfo:
    """Open the store at ``path``, checking its format version and, when complete, that every
    shard has the size recorded when it was written and a readable header."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is None or manifest.get("stage") != STAGE:
        raise StageError(
            f"{str(path)!r} is not an activation store (no harvest manifest.json): "
            "run `crossdiff harvest` first"
        )
    check_format_version(manifest, path)
    info = StoreInfo(path, manifest)
    if require_complete and not info.complete:
        raise StageError(
            f"the store at {str(path)!r} is incomplete (harvest interrupted): rerun the same "
            "`crossdiff harvest` command to resume it"
        )
    if info.complete:
        check_shards(info)
    return info


def store_fingerprint(info: StoreInfo) -> str:
    """What a store holds, independent of where it lies (its settings, corpus and models)."""
    return fingerprint([info.manifest.get("config"), info.manifest.get("n_shards")])


REGENERATE_SHARD = (
    "rerun the same `crossdiff harvest` command, or `crossdiff run` with `--repair`: they check "
    "every shard and harvest the damaged ones again"
)


def damaged_shard(path: str | Path, why: object) -> DamagedFileError:
    """The error for a shard that cannot be read: its path, what is wrong, what to do."""
    return DamagedFileError(f"shard {str(path)!r} is damaged ({why}); {REGENERATE_SHARD}")


def check_shards(info: StoreInfo) -> None:
    """Raise :class:`DamagedFileError` for the first shard that is missing, of another size
    than recorded at write time, whose header does not parse, or whose bytes differ from the
    SHA-256 recorded at write time (each shard hashed once per process while unchanged:
    :mod:`crossdiff.verify`)."""
    from safetensors import safe_open

    from crossdiff.verify import verify_file

    recorded = info.manifest.get("shards") or {}
    for path in info.shard_paths():
        if not path.is_file():
            raise damaged_shard(path, "missing")
        record = recorded.get(path.name) or {}
        size, expected = path.stat().st_size, record.get("size")
        if expected is not None and size != expected:
            raise damaged_shard(path, f"{size} bytes, {expected} when written")
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error type
            raise damaged_shard(path, error) from error
        verify_file(path, record, REGENERATE_SHARD)


def check_format_version(manifest: dict[str, Any], path: Path) -> None:
    """Raise :class:`StoreVersionError` unless ``manifest`` has this crossdiff's store format."""
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        writer = manifest.get("crossdiff_version", "an unknown version")
        raise StoreVersionError(
            f"the store at {str(path)!r} has store format version {version!r} (written by "
            f"crossdiff {writer}); this crossdiff reads format {FORMAT_VERSION} only. Harvest "
            "again into a new --out directory, or read it with the crossdiff that wrote it; "
            "the existing store was left untouched"
        )
