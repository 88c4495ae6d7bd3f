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
