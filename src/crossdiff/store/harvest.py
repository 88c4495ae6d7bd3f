"""Harvest: the same token batches through every model, into a resumable paired store.

Sequences are taken in a seeded order (domains mixed), cut into shards of
``shard_sequences``, and each shard into forward batches of ``batch_sequences``; shard ``i`` is
always the same sequences, so a rerun after a kill writes only the missing shards and the
result is identical, byte for byte, to an uninterrupted harvest. Under ``torchrun`` the shards
are dealt out to the processes (:mod:`crossdiff.store.ranks`), with the same result.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdiff.adapters import ModelAdapter
from crossdiff.config import to_dict
from crossdiff.corpus import PackedSequences
from crossdiff.errors import ConfigError, DamagedFileError, StageError
from crossdiff.progress import progress_bar
from crossdiff.runtime import retain_freed_memory
from crossdiff.stages import (
    OVERWRITE_HINT,
    clear_stage,
    describe_diff,
    read_manifest,
    stage_lock,
    write_manifest,
)
from crossdiff.store.alignment import alignment_record, save_alignments
from crossdiff.store.capture import PairedSites, capture_rows, resolve_sites, row_metadata
from crossdiff.store.checks import check_alignment, check_tokenizers
from crossdiff.store.config import StoreConfig
from crossdiff.store.format import (
    FORMAT_VERSION,
    STAGE,
    TORCH_DTYPES,
    StoreInfo,
    act_key,
    check_format_version,
    check_model_name,
    open_store,
    shard_path,
)
from crossdiff.store.normalization import combine_factors, norm_sum
from crossdiff.store.ranks import Ranks
from crossdiff.store.writer import (
    BackgroundWriter,
    finished_shards,
    read_shard_metadata,
    remove_partial_shards,
    shard_problem,
    shard_record,
    sum_path,
)


def sequence_order(n_sequences: int, config: StoreConfig) -> np.ndarray:
    """Indices of the sequences to harvest, in harvest order (seeded, domains mixed)."""
    order = np.random.default_rng(config.seed).permutation(n_sequences)
    return order if config.max_sequences is None else order[: config.max_sequences]


def harvest(
    models: Mapping[str, ModelAdapter],
    sites: Sequence[str] | Mapping[str, Sequence[str]],
    sequences: PackedSequences,
    out_dir: str | Path,
    config: StoreConfig | None = None,
    *,
    corpus_tokenizer: Any = None,
    tokenizers: Mapping[str, Any] | None = None,
    alignments: Mapping[str, np.ndarray] | None = None,
    record: Mapping[str, Any] | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> StoreInfo:
    """Harvest ``sites`` of every model on ``sequences`` into the store ``out_dir``.

    ``tokenizers`` (model -> tokenizer; default: each adapter's ``tokenizer``) are checked
    against ``corpus_tokenizer``: a model with another vocabulary needs an alignment, an int
    array mapping each corpus id to the model's id. ``record`` is saved in the
    manifest's config (e.g. model paths) and must match on resume. Rerunning a finished
    harvest returns at once (after checking its shards' sizes and headers); rerunning an
    interrupted one resumes it, first checking every finished shard against the size and
    checksum recorded when it was written and harvesting a damaged one again. A store of other
    settings is refused, naming them, or replaced with ``overwrite``.

    Under ``torchrun`` every process calls this with the same arguments (each with its models
    on its own device): the shards still to write are dealt out in turn (rank ``r`` takes every
    ``WORLD_SIZE``-th from the ``r``-th), each rank writes its own, and rank 0, which holds the
    store's lock, writes the manifest once all have finished. Shard ``i`` holds the same
    sequences whatever the number of processes, so the store is the one a single process writes,
    and a run killed on any rank resumes with any number of processes.
    """
    config = config or StoreConfig()
    retain_freed_memory()
    for name in models:
        check_model_name(name)
    paired = resolve_sites(models, sites)
    fingerprints = _check_vocab(models, corpus_tokenizer, tokenizers, alignments)
    order = sequence_order(len(sequences.input_ids), config)
    if len(order) == 0:
        raise ConfigError("no sequences to harvest: the corpus split is empty")
    _check_token_range(models, sequences.input_ids, alignments)
    domains = sorted(set(np.asarray(sequences.domains).tolist()))
    if len(domains) > 255:
        raise ConfigError(f"a store holds at most 255 domains, the corpus has {len(domains)}")
    out_dir = Path(out_dir)
    aligned = {m: {"alignment": alignment_record(a, m)} for m, a in (alignments or {}).items()}
    run_config = {
        "store": to_dict(config),
        "models": {
            m: {"sites": paired.names[m], "tokenizer": fingerprints.get(m), **aligned.get(m, {})}
            for m in models
        },
        "corpus": _corpus_record(sequences, order, domains),
        "record": dict(record or {}),
    }
    n_shards = -(-len(order) // config.shard_sequences)
    fields = {
        "format_version": FORMAT_VERSION,
        "models": {m: {"sites": paired.dims[m]} for m in models},
        "domains": domains,
        "n_shards": n_shards,
        "context_length": int(sequences.input_ids.shape[1]),
    }
    ranks = Ranks.current()
    with contextlib.ExitStack() as lock:

        def prepare() -> list[int] | None:
            """Rank 0: lock, check the store; the finished shards to check, None if complete."""
            lock.enter_context(stage_lock(out_dir))
            if _prepare(out_dir, run_config, overwrite) is not None:
                return None
            write_manifest(out_dir, STAGE, run_config, complete=False, **fields)
            save_alignments(out_dir, alignments or {})
            remove_partial_shards(out_dir)
            return sorted(finished_shards(out_dir))

        finished = ranks.from_main(prepare)
        if finished is None:
            return open_store(out_dir)
        trusted = set().union(*ranks.gather(_trusted_shards(out_dir, ranks.share(finished))))
        todo = ranks.share([i for i in range(n_shards) if i not in trusted])

        def write() -> None:
            progress_here = progress and ranks.is_main
            _write_shards(paired, sequences, order, domains, todo, out_dir, config, alignments,
                          progress_here, ranks.world)  # fmt: skip

        ranks.all_succeeded(write)

        def finish() -> None:
            totals = _finish(out_dir, paired, n_shards)
            write_manifest(out_dir, STAGE, run_config, complete=True, **fields, **totals)

        ranks.from_main(finish)
    return open_store(out_dir)


def _trusted_shards(out_dir: Path, finished: list[int]) -> set[int]:
    """Of the ``finished`` shards, those whose size and checksum match their record; the others
    are deleted."""
    trusted = set()
    for index in finished:
        path = shard_path(out_dir, index)
        problem = shard_problem(path)
        if problem is None:
            trusted.add(index)
            continue
        warnings.warn(
            f"shard {str(path)!r} is damaged ({problem}); harvesting it again", stacklevel=2
        )
        path.unlink()
        sum_path(path).unlink(missing_ok=True)
    return trusted


def _check_vocab(
    models: Mapping[str, ModelAdapter],
    corpus_tokenizer: Any,
    tokenizers: Mapping[str, Any] | None,
    alignments: Mapping[str, np.ndarray] | None,
) -> dict[str, str]:
    """Tokenizer fingerprints per model, after checking every model reads the corpus ids."""
    alignments = dict(alignments or {})
    unknown = [m for m in alignments if m not in models]
    if unknown:
        raise ConfigError(f"alignment given for unknown model(s) {', '.join(map(repr, unknown))}")
    if tokenizers is None:  # the adapters' own tokenizers, where they know one
        tokenizers = {
            m: a.tokenizer for m, a in models.items() if getattr(a, "tokenizer", None) is not None
        }
    if not tokenizers:
        return {}
    reference = (
        corpus_tokenizer if corpus_tokenizer is not None else next(iter(tokenizers.values()))
    )
    fingerprints = check_tokenizers(reference, tokenizers, alignments)
    for name, alignment in alignments.items():
        check_alignment(name, alignment, len(reference.get_vocab()))
    return fingerprints


def _check_token_range(
    models: Mapping[str, ModelAdapter],
    input_ids: np.ndarray,
    alignments: Mapping[str, np.ndarray] | None,
) -> None:
    """Raise if a corpus token id (after alignment) is past a model's embedding."""
    alignments = alignments or {}
    largest = int(input_ids.max())
    for name, adapter in models.items():
        vocab = getattr(adapter, "vocab_size", None)
        top = int(alignments[name][: largest + 1].max()) if name in alignments else largest
        if isinstance(vocab, int) and top >= vocab:
            raise ConfigError(
                f"model {name!r} has {vocab} token embeddings but the corpus holds token id "
                f"{top}: the corpus was tokenised with another tokenizer than this model's"
            )


def _corpus_record(sequences: PackedSequences, order: np.ndarray, domains: list[str]) -> dict:
    digest = hashlib.sha256(np.ascontiguousarray(sequences.input_ids[order]).tobytes())
    digest.update("\n".join(domains).encode())
    return {
        "sequences": len(order),
        "context_length": int(sequences.input_ids.shape[1]),
        "fingerprint": digest.hexdigest()[:16],
    }


def _prepare(out_dir: Path, run_config: dict, overwrite: bool) -> StoreInfo | None:
    """The finished store if ``out_dir`` already holds it intact; None to (re)harvest into it;
    raise if it holds anything else (unless ``overwrite``, which empties it)."""
    try:
        manifest = read_manifest(out_dir)
    except DamagedFileError:
        if not overwrite:
            raise
        manifest = None
        clear_stage(out_dir)
    if manifest is not None and overwrite and manifest.get("config") != run_config:
        clear_stage(out_dir)
        manifest = None
    if manifest is None:
        if out_dir.exists() and any(out_dir.iterdir()):
            if overwrite:
                clear_stage(out_dir)
                return None
            raise StageError(
                f"{str(out_dir)!r} exists and is not an activation store: choose an empty "
                f"or new --out directory, or {OVERWRITE_HINT} (nothing was written)"
            )
        return None
    if manifest.get("stage") != STAGE:
        raise StageError(
            f"{str(out_dir)!r} holds a {manifest.get('stage')!r} stage, not a store: choose "
            "another --out directory (nothing was written)"
        )
    check_format_version(manifest, out_dir)
    if manifest.get("config") != run_config:
        raise StageError(
            f"the store at {str(out_dir)!r} was harvested with different settings "
            f"({describe_diff(manifest.get('config') or {}, run_config)}); rerun with the same "
            f"settings to resume it, harvest into a new --out directory, or {OVERWRITE_HINT} "
            "(the existing store was left untouched)"
        )
    if not manifest.get("complete"):
        return None
    try:
        return open_store(out_dir)
    except DamagedFileError as error:
        warnings.warn(f"{error}; checking every shard", stacklevel=2)
        return None


def _write_shards(
    paired: PairedSites,
    sequences: PackedSequences,
    order: np.ndarray,
    domains: list[str],
    todo: list[int],
    out_dir: Path,
    config: StoreConfig,
    alignments: Mapping[str, np.ndarray] | None,
    progress: bool,
    world: int = 1,
) -> None:
    domain_index = {d: i for i, d in enumerate(domains)}
    dtype = getattr(torch, TORCH_DTYPES[config.dtype])
    per_seq = sequences.input_ids.shape[1] - int(config.drop_first_position)
    mine = sum(len(_shard_rows(order, i, config)) for i in todo)
    total = len(order) if world == 1 else mine  # under torchrun: this rank's part
    bar = progress_bar(
        total=total * per_seq,
        initial=(total - mine) * per_seq,
        unit="tok",
        unit_scale=True,
        desc="harvest" if world == 1 else f"harvest (rank 0 of {world})",
        disable=not progress,
    )
    writer = BackgroundWriter(out_dir)
    try:
        for index in todo:
            rows = _shard_rows(order, index, config)
            parts: dict[str, list] = {}
            for start in range(0, len(rows), config.batch_sequences):
                batch = rows[start : start + config.batch_sequences]
                tokens = sequences.input_ids[batch]  # [B, P]
                labels = np.array([domain_index[d] for d in np.asarray(sequences.domains)[batch]])
                meta = row_metadata(tokens, batch, labels, config.drop_first_position)
                acts = capture_rows(paired, tokens, batch, config.drop_first_position, alignments)
                for name, values in meta.items():
                    parts.setdefault(name, []).append(torch.from_numpy(values))
                for (model, site), values in acts.items():
                    parts.setdefault(act_key(model, site), []).append(values)
                bar.update(len(batch) * per_seq)
            tensors = {name: torch.cat(chunks) for name, chunks in parts.items()}
            metadata = {
                "rows": len(tensors["tokens"]),
                "sequence_range": [
                    index * config.shard_sequences,
                    index * config.shard_sequences + len(rows),
                ],
                "norm_sums": {
                    key: norm_sum(tensors[key]) for key in tensors if key.startswith("act/")
                },
            }
            for key in metadata["norm_sums"]:
                tensors[key] = tensors[key].to(dtype).contiguous()
            writer.submit(index, tensors, metadata)
    finally:
        bar.close()
        writer.close()


def _shard_rows(order: np.ndarray, index: int, config: StoreConfig) -> np.ndarray:
    return order[index * config.shard_sequences : (index + 1) * config.shard_sequences]


def _finish(out_dir: Path, paired: PairedSites, n_shards: int) -> dict[str, Any]:
    """Totals and normalisation factors from every shard's metadata, in shard order."""
    metas = [read_shard_metadata(shard_path(out_dir, i)) for i in range(n_shards)]
    dims = {act_key(m, s): d for m, sites in paired.dims.items() for s, d in sites.items()}
    factors = combine_factors((m["norm_sums"] for m in metas), (m["rows"] for m in metas), dims)
    return {
        "shards": {
            shard_path(out_dir, i).name: shard_record(shard_path(out_dir, i))
            for i in range(n_shards)
        },
        "tokens": sum(m["rows"] for m in metas),
        "norm_factors": {
            m: {s: factors[act_key(m, s)] for s in sites} for m, sites in paired.names.items()
        },
    }
