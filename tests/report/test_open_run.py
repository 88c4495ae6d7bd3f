"""``crossdiff.open_run`` on the tiny report run: the same latent cards as the report's explorer,
the run's parts, and the interventions analysis in summary.json, the report and the cards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossdiff.errors import ConfigError, StageError


def explorer_files(report_run: Path) -> tuple[dict, dict[int, dict]]:
    """The explorer's ``(index, cards)`` as the report wrote them."""
    latents = report_run / "report" / "latents"
    text = (latents / "index.js").read_text()
    index = json.loads(text[text.index("= ") + 2 :].rstrip().rstrip(";"))
    cards: dict[int, dict] = {}
    for path in latents.glob("cards-*.js"):
        text = path.read_text()
        chunk = json.loads(text[text.index("] = ") + 4 :].rstrip().rstrip(";"))
        cards.update({int(k): v for k, v in chunk.items()})
    return index, cards


@pytest.fixture(scope="module")
def run(report_run: Path):
    import crossdiff

    return crossdiff.open_run(report_run)


@pytest.mark.slow
def test_a_latent_is_the_explorers_card_and_row(run, report_run: Path) -> None:
    """For a latent of every class (and one the interventions analysis measured), the card and
    the table row equal those the report wrote, exactly."""
    index, cards = explorer_files(report_run)
    rows = {row[0]: row for row in index["rows"]}
    measured = json.loads((report_run / "analyses/interventions/summary.json").read_text())
    chosen = {run.top_latents(c, 1)[0] for c in index["classes"]}
    chosen.add(int(next(iter(measured["latents"]))))
    for latent_id in sorted(chosen):
        latent = run.latent(latent_id)
        assert json.loads(json.dumps(latent.card)) == cards[latent_id]
        assert list(latent.row.values()) == json.loads(json.dumps(rows[latent_id]))
        assert latent.latent_class == rows[latent_id][index["columns"].index("class")]
        assert latent.contexts_text().count("\n") == len(cards[latent_id]["contexts"]) - 1
    # the densest latent first, as the explorer sorts by density
    densest = max(index["rows"], key=lambda r: (r[index["columns"].index("density")], -r[0]))
    assert run.top_latents(None, 1) == [densest[0]]


@pytest.mark.slow
def test_a_latent_shows_as_circuitsvis_views(run) -> None:
    latent = run.latent(run.top_latents(None, 1)[0])
    page = latent.view().html()
    assert page.count("CircuitsVis.render(") == len(latent.contexts)
    assert "ColoredTokens" in page
    assert "http" not in page.split("<script>")[0]  # nothing fetched: the bundle is inline


@pytest.mark.slow
def test_the_run_knows_its_parts(run, report_run: Path) -> None:
    from tests.report.conftest import REPORT_RUN

    assert run.sites == {"dense": "1.mlp_out", "moe": "1.mlp_out"}
    assert run.models["moe"].moe_layers() == [0, 1]
    assert run.models["dense"].moe_layers() == []
    assert set(run.models) == {"dense", "moe"}
    assert run.config["crosscoder"]["crosscoder"]["sparsity_coeff"] == 1.0
    assert run.config["harvest"]["store"]["split"] == "validation"
    analyses = REPORT_RUN.split("analyses = [")[1].split("]")[0]
    assert set(run.analyses) == {a.strip().strip('"') for a in analyses.split(",") if a.strip()}
    assert run.summary["name"] == "tiny test run"
    assert run.first_position == 1
    with pytest.raises(ConfigError, match=r"out of range: the crosscoder has 128"):
        run.latent(128)
    with pytest.raises(ConfigError, match="unknown latent class 'typo'"):
        run.top_latents("typo")


@pytest.mark.slow
def test_the_crosscoder_loads_from_its_stage_directory(report_run: Path, tmp_path: Path) -> None:
    import torch

    from crossdiff.crosscoder import Crosscoder

    stage = Crosscoder.from_pretrained(report_run / "crosscoder")
    weights = Crosscoder.from_pretrained(report_run / "crosscoder" / "crosscoder")
    for name, tensor in weights.state_dict().items():
        torch.testing.assert_close(stage.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(ConfigError) as error:
        Crosscoder.from_pretrained(tmp_path)
    assert str(tmp_path) in str(error.value)
    assert str(tmp_path / "crosscoder") in str(error.value)


def test_the_stage_weights_directory_is_the_one_from_pretrained_looks_in() -> None:
    from crossdiff.crosscoder.model import STAGE_WEIGHTS_DIR
    from crossdiff.crosscoder.stage import WEIGHTS_DIR

    assert STAGE_WEIGHTS_DIR == WEIGHTS_DIR


def test_open_run_names_what_is_missing(tmp_path: Path) -> None:
    from crossdiff import open_run

    with pytest.raises(ConfigError, match="no run directory"):
        open_run(tmp_path / "nowhere")
    with pytest.raises(StageError, match="no finished crosscoder"):
        open_run(tmp_path)


def test_importing_crossdiff_does_not_import_torch() -> None:
    code = (
        "import sys, crossdiff; light = 'torch' not in sys.modules; "
        "crossdiff.open_run; print(light, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["True", "True"], result.stderr


@pytest.mark.slow
def test_the_interventions_analysis_is_in_summary_report_and_cards(run, report_run: Path) -> None:
    """summary.json holds every class's effect in every model as the analysis measured it; the
    report has its section (a row per class); each measured latent's card carries its effects."""
    analysis = json.loads((report_run / "analyses/interventions/summary.json").read_text())
    summary = json.loads((report_run / "report" / "summary.json").read_text())
    assert set(summary["interventions"]) == set(run.classes)
    for label, row in summary["interventions"].items():
        measured = analysis["classes"][label]["effects"]
        assert row["latents"] == run.classes.count(label)
        assert row["delta_loss"] == {m: e["delta_loss"]["all"] for m, e in measured.items()}
        assert all(v >= 0 for v in row["kl"].values())
        if label.endswith("_only"):
            own = label.removesuffix("_only")
            assert row["own_model"] == own
            other = max(v for m, v in row["kl"].items() if m != own)
            if other > 1e-12:
                assert row["kl_own_over_other"] == pytest.approx(row["kl"][own] / other)
            else:  # the other model did not change beyond rounding
                assert row["kl_own_over_other"] is None
    page = (report_run / "report" / "report.html").read_text()
    assert "<h2 id='interventions'>Interventions</h2>" in page
    section = page.split("<h2 id='interventions'>")[1].split("<h2")[0]
    for label in summary["interventions"]:
        assert f"<td>{label}</td>" in section
    assert section.count("<img") == 1  # the KL per class figure
    _, cards = explorer_files(report_run)
    assert analysis["latents"]
    for latent, effects in analysis["latents"].items():
        assert cards[int(latent)]["intervention"] == effects
    unmeasured = set(cards) - {int(i) for i in analysis["latents"]}
    assert all("intervention" not in cards[i] for i in unmeasured)


@pytest.mark.slow
def test_ablating_through_the_run_matches_the_analysis(run, report_run: Path) -> None:
    """The same sequences and latents through ``Run.ablate`` give the analysis's numbers."""
    analysis = json.loads((report_run / "analyses/interventions/summary.json").read_text())
    latent, measured = next(iter(analysis["latents"].items()))
    settings = analysis["settings"]
    effects = run.ablate(int(latent), max_sequences=settings["max_sequences"])
    for model, effect in effects.items():
        assert effect.delta_loss["all"] == pytest.approx(measured["effects"][model]["delta_loss"])
        assert effect.kl["all"] == pytest.approx(measured["effects"][model]["kl"])
