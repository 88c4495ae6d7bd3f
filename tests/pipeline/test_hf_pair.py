"""Two Hugging Face models loaded by path (examples/hf_pair.py): the report says what they are.

Architecture, parameters and held-out losses are checked against independent computations on
the saved models (their own parameter tensors, transformers' own loss), not against themselves.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def load_example():
    spec = importlib.util.spec_from_file_location("hf_pair", ROOT / "examples" / "hf_pair.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_two_hf_models_by_path_show_architecture_parameters_and_losses(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from crossdiff.corpus import load_sequences

    example = load_example()
    summary = example.main(tmp_path, steps=60, documents=12)
    models = summary["models"]
    assert models["dense"]["arch"] == "dense" and models["moe"]["arch"] == "moe"
    assert models["dense"]["architecture"] == "Qwen2ForCausalLM (qwen2)"
    assert models["moe"]["architecture"] == "Qwen2MoeForCausalLM (qwen2_moe)"
    validation = load_sequences(tmp_path / "run" / "corpus")["validation"]
    for name in ("dense", "moe"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "models" / name).eval()
        total = sum(p.numel() for p in model.parameters())
        routed = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
        config = model.config
        unused = routed * (config.num_experts - config.num_experts_per_tok) // config.num_experts \
            if name == "moe" else 0  # fmt: skip
        assert routed > 0 if name == "moe" else routed == 0
        assert models[name]["total_params"] == total
        assert models[name]["active_params"] == total - unused
        for domain, loss in models[name]["val_loss"].items():
            rows = torch.as_tensor(validation.of_domain(domain)[:32], dtype=torch.long)
            with torch.no_grad():
                expected = float(model(rows, labels=rows).loss)  # mean over every prediction
            assert loss == pytest.approx(expected, abs=1e-4), (name, domain)
        assert models[name]["tokens_seen"] is None
    assert models["moe"]["active_params"] < models["moe"]["total_params"]

    page = (tmp_path / "run" / "report" / "report.html").read_text()
    models_table = page.split("<table id='models'>")[1].split("</table>")[0]
    for text in ("Qwen2MoeForCausalLM (qwen2_moe)", "not recorded (given by path)",
                 f"{models['moe']['active_params']:,}", "held-out loss, code"):  # fmt: skip
        assert text in models_table
    assert "–</td><td class='num'>–" not in models_table  # nothing left blank
    claims = [c for c in summary["claims"] if c["source"] == "seed paper"]
    assert len(claims) == 3  # judged or said to be not testable, never left out
    if any(not 0 <= v <= 1 for v in summary["crosscoder"]["ce_recovered"].values()):
        assert "id='ce-outside'" in page
    else:
        assert "id='ce-outside'" not in page
    assert json.loads((tmp_path / "run" / "pipeline.json").read_text()).keys() >= {"report"}
