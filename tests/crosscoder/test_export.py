"""The exported sae-lens SAE equals the crosscoder applied to one model's activations alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sae_lens import SAE

from crossdiff.crosscoder import TrainConfig
from crossdiff.crosscoder.export import export_sae_lens
from crossdiff.crosscoder.train import train
from crossdiff.errors import ConfigError

from .conftest import planted, small_crosscoder


@pytest.mark.parametrize(("dims", "n_shared", "rank"), [((12, 20), 0, True), ((12, 12), 6, False)])
def test_exported_sae_encodes_and_decodes_like_the_crosscoder_alone(
    tmp_path: Path, dims: tuple[int, int], n_shared: int, rank: bool
) -> None:
    source = planted(d=dims, noise=0.05)
    model = small_crosscoder(d_models=dims, n_shared=n_shared, rank_by_decoder_norm=rank)
    train(model, source.batches(64, 60, seed=0), TrainConfig(steps=60, lr=3e-3, warmup_steps=5))
    assert float(model.threshold) > 0 and not torch.allclose(model.input_scale_M, torch.ones(2))
    held_out = source.sample(400, torch.Generator().manual_seed(3))[0]
    for name in model.cfg.models:
        sae = SAE.load_from_disk(export_sae_lens(model, name, tmp_path / name, site="2.mlp_out"))
        alone = {n: x if n == name else torch.zeros_like(x) for n, x in held_out.items()}
        latents = model.encode(alone)
        recon = model.decode(latents)[name]
        sae_latents = sae.encode(held_out[name])
        assert (latents > 0).sum() > 100
        torch.testing.assert_close(sae_latents, latents, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(sae_latents), recon, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(held_out[name]), recon, atol=1e-5, rtol=1e-5)
        # the joint view differs: the other model's encoder term changes the code
        assert not torch.allclose(model.encode(held_out), latents, atol=1e-3)


def test_export_of_an_unknown_model_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected one of: A, B"):
        export_sae_lens(small_crosscoder(), "C", tmp_path, site="2.mlp_out")


def test_add_sae_attaches_the_export_and_splices_like_crossdiff(tmp_path: Path) -> None:
    """The export attached to the in-repo dense model by ``HookedSAETransformer.add_sae`` gives
    the loss of crossdiff's own splice of the same reconstruction (the model alone)."""
    import warnings

    from sae_lens import HookedSAETransformer
    from transformer_lens.utils import lm_cross_entropy_loss

    from crossdiff.crosscoder.evaluate import next_token_ce
    from crossdiff.models.build import build_model, hooked_config
    from crossdiff.models.config import ModelConfig
    from crossdiff_tl.adapter import TransformerLensAdapter

    config = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, vocab_size=50, n_ctx=12)
    dense = build_model(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hooked = HookedSAETransformer(hooked_config(config), move_to_device=False).eval()
    hooked.load_state_dict(dense.state_dict())
    model = small_crosscoder(d_models=(16, 16), n_shared=0, dict_size=64)
    with torch.no_grad():
        model.input_scale_M.copy_(torch.tensor([0.7, 1.3]))
        model.threshold.fill_(0.05)
    sae = SAE.load_from_disk(export_sae_lens(model, "A", tmp_path / "A", site="1.mlp_out"))
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_mlp_out"
    hooked.add_sae(sae)
    assert list(hooked.acts_to_saes) == ["blocks.1.hook_mlp_out"]  # attached, not skipped

    tokens = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    adapter = TransformerLensAdapter(dense)

    def alone(acts: torch.Tensor) -> torch.Tensor:
        flat = acts.reshape(-1, 16)
        code = model.encode({"A": flat, "B": torch.zeros_like(flat)})
        return model.decode(code)["A"].reshape(acts.shape)

    with torch.no_grad():
        ours_BPV = adapter.logits_with_replacement(tokens, "1.mlp_out", alone)
        theirs_BPV = hooked(tokens)
        clean_BPV = adapter.logits(tokens)
    # the splice moves the logits, so agreeing to 1e-5 means the SAE sat at the same place
    assert (ours_BPV - clean_BPV).abs().max() > 1e-2
    torch.testing.assert_close(theirs_BPV, ours_BPV, atol=1e-5, rtol=1e-5)
    ours = next_token_ce(ours_BPV, tokens)
    assert float(lm_cross_entropy_loss(theirs_BPV, tokens)) == pytest.approx(ours, abs=1e-6)


def test_an_export_with_no_site_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"site='2\.mlp_out'"):
        export_sae_lens(small_crosscoder(), "A", tmp_path)
