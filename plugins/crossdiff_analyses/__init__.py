"""Built-in analyses, each in a module of its own, registered like any third-party plugin.

They are declared here by name (``LazyAnalysis``) so that listing plugins imports no numerics;
each module is imported when its analysis runs.
"""

from __future__ import annotations

from crossdiff import hookimpl
from crossdiff.analysis import Analysis, LazyAnalysis

FEATURE_INPUTS = ("crosscoder", "activations/validation")

ANALYSES = (
    LazyAnalysis(
        "corpus_stats",
        "tokens and unigram entropy (the context-free loss baseline) per domain",
        ("corpus",),
        "crossdiff_analyses.corpus_stats:CorpusStats",
    ),
    LazyAnalysis(
        "feature_classes",
        "shared vs model-only latents by relative decoder norm, with latent scaling",
        FEATURE_INPUTS,
        "crossdiff_analyses.feature_classes:FeatureClasses",
    ),
    LazyAnalysis(
        "density",
        "latent firing frequency per class and domain, with Mann-Whitney U tests",
        FEATURE_INPUTS,
        "crossdiff_analyses.density:Density",
    ),
    LazyAnalysis(
        "dashboards",
        "top-activating contexts per latent (circuitsvis token views), per class",
        ("corpus", *FEATURE_INPUTS),
        "crossdiff_analyses.dashboards:Dashboards",
    ),
    LazyAnalysis(
        "routing",
        "MoE: expert share per domain vs uniform k/E, experts for half, entropy, co-activation",
        ("corpus", "activations/validation"),
        "crossdiff_analyses.routing:Routing",
    ),
    LazyAnalysis(
        "expert_alignment",
        "MoE: lift of each expert per crosscoder latent, entropy, expert-specific latents",
        ("corpus", *FEATURE_INPUTS),
        "crossdiff_analyses.expert_alignment:ExpertAlignment",
    ),
    LazyAnalysis(
        "early_decoding",
        "MoE Lens: top-n vs all experts (cosines, logit lens, KL) and perplexity vs n",
        ("corpus", "activations/validation"),
        "crossdiff_analyses.early_decoding:EarlyDecoding",
    ),
    LazyAnalysis(
        "routing_similarity",
        "MoE: hidden-state cosine vs shared experts (tokens, sequences), collapse, cross-model",
        ("corpus", "activations/validation"),
        "crossdiff_analyses.routing_similarity:RoutingSimilarity",
    ),
    LazyAnalysis(
        "interventions",
        "ablate each latent class in every model: Δ loss per domain, next-token KL, own vs other",
        ("corpus", *FEATURE_INPUTS),
        "crossdiff_analyses.interventions:Interventions",
    ),
)


@hookimpl
def crossdiff_analyses() -> list[Analysis]:
    """The built-in analyses."""
    return list(ANALYSES)
