"""The crosscoder stage: train on a store, evaluate on held-out activations, write metrics.

Output directory: ``crosscoder/`` (``cfg.json`` + ``model.safetensors``, for
``Crosscoder.from_pretrained``), ``checkpoint/`` while training (resume), ``metrics.json`` and
``manifest.json`` (written last).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdiff.errors import ConfigError, DamagedFileError
from crossdiff.runtime import check_device_name
from crossdiff.tracking import TrackingConfig, open_tracker

WEIGHTS_DIR = "crosscoder"
"""Subdirectory of the stage holding the trained crosscoder (``cfg.json`` + safetensors)."""


@dataclass(frozen=True)
class CrosscoderStageConfig:
    """The crosscoder's shape and training, as a run config or the CLI gives them."""

    expansion: int = 16
    """Latents per dimension of the widest model (ignored if ``dict_size`` is set)."""
    dict_size: int | None = None
    """Latents; None: ``expansion`` × the widest d_model."""
    k: float | None = None
    """Mean active latents per token (BatchTopK); None: 3/16 of the widest d_model (the
    quickstart's 24 for d_model 128)."""
    n_shared: int | None = None
    """Designated shared latents (the tied block); None: 1/16 of the dictionary (the
    quickstart's 128 of 2,048) when the models are equally wide, else 0 (a tied decoder
    vector needs equal widths)."""
    n_dedicated: int = 0
    """Dedicated latents per model (decoder into the other models structurally zero)."""
    dedicated_encoder_own: bool = False
    """Dedicated latents read only their own model (encoder from the others masked to zero)."""
    sites: tuple[str, ...] = ()
    """Several sites per model in one crosscoder (at least two; every model must have each in
    the store); empty: one site per model."""
    steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 1024
    """Tokens per step."""
    lr: float = 1e-3
    """Peak learning rate."""
    dead_tokens: int = 100_000
    """A latent is dead after this many training tokens without firing (100k let aux-k revive
    every latent of the quickstart; long GPU runs use millions)."""
    aux_coeff: float = 1 / 32
    """Weight of the aux-k loss that revives dead latents."""
    k_start: float | None = None
    """Optional k annealing: start at this k, reach ``k`` after ``k_anneal_steps``."""
    k_anneal_steps: int = 0
    """Steps of the linear k annealing."""
    sparsity_coeff: float = 0.3
    """λ of the extra penalty λ·Σ_i f_i·w_i·Σ_m ‖d_i^m‖ (0: BatchTopK alone, and then no
    model-exclusive latents form: the quickstart's 0.3 is the default)."""
    shared_sparsity_ratio: float = 0.15
    """w_i of the designated shared latents in that penalty (1 for the others)."""
    checkpoint_every: int = 500
    """Checkpoint interval in steps (the resume point)."""
    eval_shards: int = 1
    """Without a held-out store: the last shards of the training store are held out."""
    ce_sequences: int = 32
    """Held-out sequences used for CE recovered (0: skip)."""
    seed: int = 0
    """Seed of the initialisation and of the batch order."""
    dtype: str = "float32"
    """Weight dtype of the crosscoder (``float32`` or ``bfloat16``; see ``CrosscoderConfig``)."""
    progress: bool = True
    """Show a progress bar with live FVE, L0 and dead fraction."""
    device: str = "auto"
    """Where to train and evaluate: ``auto`` (CUDA where present, else CPU), ``cpu``, ``cuda``,
    ``cuda:N``; under ``torchrun`` a bare ``cuda`` is each process's own GPU."""
    latent_shards: int = 1
    """Under ``torchrun``: split the dictionary over this many processes (a divisor of the
    world size; the rest is data parallel). Not a setting of the result: a run resumes with
    any value (``crossdiff.crosscoder.sharded``)."""

    def __post_init__(self) -> None:
        for name in (
            "expansion", "steps", "batch_size", "dead_tokens", "eval_shards", "latent_shards"
        ):  # fmt: skip
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"crosscoder {name} must be a positive integer, got {value!r}")
        object.__setattr__(self, "sites", tuple(self.sites))
        if len(self.sites) == 1 or len(set(self.sites)) != len(self.sites):
            raise ConfigError(
                f"crosscoder sites must list at least two distinct sites, got {list(self.sites)} "
                "(for one site per model leave it empty)"
            )
        if not isinstance(self.dedicated_encoder_own, bool):
            raise ConfigError(
                f"crosscoder dedicated_encoder_own must be true or false, "
                f"got {self.dedicated_encoder_own!r}"
            )
        for name in (
            "n_shared", "n_dedicated", "k_anneal_steps", "checkpoint_every", "ce_sequences", "seed"
        ):  # fmt: skip
            value = getattr(self, name)
            if name == "n_shared" and value is None:
                continue
            if not _is_int(value) or value < 0:
                raise ConfigError(f"crosscoder {name} must be an integer >= 0, got {value!r}")
        if self.dict_size is not None and (not _is_int(self.dict_size) or self.dict_size < 1):
            raise ConfigError(
                f"crosscoder dict_size must be a positive integer, got {self.dict_size!r}"
            )
        for name in ("lr", "k", "k_start"):
            value = getattr(self, name)
            if value is not None and not (_is_finite(value) and value > 0):
                raise ConfigError(f"crosscoder {name} must be a finite number > 0, got {value!r}")
        for name in ("aux_coeff", "sparsity_coeff", "shared_sparsity_ratio"):
            value = getattr(self, name)
            if not (_is_finite(value) and value >= 0):
                raise ConfigError(f"crosscoder {name} must be a finite number >= 0, got {value!r}")
        if self.dict_size is not None:
            self.check_dictionary(self.dict_size)
        check_device_name(self.device, "crosscoder device")

    def resolved_dict_size(self, d_models: tuple[int, ...]) -> int:
        """Latents for models of widths ``d_models``: ``dict_size`` or ``expansion`` × widest."""
        return self.dict_size or self.expansion * max(d_models)

    def resolved_k(self, d_models: tuple[int, ...]) -> float:
        """Mean active latents per token: ``k``, or 3/16 of the widest d_model when unset."""
        return self.k if self.k is not None else 3 * max(d_models) / 16

    def resolved_n_shared(self, dict_size: int, d_models: tuple[int, ...]) -> int:
        """Designated shared latents: ``n_shared``, or when unset dict_size // 16 for models of
        equal width and 0 for models of different widths."""
        if self.n_shared is not None:
            return self.n_shared
        return dict_size // 16 if len(set(d_models)) == 1 else 0

    def check_dictionary(self, dict_size: int, where: str = "") -> None:
        """Raise unless k, k_start and a given n_shared fit a dictionary of ``dict_size``."""
        for name in ("k", "k_start"):
            value = getattr(self, name)
            if value is not None and value >= dict_size:
                raise ConfigError(
                    f"crosscoder {name} = {value:g} must be below the dictionary size "
                    f"{dict_size}{where}"
                )
        if self.n_shared is not None and self.n_shared >= dict_size:
            raise ConfigError(
                f"crosscoder n_shared = {self.n_shared} must be below the dictionary size "
                f"{dict_size}{where}"
            )

    def check_partition(
        self, dict_size: int, n_models: int, where: str = "", n_shared: int | None = None
    ) -> None:
        """Raise unless the designated and dedicated blocks fit a dictionary of ``dict_size``
        (``n_shared``: the resolved shared block, by default the given one or 0)."""
        n_shared = n_shared if n_shared is not None else (self.n_shared or 0)
        used = n_shared + n_models * self.n_dedicated
        if self.n_dedicated and used > dict_size:
            raise ConfigError(
                f"the crosscoder partition n_shared {n_shared} + {n_models} models x "
                f"n_dedicated {self.n_dedicated} = {used} latents is larger than the dictionary "
                f"size {dict_size}{where}"
            )

    def record(self) -> dict[str, Any]:
        """The settings as recorded (fields added later left out while at their default, so
        an older run's record still matches; ``latent_shards`` left out: how the dictionary is
        spread over processes does not change the result)."""
        from crossdiff.config import compact_record, to_dict

        settings = compact_record(to_dict(self), STAGE_NEW_FIELDS)
        settings.pop("latent_shards")
        for name, rule in UNSET_RULES.items():  # a changed rule changes the record
            if settings[name] is None:
                settings[name] = rule
        return settings


STAGE_NEW_FIELDS = {"n_dedicated": 0, "dedicated_encoder_own": False, "sites": ()}
"""Stage fields added after the first runs, with their defaults."""

UNSET_RULES = {"k": "3/16 of the widest d_model", "n_shared": "dict_size // 16 if equal widths"}
"""How an unset ``k`` or ``n_shared`` is resolved, as the record names it: a run that left one
unset under an earlier rule (k = d_model/8, n_shared = 0) has another record, so it is rerun
rather than taken as up to date."""


def _settings(config: CrosscoderStageConfig) -> dict[str, Any]:
    """The stage's settings as its manifest records them (the progress bar changes nothing)."""
    return config.record() | {"progress": None}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def train_crosscoder_stage(
    store_dir: str | Path,
    out_dir: str | Path,
    config: CrosscoderStageConfig,
    *,
    heldout_store: str | Path | None = None,
    models: tuple[str, ...] | None = None,
    sites: dict[str, str] | None = None,
    overwrite: bool = False,
    tracking: TrackingConfig | None = None,
) -> dict[str, Any]:
    """Train (resuming; skipping if finished with the same settings), evaluate, return metrics.

    Held-out activations come from ``heldout_store`` if given, else from the last
    ``config.eval_shards`` shards of the training store (not trained on). ``out_dir`` holding
    work done with other settings (any field of ``config``, another store) is refused with the
    settings that differ, or emptied first with ``overwrite``. ``tracking`` sends the training
    metrics to an experiment tracker (rank 0 only; see :mod:`crossdiff.tracking`).
    """
    from crossdiff.stages import is_main_process, stage_lock

    args = (store_dir, out_dir, config, heldout_store, models, sites)
    if not is_main_process():
        return _train_stage(*args, False, None)
    with stage_lock(out_dir):
        return _train_stage(*args, overwrite, tracking)


def _train_stage(
    store_dir: str | Path,
    out_dir: str | Path,
    config: CrosscoderStageConfig,
    heldout_store: str | Path | None,
    models: tuple[str, ...] | None,
    sites: dict[str, str] | None,
    overwrite: bool,
    tracking: TrackingConfig | None,
) -> dict[str, Any]:
    from crossdiff.config import to_dict
    from crossdiff.crosscoder import Crosscoder, CrosscoderConfig, TrainConfig
    from crossdiff.crosscoder.distributed import Collectives, finish_distributed, init_distributed
    from crossdiff.crosscoder.evaluate import evaluate
    from crossdiff.crosscoder.train import train
    from crossdiff.runtime import resolve_device
    from crossdiff.stages import (
        atomic_write_json,
        is_main_process,
        named_checkpoint_errors,
        prepare_stage,
        read_json_file,
        write_manifest,
    )
    from crossdiff.store import StoreReader, open_store, store_fingerprint
    from crossdiff.verify import file_records

    info = open_store(store_dir)
    if config.sites:
        models, dims = choose_multi_sites(info, models, config.sites)
        sites = None
    else:
        models, sites = choose_sites(info.sites, models, sites or {})
        dims = tuple(info.dims[m][sites[m]] for m in models)
    n_shards = len(info.shard_paths())
    heldout = open_store(heldout_store) if heldout_store is not None else None
    if heldout is None and not 1 <= config.eval_shards < n_shards:
        raise ConfigError(
            f"eval_shards must be in [1, {n_shards - 1}] for a store of {n_shards} shards "
            "(or give a held-out store)"
        )
    train_shards = list(range(n_shards if heldout else n_shards - config.eval_shards))
    dict_size = config.resolved_dict_size(dims)
    where = f" ({config.expansion} x widest d_model {max(dims)})"
    config.check_dictionary(dict_size, where)
    n_shared = config.resolved_n_shared(dict_size, dims)
    config.check_partition(dict_size, len(models), where, n_shared)
    cfg = CrosscoderConfig(
        models=models,
        d_models=dims,
        dict_size=dict_size,
        k=config.resolved_k(dims),
        n_shared=n_shared,
        n_dedicated=(config.n_dedicated,) * len(models) if config.n_dedicated else (),
        dedicated_encoder_own=config.dedicated_encoder_own,
        sites=config.sites,
        sparsity_coeff=config.sparsity_coeff,
        shared_sparsity_ratio=config.shared_sparsity_ratio,
        seed=config.seed,
        dtype=config.dtype,
    )
    tcfg = TrainConfig(
        steps=config.steps,
        lr=config.lr,
        warmup_steps=min(100, config.steps // 10),
        dead_tokens=config.dead_tokens,
        aux_coeff=config.aux_coeff,
        k_start=config.k_start,
        k_anneal_steps=config.k_anneal_steps,
        checkpoint_every=config.checkpoint_every,
        progress=config.progress,
    )
    record = {
        "stage": _settings(config),
        "crosscoder": cfg.record(),
        "train": to_dict(tcfg) | {"progress": None},
        "store": store_fingerprint(info),
        "heldout_store": store_fingerprint(heldout) if heldout else None,
        "sites": sites,
        "batch_size": config.batch_size,
        "train_shards": len(train_shards),
    }
    out = Path(out_dir)
    if is_main_process():
        manifest = prepare_stage(out, "crosscoder", record, overwrite)
        if manifest is not None and manifest.get("complete"):
            metrics_path = out / "metrics.json"
            finished = read_json_file(metrics_path, "crosscoder metrics")
            if finished is None:
                raise DamagedFileError(
                    f"{str(metrics_path)!r} is missing though the stage is marked complete; "
                    "rerun with --overwrite to train again"
                )
            return finished
        write_manifest(out, "crosscoder", record, complete=False)
    device = resolve_device(config.device)
    init_distributed(device)
    reader = StoreReader(
        info, config.batch_size, sites=sites, seed=config.seed, normalize=False,
        shards=train_shards, drop_last=True, passes=None,
    )  # fmt: skip
    one_pass = StoreReader(
        info, config.batch_size, sites=sites, shards=train_shards, drop_last=True
    )
    if len(one_pass) == 0:
        raise ConfigError(
            f"the training shards hold fewer tokens than one batch of {config.batch_size}: "
            "lower the batch size or the held-out shards"
        )
    tracked = tracking if is_main_process() else None
    with (
        open_tracker(
            tracked, out, "crosscoder", record, config.batch_size, "activations"
        ) as tracker,
        named_checkpoint_errors(out / "checkpoint", ("load_checkpoint",)),
    ):
        on_step = _logging_steps(out, tcfg.checkpoint_every, tracker)
        if config.latent_shards > 1:  # each process keeps its slice on the device
            from crossdiff.crosscoder.sharded_train import train_sharded

            model = Crosscoder(cfg)
            result = train_sharded(
                model, reader, tcfg, config.latent_shards, out, device=device, on_step=on_step
            )
            model = model.to(device)
        else:
            model = Crosscoder(cfg).to(device)
            result = train(model, reader, tcfg, out, on_step=on_step)
    rank = Collectives().rank
    finish_distributed()
    if rank != 0:
        return {}
    model.save_pretrained(out / WEIGHTS_DIR)
    write_train_log(out / TRAIN_LOG, result.history)
    eval_info = heldout or info
    eval_shards = None if heldout else list(range(n_shards - config.eval_shards, n_shards))
    held_out = StoreReader(eval_info, 4096, sites=sites, normalize=False, shards=eval_shards)
    metrics: dict[str, Any] = evaluate(model, held_out).to_dict()
    metrics["eval_window_tokens"] = metrics.pop("n_tokens")
    metrics["train_steps"], metrics["nan_batches"] = result.steps, result.nan_batches
    all_shards = list(range(len(eval_info.shard_paths())))
    if sites is None:  # several sites: splicing one site's reconstruction is not defined here
        metrics["ce_recovered"] = None
    else:
        metrics["ce_recovered"] = ce_metrics(
            model, eval_info, sites, eval_shards or all_shards, config.ce_sequences
        )
    atomic_write_json(out / "metrics.json", metrics)
    weights = [f"{WEIGHTS_DIR}/{name}" for name in ("cfg.json", "model.safetensors")]
    write_manifest(out, "crosscoder", record, complete=True, files=file_records(out, weights))
    return metrics


def step_metrics(stats: Any) -> dict[str, float]:
    """One training step's numbers (a ``StepStats``) as a tracker receives them."""
    names = ("loss", "mse", "aux", "fve", "l0", "dead_fraction", "lr", "k")
    return {f"crosscoder/{name}": getattr(stats, name) for name in names}


def _logging_steps(out: Path, every: int, tracker: Any) -> Any:
    """The per-step callback: send the step to the tracker and, at each checkpoint step (before
    that checkpoint is written), save the curve so far, so a resumed run keeps every step."""
    from crossdiff.stages import is_main_process

    steps: list = []
    main = is_main_process()

    def on_step(stats: Any) -> None:
        tracker.log(step_metrics(stats), stats.step)
        steps.append(stats)
        if main and every and stats.step % every == 0:
            write_train_log(out / TRAIN_LOG, steps)

    return on_step


TRAIN_LOG = "train_log.json"
"""The training curve: one record per optimiser step (the report draws it)."""


def write_train_log(path: Path, history: list) -> None:
    """Append this process's steps to the curve at ``path`` (a resumed run keeps earlier steps)."""
    from dataclasses import asdict

    from crossdiff.stages import atomic_write_json, read_json_file

    steps = [asdict(stats) for stats in history]
    first = steps[0]["step"] if steps else None
    earlier = (read_json_file(path, "training log") or {}).get("history", [])
    kept = [s for s in earlier if first is None or s["step"] < first]
    atomic_write_json(path, {"history": kept + steps})


def choose_sites(
    available: dict[str, list[str]], models: tuple[str, ...] | None, chosen: dict[str, str]
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The models (in order) and one site for each, checked against the store."""
    from crossdiff.errors import unknown_choice

    models = tuple(models) if models else tuple(available)
    for m in models:
        if m not in available:
            raise unknown_choice("model (not in the store)", m, available)
    sites: dict[str, str] = {}
    for model, site in chosen.items():
        if model not in models:
            raise ConfigError(f"site given for {model!r}, which is not among {models}")
        if site not in available[model]:
            raise unknown_choice(f"site of {model!r}", site, available[model])
        sites[model] = site
    for m in models:
        if m not in sites:
            if len(available[m]) != 1:
                raise ConfigError(
                    f"model {m!r} has several sites in the store {available[m]}: choose one"
                )
            sites[m] = available[m][0]
    return models, sites


def choose_multi_sites(
    info: Any, models: tuple[str, ...] | None, sites: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The models and each one's width for a crosscoder over ``sites`` of every model: each
    model must have every site in the store, all of one width."""
    from crossdiff.errors import unknown_choice

    available = info.sites
    models = tuple(models) if models else tuple(available)
    dims = []
    for m in models:
        if m not in available:
            raise unknown_choice("model (not in the store)", m, available)
        for site in sites:
            if site not in available[m]:
                raise ConfigError(
                    f"site {site!r} is missing for model {m!r} in the store (it has {available[m]})"
                )
        widths = {info.dims[m][site] for site in sites}
        if len(widths) != 1:
            raise ConfigError(
                f"the sites of model {m!r} have different widths {info.dims[m]}: "
                "a crosscoder over several sites needs one width per model"
            )
        dims.append(widths.pop())
    return models, tuple(dims)


def ce_metrics(
    model: Any, info: Any, sites: dict[str, str], shards: list[int], n_sequences: int
) -> dict[str, Any] | None:
    """CE recovered per model on held-out sequences, if the store records models and corpus."""
    import numpy as np
    import torch

    from crossdiff.adapters import load_adapter
    from crossdiff.corpus import load_sequences
    from crossdiff.crosscoder.evaluate import ce_recovered
    from crossdiff.plugins import create_plugin_manager
    from crossdiff.store import load_shard

    if n_sequences <= 0:
        return None
    record = info.record  # paths resolved against the store
    store_cfg = info.manifest.get("config", {}).get("store", {})
    if "models" not in record or "corpus" not in record:
        return None
    corpus, sources = record["corpus"], record["models"]
    seqs = np.unique(np.concatenate([
        load_shard(info.shard_paths()[i])["sequences"].numpy() for i in shards
    ]))[:n_sequences]  # fmt: skip
    split = load_sequences(corpus)[store_cfg.get("split", "train")]
    tokens = torch.from_numpy(np.asarray(split.input_ids)[seqs].astype(np.int64))
    manager = create_plugin_manager()
    adapters = {m: load_adapter(sources[m], manager) for m in model.cfg.models}
    first = 1 if store_cfg.get("drop_first_position", True) else 0
    results = ce_recovered(model, adapters, sites, tokens, first_position=first)
    return {m: vars(r) for m, r in results.items()}
