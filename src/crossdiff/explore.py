"""A finished run opened from Python: its settings, models, crosscoder, held-out store and analyses,
each latent with the numbers of the report explorer's card, and interventions on latents.

    import crossdiff
    run = crossdiff.open_run("runs/quickstart")
    latent = run.latent(run.top_latents("moe_only", 1)[0])
    print(latent.contexts_text())
    print(run.ablate(latent.id)["moe"])

Everything loads on first use and is kept: the crosscoder, the held-out store, each model (through
the adapters, from the path the store records). A latent's statistics come from ONE pass over the
held-out store, the explorer's own first pass (:func:`crossdiff.report.explorer.latent_stats`,
done once per :class:`Run`), and its card from :func:`crossdiff.report.explorer.latent_entries`:
the functions that write the report's explorer, so a card here equals the report's card.
Interventions are :mod:`crossdiff.interventions` on the run's held-out sequences.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from crossdiff.adapters import ModelAdapter, load_adapter
from crossdiff.crosscoder import Crosscoder
from crossdiff.errors import ConfigError, StageError
from crossdiff.interventions import (
    Intervention,
    InterventionEffect,
    ablate,
    heldout_batches,
    measure_interventions,
    steer,
)
from crossdiff.plugins import CrossdiffPluginManager, create_plugin_manager
from crossdiff.report.explorer import (
    ExplorerInputs,
    ExplorerSettings,
    LatentStats,
    explorer_columns,
    latent_entries,
    latent_stats,
)
from crossdiff.stages import read_manifest
from crossdiff.store import StoreInfo, open_store, store_alignments

HELDOUT = "activations/validation"
"""The held-out store of a run, relative to the run directory."""


def open_run(path: str | Path, manager: CrossdiffPluginManager | None = None) -> Run:
    """Open the run directory ``path`` (made by ``crossdiff run``); it needs a finished
    crosscoder and held-out store."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise ConfigError(f"no run directory at {str(run_dir)!r}")
    for stage, what in (("crosscoder", "crosscoder"), (HELDOUT, "held-out activation store")):
        manifest = read_manifest(run_dir / stage)
        if not manifest or not manifest.get("complete"):
            raise StageError(
                f"{str(run_dir)!r} has no finished {what} ({stage}/manifest.json missing or "
                "incomplete): finish the run with `crossdiff run CONFIG --out RUN` first"
            )
    return Run(run_dir, manager)


@dataclass
class Latent:
    """One latent as the explorer shows it (values rounded as on its card)."""

    id: int
    latent_class: str
    """``shared`` or ``<model>_only`` (relative decoder norm)."""
    decoder_norms: dict[str, float]
    """Model -> ‖d_i^m‖ in the crosscoder's normalised space."""
    row: dict[str, Any]
    """The explorer table's row: column -> value."""
    card: dict[str, Any]
    """The explorer's card: contexts, histogram, densities per domain, logit effects, experts
    (and ``intervention`` where the ``interventions`` analysis measured this latent)."""

    @property
    def density(self) -> float:
        """Share of held-out tokens on which the latent fires."""
        return self.row["density"]

    @property
    def domain_density(self) -> dict[str, float]:
        """Domain -> share of that domain's held-out tokens on which it fires."""
        return self.card["domain_density"]

    @property
    def max_activation(self) -> float:
        """Its largest activation on the held-out store."""
        return self.row["max_activation"]

    @property
    def contexts(self) -> list[dict[str, Any]]:
        """Top-activating held-out contexts: ``tokens``, ``values``, ``peak``, ``sequence``."""
        return self.card["contexts"]

    @property
    def logits(self) -> dict[str, dict[str, list]]:
        """Model -> ``promoted`` / ``suppressed``: ``[token, direct logit effect]`` lists."""
        return self.card["logits"]

    @property
    def experts(self) -> dict[str, dict[str, list]]:
        """MoE model -> per expert: ``conditional`` P(chosen | fires), ``base``, ``lift``."""
        return self.card["experts"]

    @property
    def intervention(self) -> dict[str, Any] | None:
        """The ``interventions`` analysis's effects of ablating this latent, if measured."""
        return self.card.get("intervention")

    def contexts_text(self) -> str:
        """The top contexts as text, one a line, the peak token in ⟦ ⟧."""
        return format_contexts(self.contexts)

    def view(self) -> ContextViews:
        """The top contexts as circuitsvis token views, one under the other (a notebook shows
        it; ``.html()`` gives the page fragment)."""
        top = max([max(c["values"]) for c in self.contexts] + [1e-6])
        return ContextViews([(c["tokens"], c["values"]) for c in self.contexts], top)

    def __str__(self) -> str:
        norms = ", ".join(f"{m} {v:.3g}" for m, v in self.decoder_norms.items())
        return (
            f"latent {self.id} ({self.latent_class}): density {self.density}, "
            f"max activation {self.max_activation}, decoder norms {norms}"
        )


@dataclass
class ContextViews:
    """Token contexts shown with circuitsvis' ``ColoredTokens`` (its bundled script inlined
    once, so the view needs no network)."""

    contexts: list[tuple[list[str], list[float]]]
    """``(tokens, values)`` of each context."""
    max_value: float
    """The top of the colour scale (0 is the bottom)."""

    def html(self) -> str:
        """One HTML fragment rendering every context."""
        import html
        import uuid
        from importlib import resources

        bundle = resources.files("circuitsvis").joinpath("dist", "cdn", "iife.js")
        script = bundle.read_text("utf-8").replace("</script>", "<\\/script>")
        prefix = f"crossdiff-{uuid.uuid4().hex[:12]}"
        divs, calls = [], []
        for n, (tokens, values) in enumerate(self.contexts):
            divs.append(f'<div id="{prefix}-{n}" style="margin: 4px 0"></div>')
            props = {
                # circuitsvis puts token text into the page as HTML: escape it to show it as is
                "tokens": [html.escape(t) for t in tokens],
                "values": list(values),
                "minValue": 0.0,
                "maxValue": self.max_value,
            }
            props_json = json.dumps(props).replace("</", "<\\/")
            calls.append(
                f"CircuitsVis.render('{prefix}-{n}', CircuitsVis.ColoredTokens, {props_json});"
            )
        return "".join(divs) + f"<script>{script}\n{''.join(calls)}</script>"

    def _repr_html_(self) -> str:
        return self.html()


def format_contexts(contexts: Sequence[Mapping[str, Any]]) -> str:
    """``contexts`` (a card's) as text: ``n. (peak value) tokens`` with the peak token in ⟦ ⟧ and
    line breaks shown as ⏎."""
    lines = []
    for n, context in enumerate(contexts, start=1):
        tokens = [t.replace("\n", "⏎") for t in context["tokens"]]
        peak = context["peak"]
        tokens[peak] = f"⟦{tokens[peak]}⟧"
        lines.append(f"{n:2d}. ({context['values'][peak]:.3g}) {''.join(tokens)}")
    return "\n".join(lines)


class _Models(Mapping[str, ModelAdapter]):
    """Model name -> adapter, each loaded on first access."""

    def __init__(self, run: Run) -> None:
        self._run = run

    def __getitem__(self, name: str) -> ModelAdapter:
        return self._run.model(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._run.crosscoder.cfg.models)

    def __len__(self) -> int:
        return len(self._run.crosscoder.cfg.models)


class Run:
    """A finished run directory seen from Python (open it with :func:`open_run`)."""

    def __init__(
        self,
        path: str | Path,
        manager: CrossdiffPluginManager | None = None,
        settings: ExplorerSettings | None = None,
    ) -> None:
        self.path = Path(path)
        self.settings = settings or ExplorerSettings()
        """What a latent's card shows (the report's explorer uses the defaults)."""
        self._manager = manager
        self._adapters: dict[str, ModelAdapter] = {}
        self._cards: dict[int, tuple[list[Any], dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ------------------------------------------------------------ what the run holds

    @cached_property
    def crosscoder(self) -> Crosscoder:
        """The trained crosscoder."""
        return Crosscoder.from_pretrained(self.path / "crosscoder")

    @cached_property
    def store(self) -> StoreInfo:
        """The held-out activation store (``activations/validation``)."""
        return open_store(self.path / HELDOUT)

    @property
    def manager(self) -> CrossdiffPluginManager:
        """The plugin manager the models load through."""
        if self._manager is None:
            self._manager = create_plugin_manager()
        return self._manager

    @cached_property
    def config(self) -> dict[str, Any]:
        """Each stage's settings as its manifest records them: ``corpus``, ``models`` (name ->
        settings, or ``{"path": ...}`` for a model given by path), ``harvest`` (the held-out
        store's), ``crosscoder``, and ``analyses`` (the names that ran)."""
        models = {}
        for name, source in self.model_paths.items():
            manifest = read_manifest(self.path / "models" / name)
            models[name] = (manifest or {}).get("config") or {"path": source}
        return {
            "corpus": (read_manifest(self.path / "corpus") or {}).get("config"),
            "models": models,
            "harvest": self.store.manifest.get("config"),
            "crosscoder": (read_manifest(self.path / "crosscoder") or {}).get("config"),
            "analyses": sorted(self.analyses),
        }

    @cached_property
    def model_paths(self) -> dict[str, str]:
        """Model name -> the path (or hub name) its activations were harvested from."""
        return dict(self.store.record.get("models", {}))

    @property
    def sites(self) -> dict[str, str]:
        """Model name -> the site the crosscoder reads (one per model)."""
        cfg = self.crosscoder.cfg
        if cfg.sites:
            return {m: cfg.sites[-1] for m in cfg.models}
        return {m: self.store.sites[m][0] for m in cfg.models}

    @property
    def models(self) -> Mapping[str, ModelAdapter]:
        """Model name -> its adapter, loaded on first access."""
        return _Models(self)

    def model(self, name: str) -> ModelAdapter:
        """Model ``name``'s adapter (loaded once, from the path the store records)."""
        if name not in self._adapters:
            if name not in self.model_paths:
                raise ConfigError(
                    f"unknown model {name!r}; this run's held-out store records "
                    f"{sorted(self.model_paths)}"
                )
            self._adapters[name] = load_adapter(self.model_paths[name], self.manager)
        return self._adapters[name]

    @cached_property
    def analyses(self) -> dict[str, dict[str, Any]]:
        """Analysis name -> its ``summary.json``, for every analysis that ran."""
        root = self.path / "analyses"
        out = {}
        for path in sorted(root.glob("*/summary.json")) if root.is_dir() else []:
            out[path.parent.name] = json.loads(path.read_text())
        return out

    @property
    def summary(self) -> dict[str, Any] | None:
        """The report's ``summary.json``, or None before the report stage."""
        path = self.path / "report" / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def first_position(self) -> int:
        """The first position the store holds (1: position 0 was dropped)."""
        store_config = self.store.manifest.get("config", {}).get("store", {})
        return 1 if store_config.get("drop_first_position", True) else 0

    # ------------------------------------------------------------ latents

    @cached_property
    def explorer_inputs(self) -> ExplorerInputs:
        """Tokens, unembeddings and routing the explorer reads (loads the models)."""
        from crossdiff.pipeline.report import explorer_inputs, intervention_cards

        inputs = explorer_inputs(
            self.path / "corpus", self.crosscoder, self.store, self.manager, self.model
        )
        inputs.interventions = intervention_cards(self.path)
        return inputs

    @cached_property
    def stats(self) -> LatentStats:
        """Every latent's statistics: one pass over the held-out store (done once)."""
        return latent_stats(self.crosscoder, self.store, self.explorer_inputs, self.settings)

    @property
    def classes(self) -> list[str]:
        """The class of every latent."""
        return self.stats.classes

    def top_latents(self, latent_class: str | None = None, n: int | None = 10) -> list[int]:
        """The latents (of ``latent_class``, or any) that fired most often on the held-out store,
        most first; ``n`` None: all that fired."""
        known = sorted(set(self.classes))
        if latent_class is not None and latent_class not in known:
            raise ConfigError(f"unknown latent class {latent_class!r}; this run has {known}")
        fires = self.stats.tallies.fires_L
        order = sorted(
            (i for i in self.stats.live if latent_class in (None, self.classes[i])),
            key=lambda i: (-int(fires[i]), i),
        )
        return order if n is None else order[:n]

    def latent(self, latent: int) -> Latent:
        """Latent ``latent``: its class, decoder norms, table row and card."""
        n = self.crosscoder.cfg.dict_size
        if isinstance(latent, bool) or not 0 <= int(latent) < n:
            raise ConfigError(
                f"latent {latent!r} out of range: the crosscoder has {n} (0..{n - 1})"
            )
        latent = int(latent)
        if latent not in self._cards:
            table, cards = latent_entries(
                self.crosscoder, self.store, self.explorer_inputs, self.stats, [latent],
                self.settings,
            )  # fmt: skip
            self._cards[latent] = (table[0], cards[latent])
        row, card = self._cards[latent]
        norms = self.stats.norms_LM[latent]
        return Latent(
            id=latent,
            latent_class=self.classes[latent],
            decoder_norms={m: float(norms[i]) for i, m in enumerate(self.crosscoder.cfg.models)},
            row=dict(zip(explorer_columns(self.stats.domains), row, strict=True)),
            card=card,
        )

    # ------------------------------------------------------------ interventions

    def heldout(self, max_sequences: int = 16, batch_tokens: int = 2048) -> dict[str, list]:
        """Domain -> ``[B, P]`` batches of the first ``max_sequences`` held-out sequences of
        each domain (corpus ids)."""
        from crossdiff.corpus import load_sequences

        split = self.store.manifest["config"]["store"]["split"]
        packed = load_sequences(self.path / "corpus")[split]
        return heldout_batches(packed.input_ids, packed.domains, max_sequences, batch_tokens)

    def intervene(
        self,
        interventions: Mapping[str, Intervention],
        max_sequences: int = 16,
        batch_tokens: int = 2048,
    ) -> dict[str, dict[str, InterventionEffect]]:
        """Name -> model -> the effect of each intervention on held-out text, every model."""
        return measure_interventions(
            self.crosscoder,
            self.models,
            self.sites,
            self.heldout(max_sequences, batch_tokens),
            interventions,
            self.first_position,
            store_alignments(self.store),
        )

    def logits(self, model: str, tokens: Any, intervention: Intervention | None = None) -> Any:
        """``[B, P, V]`` model ``model``'s logits on ``tokens`` (``[B, P]`` corpus ids, or a
        string, tokenized with the corpus's tokenizer), under ``intervention`` if given."""
        import torch

        from crossdiff.interventions import intervened_logits, model_tokens

        if isinstance(tokens, str):
            from crossdiff.corpus import load_tokenizer

            tokenizer = load_tokenizer(self.path / "corpus" / "tokenizer")
            tokens = torch.tensor([tokenizer.encode(tokens)])
        tokens = torch.as_tensor(tokens).long()
        alignments = store_alignments(self.store)
        own = {m: model_tokens(tokens, alignments.get(m)) for m in self.crosscoder.cfg.models}
        if intervention is None:
            with torch.no_grad():
                return self.model(model).logits(own[model])
        return intervened_logits(
            self.crosscoder, self.models, self.sites, own, model, intervention, self.first_position
        )

    def ablate(
        self, latents: int | Sequence[int], max_sequences: int = 16
    ) -> dict[str, InterventionEffect]:
        """Model -> the effect of ablating ``latents`` in that model on held-out text."""
        return self.intervene({"ablate": ablate(latents)}, max_sequences)["ablate"]

    def steer(
        self, latents: int | Sequence[int], alpha: float, max_sequences: int = 16
    ) -> dict[str, InterventionEffect]:
        """Model -> the effect of steering ``latents`` by ``alpha`` in that model."""
        return self.intervene({"steer": steer(latents, alpha)}, max_sequences)["steer"]
