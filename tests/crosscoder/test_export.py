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
        sae = SAE.load_from_disk(export_sae_lens(model, name, tmp_path / name))
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
        export_sae_lens(small_crosscoder(), "C", tmp_path)
