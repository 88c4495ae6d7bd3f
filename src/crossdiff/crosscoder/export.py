"""Export one model's slice of a crosscoder as an sae-lens SAE (JumpReLU, inference only).

The exported SAE sees model m's activations ALONE: pre = x_m·s_m·W_enc^m + b_enc, which is the
crosscoder's pre-activation with every other model's input set to zero. It differs from the
joint view, where the other models' encoder terms add to pre and so change which latents fire.
BatchTopK's score threshold ρ_i·ReLU(pre_i) > θ becomes the per-latent JumpReLU threshold θ/ρ_i,
and the input scale s_m is folded into the weights, so no normalisation is left to sae-lens.

``metadata.hook_name`` says where the SAE reads and writes, which
``HookedSAETransformer.add_sae`` needs to attach it: a TransformerLens hook name, given as is or
made from a crossdiff site name (``2.mlp_out`` -> ``blocks.2.hook_mlp_out``, the TransformerLens
adapter's naming; a crosscoder over several sites carries the site in the input key).
"""

from __future__ import annotations

from pathlib import Path

import torch

from crossdiff.crosscoder.model import Crosscoder
from crossdiff.errors import ConfigError, unknown_choice


def transformer_lens_hook(site: str) -> str:
    """The TransformerLens hook of a crossdiff site: ``L.kind`` -> ``blocks.L.hook_kind``; any
    other name (a hook name such as ``blocks.2.hook_mlp_out`` or ``hook_embed``) is kept."""
    layer, dot, kind = site.partition(".")
    if dot and layer.isdigit() and kind and "." not in kind:
        return f"blocks.{layer}.hook_{kind}"
    return site


def to_sae_lens(
    model: Crosscoder, name: str, site: str | None = None, hook_name: str | None = None
):  # -> sae_lens.JumpReLUSAE
    """The ``sae_lens.JumpReLUSAE`` equivalent to ``model`` on ``name``'s activations alone
    (``name`` an input key: a model, or ``model/site`` for a crosscoder over several sites).

    Its ``metadata.hook_name`` is ``hook_name`` if given, else the TransformerLens hook of
    ``site`` (for one site per model, the site the crosscoder was trained at, e.g. the store's
    ``2.mlp_out``) or of the site in ``name``; with none of them, a ``ConfigError``."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    keys = model.cfg.input_keys
    if name not in keys:
        raise unknown_choice("model" if not model.cfg.sites else "model/site", name, keys)
    model_name, _, own_site = name.partition("/")
    site = site or own_site or None
    if hook_name is None and site is None:
        raise ConfigError(
            f"to export {name!r} for sae-lens give its site (e.g. site='2.mlp_out') or "
            "hook_name (e.g. 'blocks.2.hook_mlp_out'): HookedSAETransformer.add_sae attaches "
            "the SAE at metadata.hook_name"
        )
    hook = hook_name or transformer_lens_hook(site)
    i = keys.index(name)
    lo, hi = model.input_offsets[i], model.input_offsets[i + 1]
    scale = float(model.input_scale_M[i])
    cfg = JumpReLUSAEConfig(
        d_in=hi - lo,
        d_sae=model.cfg.dict_size,
        dtype="float32",
        apply_b_dec_to_input=False,
        normalize_activations="none",
        metadata=SAEMetadata(
            model_name=model_name,
            hook_name=hook,
            hook_head_index=None,
            prepend_bos=False,
            crossdiff_site=site,
            crossdiff_crosscoder_models=list(model.cfg.models),
        ),
    )
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        rho_L = model.rank_weights()
        theta = float(model.threshold)
        threshold_L = torch.where(rho_L > 0, theta / rho_L.clamp_min(1e-30), torch.inf)
        sae.W_enc.copy_(model.W_enc_CL[lo:hi] * scale)
        sae.b_enc.copy_(model.b_enc_L)
        sae.threshold.copy_(threshold_L)
        sae.W_dec.copy_(model.decoder_weights()[:, lo:hi] / scale)
        sae.b_dec.copy_(model.b_dec_C[lo:hi] / scale)
    return sae


def export_sae_lens(
    model: Crosscoder,
    name: str,
    path: str | Path,
    site: str | None = None,
    hook_name: str | None = None,
) -> Path:
    """Write ``name``'s slice to ``path`` for ``sae_lens.SAE.load_from_disk(path)`` (``site``,
    ``hook_name``: where it attaches, as in :func:`to_sae_lens`)."""
    path = Path(path)
    to_sae_lens(model, name, site, hook_name).save_model(path)
    return path
