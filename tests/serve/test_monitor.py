"""`dprad monitor`: drift against the run's own reference, and rare / critical label sensitivity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.cli import main
from dprad.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dprad.data.reports import Report
from dprad.data.table import reports_frame, write_table
from dprad.metrics.drift import MonitorResult, compare, newcombe_diff, psi, reference_from_arrays, wilson
from dprad.modes import load_run
from dprad.modes.predictor import Predictor
from dprad.run import RunRecord
from dprad.serve.monitor import REFERENCE_FILE, monitor_reports, write_reference
from dprad.stages.train import train

SHIFTED = "Pneumothorax"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("monitor")
    data = root / "synth.csv"
    reports = generate_reports(SynthConfig(n_patients=400, seed=5, prevalence={SHIFTED: 0.06}))
    write_table(reports_frame(reports, CHEXPERT14), data)
    cfg = RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(tiny_bert), max_length=128),
        train=TrainConfig(mode="head", epochs=60, lr=0.5, batch_size=64),
    )
    return train(cfg, root / "run").run_dir


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return load_run(run_dir)


def fresh_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run, so that writing reference.json does not change the shared one."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def kinds(result: MonitorResult) -> set[tuple[str, str | None]]:
    return {(a.kind, a.label) for a in result.alerts if a.severity == "alert"}


def test_two_halves_of_the_test_split_raise_no_alert(
    run_dir: Path, predictor: Predictor, tmp_path: Path
) -> None:
    run = fresh_run(run_dir, tmp_path)
    test, _ = RunRecord.open(run).split_reports("test")
    a, b = test[::2], test[1::2]
    path = write_reference(run, a, predictor.predict(a).probs)
    ref = json.loads(path.read_text())
    assert ref["n"] == len(a) and ref["sensitivity"] is not None
    assert not any(r.text[:40] in path.read_text() for r in a)
    result = monitor_reports(run, b, use_labels=True, predictor=predictor)
    assert result.n_reference == len(a) and result.n_new == len(b)
    assert not result.alerted, result.alerts
    assert len(result.sensitivity) == len(CHEXPERT14)
    json.dumps(result.to_dict(), allow_nan=False)  # strict JSON


def test_missing_reference_is_computed_from_the_test_split_and_said(
    run_dir: Path, predictor: Predictor
) -> None:
    (run_dir / REFERENCE_FILE).unlink()  # a run trained before training wrote its reference
    same = generate_reports(SynthConfig(n_patients=250, seed=77, prevalence={SHIFTED: 0.06}))
    result = monitor_reports(run_dir, same, predictor=predictor)
    assert any("reference was computed now" in n for n in result.notes)
    assert result.n_reference == len(json.loads((run_dir / "splits.json").read_text())["test"])
    assert not result.alerted, result.alerts
    assert not (run_dir / REFERENCE_FILE).exists()  # computing it does not write into the run


def test_prevalence_shift_raises_alerts_for_the_shifted_label(run_dir: Path, predictor: Predictor) -> None:
    shifted = generate_reports(SynthConfig(n_patients=250, seed=78, prevalence={SHIFTED: 0.6}))
    result = monitor_reports(run_dir, shifted, predictor=predictor)
    assert result.alerted
    label_alerts = {lab for kind, lab in kinds(result) if kind in {"score_shift", "prevalence_shift"}}
    assert SHIFTED in label_alerts
    drift = next(d for d in result.labels if d.label == SHIFTED)
    assert drift.psi >= 0.25 and drift.ks_p_adj < 0.05
    assert drift.new_prevalence.estimate > drift.reference_prevalence.estimate


def test_ct_reports_against_a_cxr_run_raise_text_and_score_alerts(
    run_dir: Path, predictor: Predictor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ct = generate_reports(SynthConfig(modality="ct", n_patients=150, seed=1))
    data = tmp_path / "ct.csv"
    write_table(reports_frame(ct, CHEXPERT14), data)  # CT text, no CheXpert label columns
    out = tmp_path / "monitor.json"
    # through the real entry point (`dprad` runs cli.main): an alert must reach the exit code and page someone
    with pytest.raises(SystemExit) as exit_:
        main(["monitor", str(run_dir), str(data), "--out", str(out)])
    assert exit_.value.code == 1
    output = capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["alerted"] is True
    got = {(a["kind"], a["label"]) for a in d["alerts"] if a["severity"] == "alert"}
    assert ("length_shift", None) in got and ("oov_shift", None) in got
    assert sum(kind == "score_shift" for kind, _ in got) >= len(CHEXPERT14) // 2
    assert "out-of-vocabulary" in output


def test_cli_exit_code_0_without_alert(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    same = generate_reports(SynthConfig(n_patients=200, seed=79, prevalence={SHIFTED: 0.06}))
    data = tmp_path / "same.csv"
    write_table(reports_frame(same, CHEXPERT14), data)
    capsys.readouterr()
    main(["monitor", str(run_dir), str(data), "--labels", "--json"])  # returns: exit code 0
    d = json.loads(capsys.readouterr().out)
    assert d["alerted"] is False and len(d["sensitivity"]) == len(CHEXPERT14)


def _labelled(
    rng: np.random.Generator, n: int, prevalence: np.ndarray, sens: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels with the given prevalence and scores whose sensitivity at 0.5 is ``sens`` per label."""
    y = (rng.random((n, len(prevalence))) < prevalence).astype(np.float32)  # (N, L)
    hit = rng.random(y.shape) < sens
    probs = np.where(y > 0, np.where(hit, 0.8, 0.2), rng.uniform(0.0, 0.3, y.shape))  # (N, L)
    return probs, y, np.ones_like(y)


def _stats(
    probs: np.ndarray, y: np.ndarray, mask: np.ndarray, labels: list[str], critical: list[str]
) -> dict[str, Any]:
    n = len(probs)
    return reference_from_arrays(
        probs,
        np.full(n, 40),
        np.full(n, 0.1),
        labels=labels,
        critical=critical,
        thresholds=np.full(len(labels), 0.5),
        threshold_rule="0.5",
        source="constructed",
        y=y,
        mask=mask,
    )


def test_sensitivity_drop_alerts_only_for_rare_or_critical_labels() -> None:
    rng = np.random.default_rng(0)
    labels, critical = ["common", "critical", "rare"], ["critical"]
    prevalence = np.array([0.4, 0.3, 0.03])
    ref = _stats(*_labelled(rng, 4000, prevalence, np.array([0.9, 0.9, 0.9])), labels, critical)
    # the same model on new data: no drop, no alert
    same = _stats(*_labelled(rng, 4000, prevalence, np.array([0.9, 0.9, 0.9])), labels, critical)
    assert not compare(ref, same).alerted
    # sensitivity falls from 0.9 to 0.6 on every label; prevalence and score shapes shift a little too
    worse = compare(
        ref, _stats(*_labelled(rng, 4000, prevalence, np.array([0.6, 0.6, 0.6])), labels, critical)
    )
    drops = {a.label for a in worse.alerts if a.kind == "sensitivity_drop"}
    assert drops == {"critical", "rare"}  # the common, non-critical label is reported, not paged
    by = {c.label: c for c in worse.sensitivity}
    assert by["rare"].rare and by["critical"].critical and not by["common"].checked
    assert by["critical"].drop_low is not None and by["critical"].drop_low > 0
    assert by["common"].drop is not None and by["common"].drop > 0.2


def test_too_few_positives_are_not_checked() -> None:
    rng = np.random.default_rng(1)
    labels = ["rare"]
    ref = _stats(*_labelled(rng, 100, np.array([0.02]), np.array([1.0])), labels, [])
    new = _stats(*_labelled(rng, 100, np.array([0.02]), np.array([0.0])), labels, [])
    result = compare(ref, new)
    (check,) = result.sensitivity
    assert (
        not check.checked
        and "not checked" in check.note
        and not any(a.kind == "sensitivity_drop" for a in result.alerts)
    )


def test_statistics_known_values() -> None:
    # Wilson 95% interval for 8 / 10 (Newcombe 1998, table I): 0.490 to 0.943
    w = wilson(8, 10)
    assert (round(w.ci_low, 3), round(w.ci_high, 3)) == (0.490, 0.943)
    # Newcombe's hybrid interval for 56/70 - 48/80 = 0.2: 0.0524 to 0.3339 (Newcombe 1998, method 10)
    d, low, high = newcombe_diff(wilson(48, 80), wilson(56, 70))
    assert (round(d, 4), round(low, 4), round(high, 4)) == (0.2, 0.0524, 0.3339)
    x = np.random.default_rng(0).random(5000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-12)
    assert psi(x, np.clip(x + 0.3, 0, 1)) > 0.25


def test_reports_without_labels_cannot_check_sensitivity(run_dir: Path, predictor: Predictor) -> None:
    from dprad.errors import DpradError

    plain = [
        Report(id=str(i), patient_id=str(i), text="No acute cardiopulmonary process.") for i in range(20)
    ]
    with pytest.raises(DpradError, match="--labels"):
        monitor_reports(run_dir, plain, use_labels=True, predictor=predictor)
