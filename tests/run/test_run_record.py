"""The typed read side of a run: RunRecord opens run directories written before it existed (a committed
fixture), evaluates them to the same numbers they were evaluated to then, and refuses what is not a run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from dprad.errors import DpradError
from dprad.io import write_json
from dprad.modes import load_run
from dprad.privacy import PrivacyLedger
from dprad.privacy.ledger import NOISE_WRITTEN
from dprad.report import write_model_card, write_report
from dprad.run import RunRecord
from dprad.stages.evaluate import EvalOptions, evaluate_run

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run-before-19"


@pytest.fixture(scope="module")
def old_runs(old_runs_built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pre-fix runs, their weights rebuilt (conftest ``old_runs_built``), copied for this module's
    writes; their config.json names the encoder by an absolute path of the machine that wrote it."""
    here = tmp_path_factory.mktemp("old") / "run-before-19"
    shutil.copytree(old_runs_built, here)
    return here


def test_old_run_directories_load_evaluate_and_report(
    old_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(old_runs)  # the runs name their data and encoder relative to where they were trained
    for name in ("dp-head", "dp-lora"):
        run = old_runs / "runs" / name
        raw_ledger = json.loads((run / "privacy.json").read_text())
        raw_metrics = json.loads((run / "metrics.json").read_text())
        rec = RunRecord.open(run)
        assert rec.ledger.to_dict() == {**raw_ledger, "noise": {}}  # typed, nothing lost (noise: added since)
        assert rec.ledger.private and rec.ledger.epsilon == raw_ledger["epsilon"]
        # written before secret noise: its noise was seeded from config.json's train.seed, and it says so
        assert rec.noise_source == NOISE_WRITTEN and "written in its own config.json" in str(
            rec.noise_warning
        )
        assert rec.mode == name.removeprefix("dp-") and rec.display_mode == name
        # written before encoder runtimes: its frozen encoder ran in torch fp32, not today's default
        assert "encoder_runtime" not in json.loads((run / "config.json").read_text())["model"]
        assert rec.config.model.encoder_runtime == "torch"
        assert list(rec.thresholds.values) == raw_metrics["thresholds"]["values"]
        assert rec.thresholds.fitted_on == "val (DP)" and "DP" in rec.thresholds.source
        assert rec.splits["test"] == tuple(json.loads((run / "splits.json").read_text())["test"])
        assert Path(rec.model_dir) == (old_runs / "encoder").resolve()  # moved: resolved again here
        # the metrics.json view quotes the shipped thresholds, and says so
        shipped = rec.evaluation_of("test")
        assert shipped is not None and shipped.thresholds == "val"
        assert shipped.metric("weighted_f1").estimate == raw_metrics["test"]["threshold_val"]["weighted_f1"]
        # it evaluates to exactly what it was evaluated to before (same model, data, resamples)
        old = json.loads((run / "evaluation.json").read_text())
        again = evaluate_run(run, "reports.csv", options=EvalOptions(n_boot=20, thresholds="0.5"))
        for metric, value in old["headline"].items():
            for k in ("estimate", "ci_low", "ci_high"):
                assert again["headline"][metric][k] == pytest.approx(value[k], abs=1e-6), (name, metric, k)
        assert load_run(rec).predict([]).probs.shape == (0, len(rec.schema))
    html = write_report([old_runs / "runs" / n for n in ("dp-head", "dp-lora")], old_runs / "r.html")
    assert "dp-lora" in html.read_text()
    card = write_model_card(old_runs / "runs" / "dp-head", old_runs / "card.md").read_text()
    assert f"{RunRecord.open(old_runs / 'runs' / 'dp-head').ledger.epsilon:.3g}" in card


def test_run_record_refuses_what_is_not_a_finished_run(old_runs: Path, tmp_path: Path) -> None:
    with pytest.raises(DpradError, match="no such run directory"):
        RunRecord.open(tmp_path / "nowhere")
    run = tmp_path / "run"
    shutil.copytree(old_runs / "runs" / "dp-head", run)
    assert RunRecord.is_run(run)
    ledger = json.loads((run / "privacy.json").read_text())
    write_json(run / "privacy.json", {**ledger, "epsilon_bonus": 0.0})
    with pytest.raises(DpradError, match=r"privacy.json: not a dprad privacy ledger \(unknown key"):
        RunRecord.open(run)
    write_json(run / "privacy.json", {k: v for k, v in ledger.items() if k != "delta"})
    with pytest.raises(DpradError, match=r"missing \['delta'\]"):
        RunRecord.open(run)
    (run / "privacy.json").write_text("{broken")
    with pytest.raises(DpradError, match=r"privacy.json: not valid JSON"):
        RunRecord.open(run)
    (run / "privacy.json").unlink()
    assert not RunRecord.is_run(run)
    with pytest.raises(DpradError, match=r"not a finished dprad run directory \(privacy.json is missing\)"):
        RunRecord.open(run)


def test_ledger_round_trips_and_reports_what_it_spent(old_runs: Path) -> None:
    rec = RunRecord.open(old_runs / "runs" / "dp-head")
    again = PrivacyLedger.from_dict(rec.ledger.to_dict())
    assert again == rec.ledger and again.spent_epsilon == rec.ledger.epsilon
    part = again.part_epsilon("threshold")
    assert part is not None and part[0] == pytest.approx(
        next(p["epsilon"] for p in again.parts if "threshold" in p["part"])
    )
    plain = PrivacyLedger.from_dict({**again.to_dict(), "private": False})
    assert math.isinf(plain.spent_epsilon)
