"""Feature classes of crosscoder latents from their per-model decoder norms.

Every decoder-norm statistic is taken in the crosscoder's **normalised space**: the space it was
trained in, where each model's activations are scaled by its fixed input scale s_m so that
E‖s_m·x_m‖² = D_m. Only there are the models' decoder norms comparable: in each model's raw units
a model whose activations are 10× larger would get 10× larger norms, and rescaling one model's
activations would move latents between classes. In the normalised space the designated shared
block has r = 0.5 exactly, and the classes do not change when a model's activations are rescaled.

Convention (two models A, B, in the crosscoder's config order): r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖);
``A_only`` if r < 0.1, ``B_only`` if r > 0.9, ``shared`` in between. With more than two models a
latent is ``<m>_only`` when model m holds more than 1 − ``margin`` of Σ_m ‖d_i^m‖, else shared.

Model subsets (any M): model m belongs to latent i's subset when ‖d_i^m‖ ≥ margin/(1 − margin) ×
max_m' ‖d_i^m'‖; the class is ``shared`` (every model), ``<m>_only`` (one) or ``A+B`` (the names
of the subset joined by ``+``, in config order). For two models this is exactly the r convention
above (r < 0.1 ⇔ ‖d^B‖ < ‖d^A‖/9).

Origins: designated shared latents and dedicated latents have their class **by construction**
(tied decoder; zero decoder into the other models); free latents' classes are **emergent**.
With several sites per model, ‖d_i^m‖ is over all of model m's sites; :func:`site_classes` gives
the class per site (layer) from the per-site norms.
"""

from __future__ import annotations

import torch

from crossdiff.crosscoder.model import Crosscoder
from crossdiff.crosscoder.synthetic import SHARED, only, subset_class

DESIGNATED, DEDICATED, FREE = "designated", "dedicated", "free"
"""Origins of a latent: the tied shared block, a dedicated block, or the free latents."""
BY_CONSTRUCTION, EMERGENT = "by construction", "emergent"


@torch.no_grad()
def latent_decoder_norms(model: Crosscoder) -> torch.Tensor:
    """``[L, M]`` ‖d_i^m‖ in the crosscoder's normalised space (float64, on the CPU).

    The one source of decoder norms for classes, relative norms and latent scaling."""
    return model.decoder_norms().detach().double().cpu()


def relative_decoder_norm(model: Crosscoder) -> torch.Tensor:
    """``[L]`` r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖) for the first two models."""
    norms = latent_decoder_norms(model)
    return norms[:, 1] / (norms[:, 0] + norms[:, 1]).clamp_min(1e-30)


def latent_classes(model: Crosscoder, margin: float = 0.1) -> list[str]:
    """Class of every latent: ``shared`` or ``<model>_only`` (see the module docstring)."""
    norms = latent_decoder_norms(model)
    share = norms / norms.sum(dim=1, keepdim=True).clamp_min(1e-30)
    best = share.argmax(dim=1)
    names = model.cfg.models
    return [
        only(names[int(b)]) if float(share[i, b]) > 1 - margin else SHARED
        for i, b in enumerate(best)
    ]


def subsets_from_norms(
    norms_LM: torch.Tensor, models: tuple[str, ...], margin: float = 0.1
) -> list[str]:
    """Model-subset class of every row of ``[L, M]`` decoder norms (see the module docstring);
    ``dead`` for a latent whose decoder is zero everywhere."""
    ratio = margin / (1 - margin)
    top_L = norms_LM.max(dim=1, keepdim=True).values
    member_LM = norms_LM >= ratio * top_L
    out = []
    for i in range(norms_LM.shape[0]):
        if float(top_L[i]) <= 0:
            out.append("dead")
            continue
        keep = member_LM[i].tolist()
        out.append(subset_class([m for m, k in zip(models, keep, strict=True) if k], models))
    return out


def latent_subsets(model: Crosscoder, margin: float = 0.1) -> list[str]:
    """Model-subset class of every latent (``shared``, ``<m>_only`` or ``A+B``)."""
    return subsets_from_norms(latent_decoder_norms(model), model.cfg.models, margin)


def site_classes(model: Crosscoder, margin: float = 0.1) -> dict[str, list[str]]:
    """Site -> the model-subset class of every latent from its decoder norms at that site alone
    (each model's block for the site); one entry ``""`` for a single-site crosscoder."""
    by_input = model.decoder_norms_by_input().detach().double().cpu()
    sites = model.cfg.sites or ("",)
    out = {}
    for site in sites:
        cols = [i for i, (_, _, s, _) in enumerate(model.cfg.inputs) if (s or "") == site]
        out[site] = subsets_from_norms(by_input[:, cols], model.cfg.models, margin)
    return out


def latent_origins(model: Crosscoder) -> list[str]:
    """``designated``, ``dedicated`` or ``free`` for every latent (layout order)."""
    cfg = model.cfg
    origins = [DESIGNATED] * cfg.n_shared
    for start, stop in cfg.dedicated_ranges:
        origins += [DEDICATED] * (stop - start)
    return origins + [FREE] * cfg.n_free


def class_table(
    model: Crosscoder, alive_L: torch.Tensor | None = None, margin: float = 0.1
) -> dict:
    """Counts of live latents per model-subset class, split into ``by construction``
    (designated shared, dedicated) and ``emergent`` (free latents)."""
    subsets = latent_subsets(model, margin)
    origins = latent_origins(model)
    alive = [True] * len(subsets) if alive_L is None else (alive_L > 0).tolist()
    table: dict[str, dict[str, int]] = {BY_CONSTRUCTION: {}, EMERGENT: {}}
    for cls, origin, live in zip(subsets, origins, alive, strict=True):
        if not live:
            continue
        kind = EMERGENT if origin == FREE else BY_CONSTRUCTION
        table[kind][cls] = table[kind].get(cls, 0) + 1
    return table


class LatentScalingSums:
    """Running sums of latent scaling (Wang et al. 2025, in the normalised space): for latent i
    and model m, β_i^m = Σ_t f_i(t)·⟨x̃_m(t) − x̂_m(t) + f_i(t)·d_i^m, u_i^m⟩ / Σ_t f_i(t)², with
    u_i^m = d_i^m/‖d_i^m‖ and x̃ − x̂ the normalised residual over all of model m's sites: how much
    of model m's activation the latent's direction explains beside the rest of the code.

    One accumulator for every consumer (the ``feature_classes`` analysis, the report's
    explorer); feed it each batch's latents and reconstruction with :meth:`add`."""

    def __init__(self, crosscoder: Crosscoder) -> None:
        self.crosscoder = crosscoder
        self.norms_LM = latent_decoder_norms(crosscoder)
        W_dec_LC = crosscoder.decoder_weights().detach().double().cpu()
        parts = torch.split(W_dec_LC, list(crosscoder.cfg.widths), dim=1)
        self.units = [p / p.norm(dim=1, keepdim=True).clamp_min(1e-30) for p in parts]
        self.scales_I = crosscoder.input_scale_M.detach().double().cpu()
        n_latents, n_models = crosscoder.cfg.dict_size, len(crosscoder.cfg.models)
        self.numerator_LM = torch.zeros(n_latents, n_models, dtype=torch.float64)
        self.denominator_L = torch.zeros(n_latents, dtype=torch.float64)

    @torch.no_grad()
    def add(
        self,
        acts: dict[str, torch.Tensor],
        recon: dict[str, torch.Tensor],
        f_BL: torch.Tensor,
    ) -> None:
        """Add a batch: its activations and reconstruction (input key -> ``[B, D]``, the
        models' own units) and its inference latents ``f_BL``."""
        f_BL = f_BL.double().cpu()
        f2_L = (f_BL**2).sum(0)
        self.denominator_L += f2_L
        inputs = self.crosscoder.cfg.inputs  # (key, model index, site, width), model-major
        for m in range(len(self.crosscoder.cfg.models)):
            residual_BD = torch.cat(
                [
                    (acts[key].double().cpu() - recon[key].double().cpu()) * self.scales_I[i]
                    for i, (key, owner, _, _) in enumerate(inputs)
                    if owner == m
                ],
                dim=1,
            )
            along_BL = residual_BD @ self.units[m].T
            self.numerator_LM[:, m] += (f_BL * along_BL).sum(0) + f2_L * self.norms_LM[:, m]

    def beta(self) -> torch.Tensor:
        """``[L, M]`` β_i^m so far (0 for a latent that never fired)."""
        return self.numerator_LM / self.denominator_L[:, None].clamp_min(1e-30)

    def scaled_ratio(self) -> torch.Tensor:
        """``[L]`` ν = β^B / (β^A + β^B) of the first two models (β clamped at 0); NaN where a
        latent never fired."""
        beta = (self.numerator_LM[:, :2] / self.denominator_L[:, None]).clamp_min(0)
        return beta[:, 1] / (beta[:, 0] + beta[:, 1])
