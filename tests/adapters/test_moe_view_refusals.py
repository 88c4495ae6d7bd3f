"""The MoE view never fails silently: every case that once gave a wrong answer without a word now
gives the right one (tested in test_moe_view) or a one-line error naming the module or value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossdiff.adapters import adapt
from crossdiff.errors import ConfigError, StageError
from crossdiff.plugins import create_plugin_manager
from crossdiff.store import harvest, open_store, store_alignments
from tests.adapters.conftest import Case, get_case
from tests.adapters.tiny_models import hf_model
from tests.store.conftest import CONFIG, SITES
from tests.store.store_helpers import VOCAB, make_sequences, pair


def _adapt(model: torch.nn.Module):
    return adapt(model, create_plugin_manager())


def test_a_shared_mlp_beside_the_block_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"model\.layers\.0 has 'shared_mlp'.*refusing"):
        _adapt(hf_model("granitemoeshared"))


class _Selector(torch.nn.Module):
    """An MoE block of a layout no view reads: ``experts`` chosen by a ``selector``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.selector = torch.nn.Linear(d, 3)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts[0](x)


def test_an_unknown_router_layout_names_the_class_and_the_plugin_docs() -> None:
    model = hf_model("mixtral")
    model.model.layers[1].mlp = _Selector(model.config.hidden_size)
    with pytest.raises(ConfigError) as error:
        _adapt(model)
    message = str(error.value)
    assert "model.layers.1.mlp is a _Selector" in message and "docs/plugins.md" in message
    assert "\n" not in message


def test_an_unread_part_of_a_known_block_is_refused_by_name() -> None:
    model = hf_model("mixtral")
    model.model.layers[2].mlp.always_on = torch.nn.Linear(4, 4)
    with pytest.raises(ConfigError, match=r"model\.layers\.2\.mlp .* part 'always_on' \(Linear\)"):
        _adapt(model)


def test_a_block_whose_output_is_not_the_weighted_sum_is_refused() -> None:
    model = hf_model("olmoe")
    adapter = _adapt(model)
    experts = model.model.layers[0].mlp.experts
    plain = experts.forward
    experts.forward = lambda *args, **kwargs: 2 * plain(*args, **kwargs)  # not what is read
    tokens = torch.randint(3, 90, (1, 6))
    with pytest.raises(ConfigError, match=r"MoE block model\.layers\.0\.mlp .* miss the block"):
        adapter.expert_outputs(tokens, 0)


@pytest.mark.parametrize("name", ["mixtral", "phimoe", "granitemoe", "hunyuan_v1_moe", "tl_moe"])
def test_out_of_range_experts_and_empty_layer_lists_are_errors(name: str) -> None:
    adapter = get_case(name).adapter
    tokens = torch.randint(3, 90, (1, 6))
    layer = adapter.moe_layers()[0]
    n = adapter.n_experts(layer)
    for bad in (99, -1, n):
        with pytest.raises(ConfigError, match=rf"ablate_expert={bad} is out of range: .* \(0\.\."):
            adapter.forward_restricted(tokens, layer, ablate_expert=bad)
    with pytest.raises(ConfigError, match="ablate_expert=99"):
        adapter.forward_restricted(tokens, None, ablate_expert=99)
    with pytest.raises(ConfigError, match="an empty layer list was given"):
        adapter.routing(tokens, [])


def test_a_dense_model_raises_config_errors_in_every_adapter(dense_case: Case) -> None:
    adapter = dense_case.adapter
    tokens = torch.randint(3, 90, (1, 6))
    with pytest.raises(ConfigError, match="no MoE layers to route"):
        adapter.routing(tokens)
    with pytest.raises(ConfigError, match="no MoE layers to route"):
        adapter.forward_restricted(tokens, keep_top_n=1)
    with pytest.raises(ConfigError, match="layer 0 is not an MoE layer"):
        adapter.n_experts(0)


def test_the_harvests_alignment_is_recorded_and_read_back(tmp_path) -> None:
    alignment = np.roll(np.arange(VOCAB), 5)
    out = tmp_path / "store"
    harvest(pair(), SITES, make_sequences(n=8), out, CONFIG, alignments={"moe": alignment})
    info = open_store(out)
    record = info.manifest["config"]["models"]["moe"]["alignment"]
    assert record["file"] == "alignments/moe.npy" and len(record["sha256"]) == 64
    assert "alignment" not in info.manifest["config"]["models"]["dense"]
    read = store_alignments(info)
    assert list(read) == ["moe"] and np.array_equal(read["moe"], alignment)
    # another alignment is a change of settings, not a silent resume
    with pytest.raises(StageError, match="harvested with different settings"):
        harvest(
            pair(), SITES, make_sequences(n=8), out, CONFIG, alignments={"moe": alignment[::-1]}
        )
    (out / "alignments" / "moe.npy").write_bytes(b"not it")
    with pytest.raises(StageError, match="is not the alignment model 'moe' was harvested with"):
        store_alignments(info)
