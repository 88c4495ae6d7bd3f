"""Runs that never lie and never lose work: settings-aware resume, locks, validation up front,
and a named one-line error (with nothing finished changed) for every damaged input."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from crossdiff.cli import main
from crossdiff.crosscoder.stage import CrosscoderStageConfig, train_crosscoder_stage
from crossdiff.errors import ConfigError, SettingsChangedError, StageLockedError
from crossdiff.pipeline import load_run_config, run_pipeline
from crossdiff.stages import lock_path, read_manifest, stage_lock, write_manifest
from crossdiff.store import StoreConfig, harvest
from tests.pipeline.test_run import TINY_RUN
from tests.store.store_helpers import make_sequences, pair

REPO = Path(__file__).resolve().parents[1]
SITES = ["--site", "dense=0.mlp_out", "--site", "moe=0.mlp_out"]
SMALL_CC = ["--expansion", "4", "--batch-size", "60", "--no-progress"]


def files(root: Path) -> dict[str, str]:
    """Every file under ``root`` -> sha256 of its bytes (stage locks, which record their
    latest holder, are not outputs)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".lock"))
    }


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with a held-out store and a crosscoder trained on it (feature inputs)."""
    run = tmp_path_factory.mktemp("mini") / "run"
    store = run / "activations" / "validation"
    harvest(
        pair(),
        ["0.mlp_out"],
        make_sequences(),
        store,
        StoreConfig(batch_sequences=4, shard_sequences=8),
    )
    config = CrosscoderStageConfig(expansion=4, steps=20, batch_size=60, progress=False)
    train_crosscoder_stage(store, run / "crosscoder", config)
    return run


def copy_run(mini_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(mini_run, target)
    return target


def truncate(path: Path, keep: int = 200) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# ---------------------------------------------------------------- resume keyed by every setting


def test_resume_with_other_settings_refuses_and_overwrite_records_what_ran(
    mini_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = str(mini_run / "activations" / "validation")
    out = tmp_path / "cc"
    base = ["train-crosscoder", "--acts", store, "--out", str(out), *SMALL_CC]
    assert main([*base, "--steps", "20"]) == 0
    capsys.readouterr()
    before = files(out)
    assert main([*base, "--steps", "10", "--lr", "0.005", "--batch-size", "30"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    for change in ("stage.steps: 20 -> 10", "stage.lr: 0.001 -> 0.005", "batch_size: 60 -> 30"):
        assert change in err, err
    assert files(out) == before  # the finished crosscoder is untouched
    assert main([*base, "--steps", "10", "--lr", "0.005", "--batch-size", "30", "--overwrite"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert manifest["complete"] and metrics["train_steps"] == 10
    assert manifest["config"]["stage"]["steps"] == 10 and manifest["config"]["train"]["steps"] == 10
    assert manifest["config"]["stage"]["lr"] == manifest["config"]["train"]["lr"] == 0.005
    assert manifest["config"]["batch_size"] == 30
    weights = "crosscoder/model.safetensors"
    assert files(out)[weights] != before[weights]


def test_an_interrupted_crosscoder_is_not_resumed_under_other_settings(
    mini_run: Path, tmp_path: Path
) -> None:
    store = mini_run / "activations" / "validation"
    out = tmp_path / "cc"
    config = CrosscoderStageConfig(expansion=4, steps=20, batch_size=60, progress=False)
    train_crosscoder_stage(store, out, config)
    manifest = read_manifest(out)  # rewritten as a kill after the last checkpoint leaves it
    write_manifest(out, manifest.pop("stage"), manifest.pop("config"),
                   **{**manifest, "complete": False})  # fmt: skip
    with pytest.raises(SettingsChangedError, match=r"stage\.steps: 20 -> 40.*--overwrite"):
        train_crosscoder_stage(store, out, CrosscoderStageConfig(
            expansion=4, steps=40, batch_size=60, progress=False))  # fmt: skip


def test_k_zero_and_k_past_the_dictionary_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"crosscoder k must be a finite number > 0, got 0"):
        CrosscoderStageConfig(k=0)
    with pytest.raises(ConfigError, match=r"k = 64 must be below the dictionary size 64"):
        CrosscoderStageConfig(k=64, dict_size=64)


def test_k_past_the_dictionary_in_a_run_config_fails_before_any_stage(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(TINY_RUN.replace("k = 8\n", "k = 4096\n"))
    with pytest.raises(ConfigError, match=r"k = 4096 must be below the dictionary size 128 \(4 x"):
        run_pipeline(load_run_config(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    path.write_text(TINY_RUN.replace('site = "1.mlp_out"', 'site = "2.mlp_out"'))
    with pytest.raises(ConfigError, match=r"site '2\.mlp_out' is past model 'dense'"):
        run_pipeline(load_run_config(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- one writer per stage directory

HOLDER = """
import sys
from crossdiff.stages import stage_lock
with stage_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def hold_lock(stage_dir: Path) -> subprocess.Popen:
    """A process holding the lock of ``stage_dir`` until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(stage_dir)], cwd=REPO, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_two_writers_on_one_stage_exactly_one_proceeds(
    mini_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cc"
    argv = ["train-crosscoder", "--acts", str(mini_run / "activations" / "validation"),
            "--out", str(out), "--steps", "10", *SMALL_CC]  # fmt: skip
    holder = hold_lock(out)
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"is being written by another crossdiff process (pid {holder.pid}, started" in err
        assert not (out / "manifest.json").exists()  # the second writer wrote nothing
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert main(argv) == 0  # the lock is gone with its holder
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 10


def test_a_crashed_holder_releases_the_lock(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    holder = hold_lock(stage)
    with pytest.raises(StageLockedError, match=rf"pid {holder.pid}, started"), stage_lock(stage):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with stage_lock(stage):
        assert f"pid {os.getpid()}" in lock_path(stage).read_text()


# ---------------------------------------------------------------- damaged inputs, one table


@dataclass
class Damage:
    """One damaged input: make it, run a command, expect a one-line error naming ``names``."""

    name: str
    make: Callable[[Path, Path, Path], tuple[list[str], list[str]]]
    """(tmp dir, a copy of the mini run, the small corpus) -> (argv, what the error names)."""


def _truncated_shard_training(tmp: Path, run: Path, corpus: Path) -> tuple[list[str], list[str]]:
    shard = run / "activations" / "validation" / "shards" / "shard-000002.safetensors"
    truncate(shard)
    argv = ["train-crosscoder", "--acts", str(shard.parents[1]), "--out", str(tmp / "cc"),
            "--steps", "5", *SMALL_CC]  # fmt: skip
    return argv, [str(shard), "is damaged"]


def _truncated_shard_analysis(tmp: Path, run: Path, corpus: Path) -> tuple[list[str], list[str]]:
    shard = run / "activations" / "validation" / "shards" / "shard-000004.safetensors"
    truncate(shard, keep=shard.stat().st_size - 100)  # header intact, data cut short
    return ["analyze", "density", "--run", str(run)], [str(shard), "bytes", "when written"]


def _garbage_store_manifest(tmp: Path, run: Path, corpus: Path) -> tuple[list[str], list[str]]:
    manifest = run / "activations" / "validation" / "manifest.json"
    manifest.write_text("{ this is not json")
    argv = ["train-crosscoder", "--acts", str(manifest.parent), "--out", str(tmp / "cc"),
            *SMALL_CC]  # fmt: skip
    return argv, [str(manifest), "not valid JSON"]


def _garbage_corpus_manifest(tmp: Path, run: Path, corpus: Path) -> tuple[list[str], list[str]]:
    manifest = corpus / "manifest.json"
    manifest.write_text("[1, 2")
    argv = ["corpus", "build", "--out", str(corpus), "--max-documents-per-domain", "40",
            "--vocab-size", "512", "--context-length", "32"]  # fmt: skip
    return argv, [str(manifest), "damaged"]


def _garbage_pipeline_record(tmp: Path, run: Path, corpus: Path) -> tuple[list[str], list[str]]:
    (tmp / "run.toml").write_text(TINY_RUN)
    record = run / "pipeline.json"
    record.write_text('"corpus"')
    return ["run", str(tmp / "run.toml"), "--out", str(run)], [str(record), "not an object"]


def _read_only_directory(tmp: Path, run: Path, corpus: Path) -> tuple[list[str], list[str]]:
    make_read_only(run)
    argv = ["train-crosscoder", "--acts", str(run / "activations" / "validation"),
            "--out", str(run / "crosscoder2"), "--steps", "5", *SMALL_CC]  # fmt: skip
    return argv, [str(run), "cannot write", "permission denied"]


def _damaged_checkpoint(tmp: Path, run: Path, corpus: Path) -> tuple[list[str], list[str]]:
    from crossdiff.stages import read_manifest, write_manifest

    out = run / "crosscoder"
    write_manifest(out, "crosscoder", read_manifest(out)["config"], complete=False)  # killed
    for weights in (out / "checkpoint").rglob("*.safetensors"):
        truncate(weights)
    argv = ["train-crosscoder", "--acts", str(run / "activations" / "validation"),
            "--out", str(out), "--steps", "20", *SMALL_CC]  # fmt: skip
    return argv, [str(out / "checkpoint"), "is damaged", "--overwrite"]


def _nan_learning_rate(tmp: Path, run: Path, corpus: Path) -> tuple[list[str], list[str]]:
    argv = ["train-crosscoder", "--acts", str(run / "activations" / "validation"),
            "--out", str(tmp / "cc"), "--lr", "nan", *SMALL_CC]  # fmt: skip
    return argv, ["lr must be a finite number > 0, got nan"]


def _missing_corpus(tmp: Path, run: Path, corpus: Path) -> tuple[list[str], list[str]]:
    missing = tmp / "no-such-corpus"
    argv = ["train-model", "--arch", "dense", "--corpus", str(missing), "--out", str(tmp / "m")]
    return argv, [str(missing), "crossdiff corpus build"]


DAMAGES = [
    Damage("truncated shard in training", _truncated_shard_training),
    Damage("truncated shard in an analysis", _truncated_shard_analysis),
    Damage("garbage store manifest", _garbage_store_manifest),
    Damage("garbage corpus manifest", _garbage_corpus_manifest),
    Damage("garbage pipeline.json", _garbage_pipeline_record),
    Damage("read-only directory", _read_only_directory),
    Damage("damaged crosscoder checkpoint", _damaged_checkpoint),
    Damage("NaN learning rate", _nan_learning_rate),
    Damage("missing corpus", _missing_corpus),
]

_READ_ONLY: list[Path] = []


def make_read_only(root: Path) -> None:
    """Make ``root`` unwritable: by mode bits, or (as root, whom modes do not stop) by the OS
    calls refusing writes under it, as a read-only mount does."""
    if os.geteuid() != 0:
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o555)
    _READ_ONLY.append(root)


@pytest.fixture
def refuse_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root: ``os.open`` for writing and ``os.mkdir`` fail with EACCES under a read-only root."""
    real_open, real_mkdir = os.open, os.mkdir

    def blocked(path: object) -> bool:
        return any(Path(os.fsdecode(path)).resolve().is_relative_to(r) for r in _READ_ONLY)

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and blocked(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if blocked(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
    yield
    for root in _READ_ONLY:
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
    _READ_ONLY.clear()


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.name for d in DAMAGES])
def test_each_damaged_input_gets_a_one_line_named_error_and_changes_nothing(
    damage: Damage,
    mini_run: Path,
    small_corpus: Path,
    tmp_path: Path,
    refuse_writes: None,
    capsys: pytest.CaptureFixture,
) -> None:
    run = copy_run(mini_run, tmp_path)
    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    argv, names = damage.make(tmp_path, run, corpus)
    before = {**files(run), **{f"corpus/{k}": v for k, v in files(corpus).items()}}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossdiff: error: ") and err.count("\n") == 1, err
    for name in names:
        assert name in err, err
    after = {**files(run), **{f"corpus/{k}": v for k, v in files(corpus).items()}}
    assert {k: after.get(k) for k in before} == before  # no existing output changed


# ---------------------------------------------------------------- harvest repairs damaged shards


@pytest.mark.parametrize("how", ["truncated, store complete", "bytes flipped, store unfinished"])
def test_harvest_resume_redoes_a_damaged_shard(how: str, tmp_path: Path) -> None:
    config = StoreConfig(batch_sequences=4, shard_sequences=8)
    reference = tmp_path / "reference"
    harvest(pair(), ["0.mlp_out"], make_sequences(), reference, config)
    damaged = tmp_path / "damaged"
    shutil.copytree(reference, damaged)
    shard = damaged / "shards" / "shard-000003.safetensors"
    if how.startswith("truncated"):
        truncate(shard)
    else:  # same size and a valid header: only the checksum recorded at write time sees it
        data = bytearray(shard.read_bytes())
        data[-8:] = bytes(8)
        shard.write_bytes(bytes(data))
        manifest = read_manifest(damaged)  # as an interrupted harvest leaves it
        write_manifest(damaged, manifest.pop("stage"), manifest.pop("config"),
                       **{**manifest, "complete": False})  # fmt: skip
    with pytest.warns(UserWarning, match=r"shard-000003\.safetensors.*damaged"):
        harvest(pair(), ["0.mlp_out"], make_sequences(), damaged, config)
    assert files(damaged) == files(reference)  # redone byte for byte


def test_a_full_disk_is_a_named_error_and_the_old_file_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossdiff.errors import StageError
    from crossdiff.stages import atomic_write_json

    real_fsync = os.fsync

    def full_for(part: str) -> Callable[[int], None]:
        def fsync(fd: int) -> None:  # the disk fills while writing a file whose path has `part`
            if part in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        return fsync

    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"complete": True})
    monkeypatch.setattr(os, "fsync", full_for("manifest.json"))
    with pytest.raises(StageError, match=rf"cannot write '{target}': the disk is full"):
        atomic_write_json(target, {"complete": False})
    assert json.loads(target.read_text()) == {"complete": True}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary left
    monkeypatch.setattr(os, "fsync", full_for("shard-000000"))
    with pytest.raises(StageError, match=r"shard-000000\.safetensors': the disk is full"):
        harvest(pair(), ["0.mlp_out"], make_sequences(n=8), tmp_path / "store",
                StoreConfig(batch_sequences=4, shard_sequences=8))  # fmt: skip
    assert list((tmp_path / "store" / "shards").iterdir()) == []  # no partial shard
