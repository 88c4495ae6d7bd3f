"""The command line: every command has --help, help is fast, errors are clean."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossdiff.cli import build_parser, main


def all_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple]:
    """Every command path of the parser, e.g. ('corpus', 'build')."""
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += all_commands(sub, (*prefix, name))
    return found


@pytest.mark.parametrize("command", all_commands(build_parser()), ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: crossdiff")
    assert len(out.splitlines()) > 3


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from crossdiff.cli import build_parser; build_parser().format_help();"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'transformer_lens', "
        "'sae_lens', 'nnsight') if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]"


def test_bad_input_is_one_clean_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["corpus", "build", "--out", str(tmp_path / "c"), "--context-length", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("crossdiff: error: context_length 1 is invalid")
    assert "Traceback" not in err
    assert main(["corpus", "stats", str(tmp_path)]) == 2
    assert "not a corpus stage directory" in capsys.readouterr().err


def test_config_file_with_a_typo_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "corpus.toml"
    config.write_text("vocab_sise = 300\n")
    assert main(["corpus", "build", "--out", str(tmp_path / "c"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'vocab_sise' (did you mean 'vocab_size'?)" in err


def test_analysis_needing_a_missing_stage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", "corpus_stats", "--run", str(tmp_path)]) == 2
    assert "stage 'corpus' has no finished output" in capsys.readouterr().err
    assert main(["analyze", "corpus_stat", "--run", str(tmp_path)]) == 2
    assert "did you mean 'corpus_stats'" in capsys.readouterr().err


def test_corpus_stats_and_analysis_on_a_built_corpus(
    small_corpus: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["corpus", "stats", str(small_corpus)]) == 0
    out = capsys.readouterr().out
    for domain in ("code", "science", "stories"):
        assert domain in out
    assert main(["analyze", "corpus_stats", "--run", str(small_corpus.parent)]) == 0
    figure = small_corpus.parent / "analyses" / "corpus_stats" / "tokens_per_domain.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_entry_point_runs() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "crossdiff", "--version"], capture_output=True, text=True, env=env
    )
    assert result.stdout.startswith("crossdiff ")


def test_train_crosscoder_offers_every_stage_setting_and_passes_it_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import dataclasses

    from crossdiff.crosscoder import stage

    seen = {}

    def fake_stage(store, out, config, **kwargs):
        seen["config"] = config
        return {}

    monkeypatch.setattr(stage, "train_crosscoder_stage", fake_stage)
    fields = [f.name for f in dataclasses.fields(stage.CrosscoderStageConfig)]
    args = ["train-crosscoder", "--acts", str(tmp_path), "--out", str(tmp_path / "o")]
    main([*args, "--sparsity-coeff", "0.25", "--aux-coeff", "0.5", "--k-start", "40"])
    config = seen["config"]
    assert (config.sparsity_coeff, config.aux_coeff, config.k_start) == (0.25, 0.5, 40.0)
    assert config.dead_tokens == stage.CrosscoderStageConfig().dead_tokens  # dataclass default
    help_text = build_parser()._subparsers._group_actions[0].choices["train-crosscoder"]
    flags = {option for action in help_text._actions for option in action.option_strings}
    missing = [n for n in fields if n != "progress" and f"--{n.replace('_', '-')}" not in flags]
    assert missing == []


def test_train_crosscoder_reads_a_config_file_and_flags_override_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from crossdiff.crosscoder import stage

    seen = {}

    def fake_stage(store, out, config, **kwargs):
        seen["config"], seen["overwrite"] = config, kwargs["overwrite"]
        return {}

    monkeypatch.setattr(stage, "train_crosscoder_stage", fake_stage)
    config = tmp_path / "cc.toml"
    config.write_text("steps = 77\nlr = 0.002\nn_shared = 8\n")
    args = ["train-crosscoder", "--acts", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*args, "--config", str(config), "--lr", "0.004", "--overwrite"]) == 0
    assert (seen["config"].steps, seen["config"].lr, seen["config"].n_shared) == (77, 0.004, 8)
    assert seen["overwrite"] is True
    config.write_text("stpes = 77\n")
    assert main([*args, "--config", str(config)]) == 2
    assert "unknown key 'stpes' (did you mean 'steps'?)" in capsys.readouterr().err


def test_bare_corpus_prints_the_corpus_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["corpus"]) == 2
    out = capsys.readouterr().out
    assert "usage: crossdiff corpus" in out and "build" in out and "stats" in out


def test_analyze_lists_the_analyses(capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    for name in ("corpus_stats", "density", "feature_classes", "routing"):
        assert name in names
    assert any(line.startswith("density") and "(needs: crosscoder" in line for line in lines)
    assert main(["analyze"]) == 2
    assert "--list" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "train-model"])
def test_run_and_train_model_take_no_progress_and_overwrite(command: str) -> None:
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {"--no-progress", "--overwrite"} <= flags


def test_train_model_no_progress_prints_no_step_lines(
    small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "m.toml"
    config.write_text(
        "[model]\nn_layers = 1\nd_model = 16\nn_heads = 2\nd_mlp = 32\n"
        "[train]\ntokens = 2048\nbatch_size = 8\neval_every = 0\nlog_every = 1\n"
        "final_eval_sequences_per_domain = 2\n"
    )
    argv = ["train-model", "--arch", "dense", "--corpus", str(small_corpus),
            "--config", str(config), "--out", str(tmp_path / "m")]  # fmt: skip
    assert main([*argv, "--no-progress"]) == 0
    quiet = capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "m2")]) == 0
    loud = capsys.readouterr().out
    assert "step" not in quiet and "step" in loud
