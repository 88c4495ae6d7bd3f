"""Nothing silent (issue 25): every byte read is verified, every stage locked, every input checked
before work starts. Each test starts from a failure as it was seen: altered bytes used without a
word, a resumed training curve missing its first half, two report writers, Latin-1 text turned
into U+FFFD, a misspelt site found after hours of work, a damaged input dropped from the report,
a pickle traceback, an unsupported MoE family failing with an IndexError, 0600 weights."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from crossdiff.cli import main
from crossdiff.crosscoder.stage import CrosscoderStageConfig, train_crosscoder_stage
from crossdiff.errors import ConfigError, DamagedFileError, StageLockedError
from crossdiff.pipeline import load_run_config, run_pipeline
from crossdiff.stages import read_manifest, require_stage, write_manifest
from crossdiff.store import StoreConfig, harvest, open_store
from crossdiff.verify import forget_verified
from tests.pipeline.test_run import TINY_RUN
from tests.store.store_helpers import make_sequences, pair
from tests.test_reliability import hold_lock


def alter_last_bytes(path: Path, count: int = 8) -> None:
    """Change the last ``count`` bytes of ``path`` (same size, header intact)."""
    data = bytearray(path.read_bytes())
    data[-count:] = bytes(b ^ 0xFF for b in data[-count:])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with a held-out store and a crosscoder trained on it."""
    run = tmp_path_factory.mktemp("silent") / "run"
    store = run / "activations" / "validation"
    harvest(pair(), ["0.mlp_out"], make_sequences(), store,
            StoreConfig(batch_sequences=4, shard_sequences=8))  # fmt: skip
    config = CrosscoderStageConfig(expansion=4, steps=20, batch_size=60, progress=False)
    train_crosscoder_stage(store, run / "crosscoder", config)
    return run


@pytest.fixture
def run_copy(small_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(small_run, target)
    forget_verified()  # a test's damage is seen whatever an earlier test verified
    return target


# ---------------------------------------------------------------- 1. verified reads


def test_altered_shard_bytes_with_the_header_intact_are_a_named_error_in_analyze(
    run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    shard = run_copy / "activations" / "validation" / "shards" / "shard-000004.safetensors"
    assert main(["analyze", "density", "--run", str(run_copy)]) == 0  # intact: it runs
    capsys.readouterr()
    alter_last_bytes(shard)
    open_header = shard.read_bytes()[:8]
    assert open_header == shard.read_bytes()[:8]  # the header is untouched
    assert main(["analyze", "density", "--run", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for name in (str(shard), "checksum differs", "crossdiff harvest"):
        assert name in err, err


def _weights(run: Path) -> tuple[Path, Callable[[Path], object]]:
    return run / "crosscoder" / "crosscoder" / "model.safetensors", alter_last_bytes


def _truncated_weights(run: Path) -> tuple[Path, Callable[[Path], object]]:
    def cut(path: Path) -> None:
        path.write_bytes(path.read_bytes()[:-4])

    return run / "crosscoder" / "crosscoder" / "model.safetensors", cut


def _crosscoder_cfg(run: Path) -> tuple[Path, Callable[[Path], object]]:
    def edit(path: Path) -> None:
        path.write_text(path.read_text().replace('"k": ', '"k": 1'))

    return run / "crosscoder" / "crosscoder" / "cfg.json", edit


def _manifest(run: Path) -> tuple[Path, Callable[[Path], object]]:
    def edit(path: Path) -> None:  # valid JSON, other content: only its checksum sees it
        manifest = json.loads(path.read_text())
        manifest["config"]["batch_size"] = 1
        path.write_text(json.dumps(manifest))

    return run / "crosscoder" / "manifest.json", edit


DAMAGES = {
    "altered weights": (_weights, "checksum differs"),
    "truncated weights": (_truncated_weights, "bytes"),
    "edited cfg.json": (_crosscoder_cfg, "bytes"),
    "edited manifest": (_manifest, "differs from the checksum it recorded"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_stage_file_is_named_wherever_the_stage_is_read(
    damage: str, run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    from crossdiff.pipeline.run import stage_complete

    make, words = DAMAGES[damage]
    path, spoil = make(run_copy)
    crosscoder = run_copy / "crosscoder"
    assert stage_complete(crosscoder)  # intact: verified and up to date
    spoil(path)
    forget_verified()
    with pytest.raises(DamagedFileError, match=words) as error:  # `run`: not "up to date"
        stage_complete(crosscoder)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(DamagedFileError, match=words):  # any command reading the stage
        require_stage(crosscoder, "crosscoder", "crossdiff train-crosscoder")
    assert main(["analyze", "feature_classes", "--run", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and err.count("\n") == 1, err


def test_an_old_stage_without_checksums_stays_up_to_date(run_copy: Path) -> None:
    """A manifest written before checksums (no ``checksum``, no ``files``) is read as it is."""
    from crossdiff.pipeline.run import stage_complete

    crosscoder = run_copy / "crosscoder"
    manifest = json.loads((crosscoder / "manifest.json").read_text())
    for field in ("checksum", "files"):
        manifest.pop(field)
    (crosscoder / "manifest.json").write_text(json.dumps(manifest))
    assert stage_complete(crosscoder)
    assert read_manifest(crosscoder)["complete"] is True


def test_a_store_altered_after_a_run_is_not_up_to_date(run_copy: Path) -> None:
    """``harvest_done`` (what `run` asks before skipping the harvest) verifies every shard."""
    from crossdiff.pipeline.stages import harvest_done

    class FakeRun:
        repair = False

        def store_dir(self, split: str) -> Path:
            return run_copy / "activations" / "validation"

    assert harvest_done(FakeRun())
    shards = run_copy / "activations" / "validation" / "shards"
    alter_last_bytes(shards / "shard-000001.safetensors")
    forget_verified()
    with pytest.raises(DamagedFileError, match=r"shard-000001\.safetensors.*--repair"):
        harvest_done(FakeRun())  # `run` stops, naming the shard and how to repair it
    FakeRun.repair = True
    assert not harvest_done(FakeRun())  # `run --repair` harvests the damaged shard again


def test_a_verified_file_is_hashed_once_per_process(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import crossdiff.verify as verify

    store = run_copy / "activations" / "validation"
    monkeypatch.setattr(verify, "FRESH_NS", -(10**12))  # the copied shards count as old
    hashed: list[str] = []
    real = verify.file_digest
    monkeypatch.setattr(verify, "file_digest", lambda p: hashed.append(str(p)) or real(p))
    n_shards = len(open_store(store).shard_paths())
    assert len(hashed) == n_shards
    open_store(store)
    assert len(hashed) == n_shards  # not hashed again
    time.sleep(0.05)  # a later clock tick than the copy: the change time moves
    alter_last_bytes(store / "shards" / "shard-000000.safetensors")
    with pytest.raises(DamagedFileError, match="shard-000000"):
        open_store(store)


# ---------------------------------------------------------------- 2. resume keeps the whole log


class Interrupted(Exception):
    """Stands for a kill: raised after a checkpoint, nothing of the process runs after it."""


def _crosscoder_log(tmp: Path, corpus: Path, stop_at: int | None) -> list[dict]:
    store = tmp / "store"
    if not store.exists():
        harvest(pair(), ["0.mlp_out"], make_sequences(), store,
                StoreConfig(batch_sequences=4, shard_sequences=8))  # fmt: skip
    out = tmp / ("cc-resumed" if stop_at else "cc-straight")
    config = CrosscoderStageConfig(
        expansion=4, steps=20, batch_size=60, checkpoint_every=8, eval_shards=1, progress=False
    )
    if stop_at:
        import crossdiff.crosscoder.stage as stage

        real = stage.step_metrics

        def metrics(stats):  # called once per step, after the step's checkpoint (if any)
            if stats.step == stop_at:
                raise Interrupted
            return real(stats)

        stage.step_metrics = metrics
        try:
            with pytest.raises(Interrupted):
                train_crosscoder_stage(store, out, config)
        finally:
            stage.step_metrics = real
        assert not read_manifest(out)["complete"]
    train_crosscoder_stage(store, out, config)
    return json.loads((out / "train_log.json").read_text())["history"]


def _model_log(tmp: Path, corpus: Path, stop_at: int | None) -> list[dict]:
    from crossdiff.models.stage import train_model_stage

    out = tmp / ("model-resumed" if stop_at else "model-straight")
    args = (corpus, out, "dense", "tiny",
            {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_mlp": 32},
            {"tokens": 10 * 8 * 32, "batch_size": 8, "eval_every": 0, "checkpoint_every": 4,
             "log_every": 0})  # fmt: skip
    if stop_at:

        def on_step(step: int) -> None:  # called after the step's checkpoint
            if step == stop_at:
                raise Interrupted

        with pytest.raises(Interrupted):
            train_model_stage(*args, on_step=on_step, progress=False)
    train_model_stage(*args, progress=False)
    return json.loads((out / "train_log.json").read_text())["history"]


TIMED = {"train_seconds", "seconds", "activations_per_s", "tokens_per_s"}


@pytest.mark.parametrize(
    ("what", "train", "stop_at"),
    [("crosscoder", _crosscoder_log, 11), ("model", _model_log, 6)],
)
def test_a_resumed_training_log_equals_an_uninterrupted_one_step_by_step(
    what: str, train: Callable, stop_at: int, small_corpus: Path, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = train(tmp_path, small_corpus, stop_at)
        straight = train(tmp_path, small_corpus, None)
    finally:
        torch.set_num_threads(threads)
    assert [r["step"] for r in resumed] == list(range(1, len(straight) + 1))
    assert len(straight) > stop_at
    for mine, theirs in zip(resumed, straight, strict=True):
        assert {k: v for k, v in mine.items() if k not in TIMED} == {
            k: v for k, v in theirs.items() if k not in TIMED
        }, (what, mine["step"])


# ---------------------------------------------------------------- 3. the report stage is locked


@pytest.fixture
def report_run(run_copy: Path, tmp_path: Path):
    from crossdiff.pipeline.run import Run
    from crossdiff.plugins import create_plugin_manager

    (tmp_path / "run.toml").write_text(TINY_RUN.replace('site = "1.mlp_out"', 'site = "0.mlp_out"'))
    config = load_run_config(tmp_path / "run.toml")
    config = type(config)(**{**config.__dict__, "analyses": ()})
    return Run(config, run_copy, create_plugin_manager(), progress=False)


def test_two_report_writers_one_is_refused_by_name(report_run) -> None:
    from crossdiff.pipeline.report import write_run_report
    from crossdiff.pipeline.stages import report_done

    report = report_run.run_dir / "report"
    holder = hold_lock(report)
    try:
        with pytest.raises(StageLockedError, match=rf"report'.*pid {holder.pid}"):
            write_run_report(report_run)
        assert not any(report.iterdir())  # the refused writer wrote nothing
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    write_run_report(report_run)
    assert report_done(report_run)
    assert read_manifest(report)["complete"] is True


def test_the_report_is_complete_only_after_its_last_file(
    report_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import crossdiff.pipeline.report as report_module
    from crossdiff.pipeline.stages import report_done

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_module, "write_report", disk_full)
    with pytest.raises(OSError, match="No space"):
        report_module.write_run_report(report_run)
    report = report_run.run_dir / "report"
    assert (report / "summary.json").is_file() and not (report / "report.html").exists()
    assert not report_done(report_run)  # summary.json alone is not a finished report
    monkeypatch.undo()
    report_module.write_run_report(report_run)
    assert report_done(report_run)
    (report / "manifest.json").unlink()  # a report written before reports had a manifest
    assert report_done(report_run)


# ---------------------------------------------------------------- 4. text sources decode strictly

LATIN1 = "Caf\u00e9 cr\u00e8me, na\u00efve fa\u00e7ade.\n"


@pytest.mark.parametrize(
    ("name", "data", "spec_suffix", "expected"),
    [
        ("latin-1 text", LATIN1.encode("latin-1"), "", "byte offset 3"),
        ("latin-1 jsonl, 2nd line", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "", "byte offset 28"),
        ("latin-1, encoding given", LATIN1.encode("latin-1"), "?encoding=latin-1", LATIN1),
        ("latin-1, errors=replace", b"caf\xe9", "?errors=replace", "caf\ufffd"),
        ("utf-8", LATIN1.encode("utf-8"), "", LATIN1),
    ],
)
def test_undecodable_text_is_an_error_naming_the_file_and_byte(
    name: str, data: bytes, spec_suffix: str, expected: str, tmp_path: Path
) -> None:
    from crossdiff.corpus.config import CorpusConfig
    from crossdiff.corpus.sources import parse_source_spec

    path = tmp_path / ("docs.jsonl" if "jsonl" in name else "doc.txt")
    path.write_bytes(data)
    spec = f"{path}{spec_suffix}"
    source = parse_source_spec("stories", spec)
    if "offset" in expected:
        with pytest.raises(ConfigError, match=expected) as error:
            list(source.documents())
        assert str(path) in str(error.value) and "encoding=" in str(error.value)
        assert "\n" not in str(error.value)
    else:
        texts = [d.text for d in source.documents()]
        assert texts == [expected]
        config = CorpusConfig(domains=("stories",), sources={"stories": spec})
        assert config.record()["sources"] == {"stories": spec}  # the manifest records it


def test_an_unknown_encoding_is_named(tmp_path: Path) -> None:
    from crossdiff.corpus.sources import parse_source_spec

    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="unknown text encoding 'latin-9x'"):
        parse_source_spec("stories", f"{tmp_path / 'a.txt'}?encoding=latin-9x")


# ---------------------------------------------------------------- 5. validation before any work


def _misspelt_site(text: str, tmp: Path) -> str:
    return text.replace('site = "1.mlp_out"', 'site = "1.mlp_outt"')


def _missing_source(text: str, tmp: Path) -> str:
    return text.replace("[corpus]\n", f'[corpus]\nsources = {{ stories = "{tmp}/no-such.txt" }}\n')


def _other_tokenizer(text: str, tmp: Path) -> str:
    from crossdiff.corpus.tokenizer import train_bpe_tokenizer

    for name, words in (("corpus-tok", "alpha beta gamma "), ("model/tokenizer", "one two ")):
        train_bpe_tokenizer([words * 200], 262).save_pretrained(str(tmp / name))
    (tmp / "model" / "cfg.json").write_text("{}")
    text = text.replace("[corpus]\n", f'[corpus]\ntokenizer = "{tmp}/corpus-tok"\n')
    return text.replace('arch = "dense"\npreset = "tiny"', f'path = "{tmp}/model"')


UP_FRONT = [
    ("misspelt site", _misspelt_site, r"unknown site '1\.mlp_outt'.*1\.mlp_out"),
    ("missing source path", _missing_source, r"no-such\.txt' does not exist"),
    ("tokenizer of another vocabulary", _other_tokenizer, r"'dense'.*tokenizer different"),
]


@pytest.mark.parametrize(("name", "edit", "error"), UP_FRONT, ids=[c[0] for c in UP_FRONT])
def test_a_bad_input_fails_before_any_directory_is_created(
    name: str, edit: Callable, error: str, tmp_path: Path
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(edit(TINY_RUN, tmp_path))
    config = load_run_config(path)
    with pytest.raises(ConfigError, match=error):
        run_pipeline(config, tmp_path / "out", log=lambda line: None)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 6. damaged report inputs


def test_a_damaged_input_is_a_named_warning_in_the_report_and_the_log(report_run) -> None:
    from crossdiff.pipeline.report import write_run_report

    run_dir = report_run.run_dir
    (run_dir / "models" / "dense").mkdir(parents=True)
    write_manifest(run_dir / "models" / "dense", "models", {}, complete=True, arch="dense")
    (run_dir / "models" / "dense" / "train_log.json").write_text('{"history": [')  # cut short
    (run_dir / "crosscoder" / "train_log.json").unlink()
    lines: list[str] = []
    page = write_run_report(report_run, lines.append)
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    warned = "\n".join(summary["warnings"])
    for words in ("model 'dense''s train_log.json is damaged", "crosscoder's train_log.json is "
                  "missing", "model 'moe' has no models manifest.json",
                  "no corpus stage at", "the latent explorer is left out"):  # fmt: skip
        assert words in warned, warned
        assert any(words in line for line in lines), lines
    html = page.read_text()
    assert "Warnings" in html and "train_log.json is damaged" in html


def test_a_model_that_cannot_be_loaded_is_named_not_dropped(
    report_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's damaged model cfg.json: the explorer names the model it shows nothing for."""
    import crossdiff.corpus
    from crossdiff.crosscoder import Crosscoder
    from crossdiff.pipeline.report import explorer_inputs

    sequences = make_sequences()  # what the store was harvested from, as the corpus
    monkeypatch.setattr(crossdiff.corpus, "load_sequences",
                        lambda d: {"train": sequences, "validation": sequences})  # fmt: skip
    monkeypatch.setattr(crossdiff.corpus, "load_tokenizer", lambda d: None)

    run_dir = report_run.run_dir
    model = run_dir / "models" / "dense"
    model.mkdir(parents=True)
    (model / "cfg.json").write_text('{"model": {"n_lay')  # damaged
    store = open_store(run_dir / "activations" / "validation")
    store.manifest["config"]["record"] = {"models": {"dense": str(model)}}
    crosscoder = Crosscoder.from_pretrained(run_dir / "crosscoder" / "crosscoder")
    warnings: list[str] = []
    inputs = explorer_inputs(
        report_run.corpus_dir, crosscoder, store, report_run.manager, warnings=warnings
    )
    assert "dense" not in inputs.unembeds
    assert any("model 'dense' could not be loaded" in w and str(model) in w for w in warnings)


@pytest.mark.parametrize("within", [[None, None], [0.3, None], [float("nan"), 0.2]])
def test_undefined_similarity_statistics_are_not_testable_not_a_crash(within: list) -> None:
    """Identical validation sequences leave every Spearman ρ undefined (None): the routing-
    similarity claims say "not testable" (how defined ones are judged: tests/report/test_claims.py).
    """
    from crossdiff.report.claims import run_claims

    layers = {
        str(i): {
            "spearman_within": w,
            "spearman_p": None,
            "sequence_spearman": w,
            "sequence_spearman_p": None,
            "ratio": None,
            "overlap_across": None,
            "shuffled_baseline": None,
        }
        for i, w in enumerate(within)
    }
    claims = run_claims({"moe": {"routing_similarity": {"moe": layers}}})
    rho = [c for c in claims if "Spearman ρ > 0" in c.claim]
    assert len(rho) == 2, [c.claim for c in claims]
    assert all(c.verdict == "not testable" and c.holds is None for c in rho)
    assert all(c.verdict == "not testable" for c in claims)


# ---------------------------------------------------------------- 7. pickled HF weights


def test_pickled_hf_weights_are_one_line_naming_the_pickle_and_the_conversion(
    tmp_path: Path,
) -> None:
    from crossdiff.adapters import load_adapter
    from crossdiff.plugins import create_plugin_manager
    from tests.adapters.tiny_models import hf_model

    model = hf_model("llama")
    model.save_pretrained(str(tmp_path / "hf"))
    for weights in (tmp_path / "hf").glob("*.safetensors"):
        weights.unlink()
    torch.save(model.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(ConfigError) as error:
        load_adapter(str(tmp_path / "hf"), create_plugin_manager())
    message = str(error.value)
    assert "\n" not in message
    for words in ("pytorch_model.bin", "is a pickle", "safetensors", "save_pretrained"):
        assert words in message, message


# ---------------------------------------------------------------- 8. file modes follow the umask


def _crosscoder_weights(directory: Path) -> list[Path]:
    from crossdiff.crosscoder import Crosscoder, CrosscoderConfig

    model = Crosscoder(CrosscoderConfig(models=("a", "b"), d_models=(8, 8), dict_size=16, k=2))
    out = model.save_pretrained(directory / "cc")
    return [out / "model.safetensors", out / "cfg.json"]


def _model_weights(directory: Path) -> list[Path]:
    from crossdiff.models.build import build_model
    from crossdiff.models.checkpoint import save_weights
    from tests.models.train_helpers import MODEL

    save_weights(directory / "m", build_model(MODEL), MODEL)
    return [directory / "m" / "model.safetensors", directory / "m" / "cfg.json"]


def _checkpoint_tensors(directory: Path) -> list[Path]:
    from crossdiff.checkpoints import save_rng

    save_rng(directory / "rng.safetensors")
    return [directory / "rng.safetensors"]


@pytest.mark.parametrize("mask", [0o022, 0o077])
@pytest.mark.parametrize("writer", [_crosscoder_weights, _model_weights, _checkpoint_tensors])
def test_weights_follow_the_umask(writer: Callable, mask: int, tmp_path: Path) -> None:
    before = os.umask(mask)
    try:
        paths = writer(tmp_path)
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(before)
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert expected == 0o666 & ~mask
    assert {str(p): stat.S_IMODE(p.stat().st_mode) for p in paths} == dict.fromkeys(
        map(str, paths), expected
    )
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary left behind


# ---------------------------------------------------------------- 9. identity experts refused


def test_an_moe_with_identity_experts_is_refused_by_name_at_adapt_time() -> None:
    from transformers import AutoModelForCausalLM, LongcatFlashConfig

    from crossdiff.adapters import adapt
    from crossdiff.plugins import create_plugin_manager

    config = LongcatFlashConfig(
        vocab_size=64, hidden_size=32, num_layers=1, num_attention_heads=2,
        ffn_hidden_size=64, expert_ffn_hidden_size=16, n_routed_experts=4, zero_expert_num=2,
        moe_topk=2, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
        v_head_dim=8,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ConfigError, match=r"LongcatFlashMoE.*2 zero-computation.*not supported"):
        adapt(model, create_plugin_manager())


def test_a_damaged_interventions_summary_is_a_named_warning_not_a_crash(tmp_path: Path) -> None:
    from crossdiff.pipeline.report import intervention_cards

    assert intervention_cards(tmp_path) == {}  # the analysis did not run: nothing to say
    path = tmp_path / "analyses" / "interventions" / "summary.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"latents": {"7": {"kl": 0.5}}}')
    assert intervention_cards(tmp_path) == {7: {"kl": 0.5}}
    path.write_text('{"latents": {"7"')  # cut short
    warnings: list[str] = []
    assert intervention_cards(tmp_path, warnings) == {}
    assert len(warnings) == 1 and str(path) in warnings[0] and "damaged" in warnings[0]
