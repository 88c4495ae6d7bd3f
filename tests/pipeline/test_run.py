"""``crossdiff run`` end to end at a tiny setting: every stage, the report, and the rerun skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossdiff.cli import main
from crossdiff.errors import ConfigError
from crossdiff.pipeline import load_run_config, run_pipeline

ANALYSES = (
    "corpus_stats", "feature_classes", "density", "dashboards",
    "routing", "expert_alignment", "early_decoding",
)  # fmt: skip

TINY_RUN = """
name = "tiny test run"
analyses = [
    "corpus_stats", "feature_classes", "density", "dashboards",
    "routing", "expert_alignment", "early_decoding", "routing_similarity",
]

[corpus]
max_documents_per_domain = 40
vocab_size = 512
tokenizer_chars_per_domain = 200_000
context_length = 32

[models.dense]
arch = "dense"
preset = "tiny"
model = { n_layers = 2, d_model = 32, n_heads = 2, d_mlp = 64 }
train = { tokens = 40_000, batch_size = 16, eval_every = 0, checkpoint_every = 0 }

[models.moe]
arch = "moe"
preset = "tiny"
model = { n_layers = 2, d_model = 32, n_heads = 2, d_mlp = 64, num_experts = 4 }
train = { tokens = 40_000, batch_size = 16, eval_every = 0, checkpoint_every = 0 }

[harvest]
site = "1.mlp_out"
train_sequences = 256
validation_sequences = 64
batch_sequences = 16
shard_sequences = 64

[crosscoder]
expansion = 4
k = 8
n_shared = 16
steps = 300
batch_size = 256
dead_tokens = 20_000
ce_sequences = 8
progress = false
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    config_path = root / "tiny.toml"
    config_path.write_text(TINY_RUN)
    assert main(["run", str(config_path), "--out", str(root / "out")]) == 0
    return root


@pytest.mark.slow
def test_run_writes_the_documented_summary_keys(tiny_run: Path) -> None:
    summary = json.loads((tiny_run / "out" / "report" / "summary.json").read_text())
    for name in ("dense", "moe"):
        assert summary["models"][name]["active_params"] > 0
        assert set(summary["models"][name]["val_loss"]) == {"code", "science", "stories"}
        assert 0 < summary["crosscoder"]["fve"][name] <= 1
        assert name in summary["crosscoder"]["ce_recovered"]
    assert 0 < summary["crosscoder"]["fve"]["pooled"] <= 1
    assert summary["crosscoder"]["l0"] > 0
    assert 0 <= summary["crosscoder"]["dead_fraction"] <= 1
    assert set(summary["features"]["counts"]) == {"shared", "dense_only", "moe_only"}
    assert "shared" in summary["density"]["median"]
    html = (tiny_run / "out" / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "assets/circuitsvis.js" in html
    assert (tiny_run / "out" / "report" / "assets" / "circuitsvis.js").is_file()
    assert summary["warnings"] == []  # every input of the report was read
    assert json.loads((tiny_run / "out" / "report" / "manifest.json").read_text())["complete"]


@pytest.mark.slow
def test_the_moe_analyses_run_on_the_in_repo_moe(tiny_run: Path) -> None:
    out = tiny_run / "out"
    moe = json.loads((out / "report" / "summary.json").read_text())["moe"]
    domains = {"code", "science", "stories"}
    routing = moe["routing"]["moe"]
    assert set(routing) == {"0", "1"}
    for layer in routing.values():
        assert layer["uniform_share"] == 0.5
        assert set(layer) == {"uniform_share", "uniform_experts_for_half", "all", *domains}
        assert 1 <= layer["all"]["experts_for_half"] <= 4 and 0 < layer["all"]["entropy"] <= 1
        assert layer["uniform_experts_for_half"] == 2  # E = 4
        for domain in domains:
            assert 0 <= layer[domain]["top_share_elsewhere"] <= 1 and layer[domain]["tokens"] > 0
    early = moe["early_decoding"]["moe"]
    assert set(early["cosine"]) == {"0", "1"} and set(early["perplexity"]) == domains
    for layer in early["cosine"].values():
        assert layer["2"]["contribution"] == pytest.approx(1.0, abs=1e-6)
        assert layer["2"]["hidden"] == pytest.approx(1.0, abs=1e-6)
        assert -1 <= layer["1"]["contribution"] < 1
    for layer, baseline in early["no_routed_experts"].items():
        assert -1 <= baseline["hidden"] < early["cosine"][layer]["2"]["hidden"]
        assert baseline["lens_kl"] > early["cosine"][layer]["2"]["lens_kl"]
    for values in early["perplexity_increase"].values():
        assert values["2"] == 0.0
    alignment = moe["expert_alignment"]["moe"]
    assert alignment["layer"] == 1 and len(alignment["owned"]) == 4
    assert set(alignment["specific_share"]) == {"shared", "dense_only", "moe_only"}
    similarity = moe["routing_similarity"]
    assert set(similarity["moe"]) == {"0", "1"} and similarity["cross_model"] == {}
    for layer in similarity["moe"].values():
        assert -1 <= layer["spearman_within"] <= 1 and 0 < layer["mean_direction_share"] <= 1
        assert layer["shuffled_baseline"] == pytest.approx(0.5, abs=0.05)
        assert 0 <= layer["prompt_own_continuation"] <= 1
        assert (
            layer["pairs_within"] > 0
            and len(layer["prompt_advantages"]) == layer["distinct_prompts"]
        )
    claims = json.loads((out / "report" / "summary.json").read_text())["claims"]
    assert len(claims) >= 8
    for claim in claims:
        assert claim["verdict"] in {"holds", "does not hold", "not testable"}
        assert (claim["p_value"] is None) == (claim["p_adjusted"] is None)
        if claim["p_value"] is not None:
            assert claim["p_adjusted"] >= claim["p_value"]
    figures = {p.stem for p in (out / "analyses").glob("*/*.png")}
    assert {"routing_moe", "cosine_vs_n_moe", "perplexity_vs_n_moe", "lift_matrix_moe"} <= figures
    assert {"similarity_overlap_moe", "collapse_moe"} <= figures
    html = (out / "report" / "report.html").read_text()
    for title in ("Routing", "Early decoding", "Expert alignment"):
        assert f">{title}</h2>" in html


@pytest.mark.slow
def test_a_dense_model_given_to_an_moe_analysis_is_named(tiny_run: Path) -> None:
    from crossdiff_analyses._moe import moe_adapters

    dense = str(tiny_run / "out" / "models" / "dense")
    with pytest.raises(ConfigError, match=r"no Mixture-of-Experts model .*\['dense'\]"):
        moe_adapters({"dense": dense})
    with pytest.raises(ConfigError, match=r"model 'dense' is dense \(no MoE layers\)"):
        moe_adapters({"dense": dense}, ["dense"])


@pytest.mark.slow
def test_the_run_report_renders_in_headless_chromium(tiny_run: Path) -> None:
    from tests.report.browser import open_in_chromium

    seen = open_in_chromium(tiny_run / "out" / "report" / "report.html", "report-run.png")
    assert seen.errors == []
    assert len(seen.image_widths) >= 3 and all(width > 0 for width in seen.image_widths)
    # token views live in the latent cards: tests/report/test_report_browser.py opens one


@pytest.mark.slow
def test_rerun_skips_every_finished_stage(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    config = load_run_config(tiny_run / "tiny.toml")
    lines: list[str] = []
    run_pipeline(config, tiny_run / "out", log=lines.append)
    assert sum("up to date, skipped" in line for line in lines) == 6, lines


def test_typo_in_a_run_config_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TINY_RUN.replace("[harvest]\nsite", "[harvest]\nsiet"))
    with pytest.raises(ConfigError, match=r"harvest: unknown key 'siet' \(did you mean 'site'\?\)"):
        load_run_config(path)


def test_unknown_analysis_is_named_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TINY_RUN.replace('"density",', '"densty",'))
    with pytest.raises(
        ConfigError, match=r"unknown analysis 'densty' \(did you mean 'density'\?\)"
    ):
        run_pipeline(load_run_config(path), tmp_path / "out")
    assert not (tmp_path / "out" / "corpus").exists()


@pytest.mark.slow
def test_the_python_api_example_reads_the_same_run(tiny_run: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"
    result = subprocess.run(
        [sys.executable, str(script), str(tiny_run / "out"), str(tiny_run / "tiny.toml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "up to date, skipped" in result.stdout
    assert "FVE:" in result.stdout and "dense_only_vs_shared" in result.stdout


@pytest.mark.slow
def test_the_lambda_sweep_example_trains_each_point_and_prints_the_table(tiny_run: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "examples" / "lambda_sweep.py"
    command = [sys.executable, str(script), str(tiny_run / "out"), str(tiny_run / "tiny.toml"),
               "--lambdas", "0,1", "--steps", "100"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    points = json.loads((tiny_run / "out" / "sweeps" / "lambda" / "sweep.json").read_text())
    assert [p["lambda"] for p in points] == [0.0, 1.0]
    for p in points:
        assert p["fve"]["dense"] <= 1 and sum(p["counts"].values()) > 0
    # no exclusive latent without the decoder-norm sparsity term; some with a large λ
    assert points[0]["counts"]["dense_only"] + points[0]["counts"]["moe_only"] == 0
    assert "| 0 |" in result.stdout and "| 1 |" in result.stdout
    rerun = subprocess.run(command, capture_output=True, text=True)  # finished points skipped
    assert rerun.returncode == 0 and rerun.stdout == result.stdout


@pytest.mark.slow
def test_a_copied_run_finishes_from_its_own_files(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    original = tmp_path / "original"
    shutil.copytree(tiny_run / "out", original)
    for stage in ("crosscoder", "analyses", "report"):  # the stages left to run
        shutil.rmtree(original / stage)
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(original, moved)
    shutil.rmtree(original)  # nothing may be read from where the run was made
    lines: list[str] = []
    run_pipeline(load_run_config(tiny_run / "tiny.toml"), moved, log=lines.append)
    assert sum("up to date, skipped" in line for line in lines) == 3, lines
    reference = tiny_run / "out"
    for name in ["crosscoder/metrics.json", *(f"analyses/{a}/summary.json" for a in ANALYSES)]:
        assert json.loads((moved / name).read_text()) == json.loads((reference / name).read_text())
    assert json.loads((moved / "crosscoder/metrics.json").read_text())["ce_recovered"]["moe"]
    shutil.rmtree(moved / "analyses" / "density")
    assert main(["analyze", "density", "--run", str(moved)]) == 0
    summary = "analyses/density/summary.json"
    assert json.loads((moved / summary).read_text()) == json.loads(
        (reference / summary).read_text()
    )


@pytest.mark.slow
def test_a_rerun_with_other_crosscoder_settings_refuses_without_overwrite(
    tiny_run: Path, tmp_path: Path
) -> None:
    from crossdiff.errors import SettingsChangedError

    path = tmp_path / "changed.toml"
    path.write_text(TINY_RUN.replace("steps = 300", "steps = 200"))
    before = (tiny_run / "out" / "crosscoder" / "metrics.json").read_bytes()
    with pytest.raises(SettingsChangedError, match=r"stage\.steps: 300 -> 200.*--overwrite"):
        run_pipeline(load_run_config(path), tiny_run / "out", log=lambda line: None)
    assert (tiny_run / "out" / "crosscoder" / "metrics.json").read_bytes() == before


def test_run_until_a_stage_stops_after_it_and_a_later_run_goes_on(tmp_path: Path) -> None:
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY_RUN.replace("per_domain = 40", "per_domain = 8"))
    out = tmp_path / "out"
    assert main(["run", str(config_path), "--out", str(out), "--until", "corpus"]) == 0
    assert json.loads((out / "pipeline.json").read_text()).keys() == {"corpus"}
    assert (out / "corpus").is_dir() and not (out / "models").exists()
    assert not (out / "report").exists()
    with pytest.raises(SystemExit):  # argparse names the valid stages
        main(["run", str(config_path), "--out", str(out), "--until", "harvests"])


def test_run_pipeline_names_an_unknown_until_stage(tmp_path: Path) -> None:
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY_RUN)
    with pytest.raises(ConfigError, match=r"'harvests'.*harvest"):
        run_pipeline(load_run_config(config_path), tmp_path / "out", until="harvests")


@pytest.mark.slow
def test_altered_bytes_in_a_finished_run_are_named_not_used(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 25: altered shard bytes (header intact) used to leave every stage "up to date"."""
    import shutil

    from crossdiff.verify import forget_verified

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "out", run)
    shard = run / "activations" / "validation" / "shards" / "shard-000000.safetensors"
    intact = shard.read_bytes()
    data = bytearray(intact)
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    shard.write_bytes(bytes(data))
    forget_verified()
    capsys.readouterr()
    assert main(["analyze", "density", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(shard) in err and "checksum differs" in err and err.count("\n") == 1, err
    assert main(["run", str(tiny_run / "tiny.toml"), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err  # `run` is not "up to date" on altered bytes: a named error
    assert str(shard) in err and "--repair" in err and err.count("\n") == 1, err
    forget_verified()
    lines: list[str] = []
    with pytest.warns(UserWarning, match=r"shard-000000\.safetensors.*damaged"):
        run_pipeline(load_run_config(tiny_run / "tiny.toml"), run, log=lines.append, repair=True)
    assert "[3/6] harvest: running" in lines, lines  # not "up to date": it redid the shard
    assert shard.read_bytes() == intact
    weights = run / "models" / "dense" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + bytes(16))
    forget_verified()
    assert main(["run", str(tiny_run / "tiny.toml"), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "checksum differs" in err and "--overwrite" in err, err
