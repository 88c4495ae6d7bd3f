"""``examples/paper.toml`` end to end, offline, at a tiny setting.

Its ``hf:`` sources are pointed at local data set directories (made here with ``datasets``'
``save_to_disk``, with the column and split each spec names) and its hub tokenizer at a local
tokenizer directory (a tiny byte-level BPE saved with ``save_pretrained``); sizes and steps are
shrunk with ``--set``. Everything else is the recipe's own settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossdiff.cli import main
from crossdiff.config import load_toml
from crossdiff.corpus import load_tokenizer
from crossdiff.corpus.sources import HF_OPTIONS
from crossdiff.plugins import create_plugin_manager
from crossdiff.stages import read_manifest
from crossdiff.store import open_store
from tests.corpus.test_streaming import local_bpe_tokenizer, saved_dataset

PAPER = Path(__file__).resolve().parents[2] / "examples" / "paper.toml"
BUILT_IN = {"stories": "stories", "science": "science", "code": "code"}

TINY = [
    "corpus.context_length=32",
    "corpus.max_train_tokens_per_domain=20_000",
    "corpus.max_val_tokens_per_domain=2_000",
    "corpus.val_fraction=0.1",
    "models.dense.model={ n_layers = 2, d_model = 32, n_heads = 2, d_mlp = 64 }",
    "models.moe.model={ n_layers = 2, d_model = 32, n_heads = 2, d_mlp = 64, num_experts = 4 }",
    "models.dense.train={ tokens = 10_000, batch_size = 16, eval_every = 0, "
    "checkpoint_every = 0, eval_sequences_per_domain = 4 }",
    "models.moe.train={ tokens = 10_000, batch_size = 16, eval_every = 0, "
    "checkpoint_every = 0, eval_sequences_per_domain = 4 }",
    "harvest.site=1.mlp_out",
    "harvest.train_sequences=64",
    "harvest.validation_sequences=32",
    "harvest.shard_sequences=64",
    "crosscoder.expansion=4",
    "crosscoder.k=8",
    "crosscoder.n_shared=16",
    "crosscoder.steps=40",
    "crosscoder.batch_size=128",
    "crosscoder.dead_tokens=5_000",
    "crosscoder.checkpoint_every=20",
    "crosscoder.ce_sequences=4",
    "crosscoder.progress=false",
]


def _texts(domain: str, count: int) -> list[str]:
    """Real text of a domain from the built-in offline sources (standing in for the hub's)."""
    from crossdiff.corpus.build import available_sources

    source = available_sources(create_plugin_manager())[BUILT_IN[domain]]
    texts = []
    for document in source.documents():
        texts.append(document.text[:4000])
        if len(texts) == count:
            return texts
    return texts


@pytest.mark.slow
def test_the_paper_recipe_runs_offline_on_local_hf_directories(tmp_path: Path) -> None:
    recipe = load_toml(PAPER)
    specs = recipe["corpus"]["sources"]
    assert set(specs) == {"stories", "science", "code"}
    assert recipe["corpus"]["tokenizer"].startswith("hf:")
    overrides = list(TINY)
    all_texts = []
    for domain, spec in specs.items():
        body, _, query = spec[len("hf:") :].partition("?")
        name, split, column = body.split(":")
        assert all(option.split("=")[0] in HF_OPTIONS for option in query.split("&") if option)
        texts = _texts(domain, 30)
        all_texts += texts
        local = saved_dataset(tmp_path / "data" / domain, column, texts, split=split)
        overrides.append(f"corpus.sources.{domain}={spec.replace(name, str(local), 1)}")
    tokenizer_dir = local_bpe_tokenizer(tmp_path / "tokenizer", all_texts)
    overrides.append(f"corpus.tokenizer=hf:{tokenizer_dir}")

    out = tmp_path / "run"
    args = ["run", str(PAPER), "--out", str(out), "--no-progress"]
    assert main([*args, *(f"--set={o}" for o in overrides)]) == 0

    corpus = read_manifest(out / "corpus")
    for domain in specs:
        assert str(tmp_path / "data" / domain) in corpus["stats"]["domains"][domain]["source"]
        assert corpus["stats"]["domains"][domain]["documents"]["train"] >= 10
    used = load_tokenizer(out / "corpus" / "tokenizer")
    assert used.get_vocab() == load_tokenizer(tokenizer_dir).get_vocab()
    store = open_store(out / "activations" / "train")
    assert store.dtype == "bf16"  # the recipe's own harvest settings
    assert store.manifest["config"]["record"]["model_dtype"] == "bf16"
    assert store.tokens == 64 * 31
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert set(summary["models"]) == {"dense", "moe"}
    assert summary["name"] == "paper (GPU)"
    assert (out / "report" / "report.html").is_file()


def test_overrides_set_typed_values_and_refuse_bad_forms(tmp_path: Path) -> None:
    from crossdiff.errors import ConfigError
    from crossdiff.pipeline import load_run_config

    config = load_run_config(
        PAPER,
        [
            "crosscoder.steps=12",
            "corpus.sources.stories=hf:/data/tales:train:story",
            "models.dense.train={ tokens = 1000 }",
            "harvest.model_dtype=fp32",
            "analyses=['density']",
        ],
    )
    assert config.crosscoder.steps == 12 and config.crosscoder.k == 300
    assert config.corpus.sources["stories"] == "hf:/data/tales:train:story"
    assert config.corpus.sources["code"].startswith("hf:bigcode/")  # the others are kept
    assert config.models["dense"].train == {"tokens": 1000}
    assert config.harvest.model_dtype == "fp32" and config.analyses == ("density",)
    with pytest.raises(ConfigError, match=r"not of the form DOTTED\.KEY=VALUE"):
        load_run_config(PAPER, ["crosscoder..steps=1"])
    with pytest.raises(ConfigError, match="'steps' is a value, not a table"):
        load_run_config(PAPER, ["crosscoder.steps.x=1"])
    with pytest.raises(ConfigError, match="stepz"):
        load_run_config(PAPER, ["crosscoder.stepz=1"])
    with pytest.raises(ConfigError, match="unknown harvest model_dtype 'fp8'"):
        load_run_config(PAPER, ["harvest.model_dtype=fp8"])


def documented_offline_command() -> list[str]:
    """The offline paper-recipe command of docs/scaling.md, as a list of arguments."""
    import re
    import shlex

    page = (PAPER.parents[1] / "docs" / "scaling.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", page, flags=re.S)
    (block,) = [b for b in blocks if "crossdiff run examples/paper.toml" in b and "--set" in b]
    return shlex.split(block.replace("\\\n", " "))


def test_the_documented_offline_command_replaces_every_hub_source() -> None:
    recipe = load_toml(PAPER)
    args = documented_offline_command()
    sets = dict(a.split("=", 1) for a in args[args.index("--set") :] if a != "--set")
    for domain, spec in recipe["corpus"]["sources"].items():
        if spec.startswith("hf:") and not spec.startswith("hf:/"):
            assert sets.get(f"corpus.sources.{domain}", "").startswith("hf:/"), domain
    assert sets["corpus.tokenizer"].startswith("hf:/")
    # one name for the local tokenizer, here and in paper.toml's own comment
    assert sets["corpus.tokenizer"] in PAPER.read_text()


@pytest.mark.slow
def test_the_documented_offline_command_runs_as_written_on_local_stand_ins(
    tmp_path: Path,
) -> None:
    args = documented_offline_command()
    assert args[:3] == ["crossdiff", "run", "examples/paper.toml"]
    local = [a.replace("/data/", f"{tmp_path}/data/") for a in args[1:]]
    local[1] = str(PAPER)
    local[local.index("--out") + 1] = str(tmp_path / "run")
    all_texts = []
    for value in local:
        key, _, spec = value.partition("=")
        if key.startswith("corpus.sources."):
            domain = key.rsplit(".", 1)[1]
            path, split, column = spec[len("hf:") :].split(":")
            texts = _texts(domain, 30)
            all_texts += texts
            saved_dataset(Path(path), column, texts, split=split)
    tokenizer = next(v for v in local if v.startswith("corpus.tokenizer="))
    local_bpe_tokenizer(Path(tokenizer.split("=hf:", 1)[1]), all_texts)
    assert main([*local, "--no-progress", *(f"--set={o}" for o in TINY)]) == 0
    summary = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
    assert summary["name"] == "paper (GPU)" and set(summary["models"]) == {"dense", "moe"}
