"""Patient-level DP in real runs: the sampler draws patients, the ledger counts patients, and its epsilon
recomputes with dp-accounting; on a MIMIC-CXR-layout tree and on the synthetic corpus (repeat patients)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.privacy import epsilon_of, event_from_dict
from dprad.stages.train import train


def mimic_tree(root: Path, n_patients: int) -> Path:
    """A MIMIC-CXR-layout folder (files/pXX/pSUBJECT/sSTUDY.txt + the CheXpert labels CSV) made from
    synthetic reports, which have repeat patients."""
    reports = generate_reports(SynthConfig(n_patients=n_patients, seed=41))
    subjects = {p: 10_000_000 + i for i, p in enumerate(sorted({r.patient_id for r in reports}))}
    rows = ["subject_id,study_id," + ",".join(CHEXPERT14.labels)]
    for k, r in enumerate(reports):
        subject, study = subjects[r.patient_id], 50_000_000 + k
        d = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"s{study}.txt").write_text(f"FINDINGS: {r.text}\n")
        cells = [
            "" if (r.labels or {}).get(lab) is None else f"{(r.labels or {})[lab]:.1f}"
            for lab in CHEXPERT14.labels
        ]
        rows.append(f"{subject},{study}," + ",".join(cells))
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text("\n".join(rows) + "\n")
    return root


def check_patient_ledger(run: Path) -> None:
    led = json.loads((run / "privacy.json").read_text())
    splits = json.loads((run / "splits.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert led["privacy_unit"] == "patient" and led["sampler"] == "poisson-patient"
    assert led["dataset_size"] < len(splits["train"])  # patients, not reports
    assert "patient" in led["statement"] and "k times" not in led["statement"]
    assert epsilon_of(event_from_dict(led["event"]), delta=led["delta"]) == pytest.approx(
        led["epsilon"], rel=1e-9
    )
    units = np.array(history["batch_units"])
    n, q = led["dataset_size"], led["sample_rate"]
    assert abs(units.mean() - q * n) < 4 * np.sqrt(n * q * (1 - q) / len(units))
    assert np.array(history["batch_size"]).sum() > units.sum()  # patients bring several reports
    # DP thresholds see one validation report per patient: the histograms' sensitivity is per report
    fitted = json.loads((run / "metrics.json").read_text())["thresholds"]
    assert fitted["fitted_on"] == "val (DP)"
    assert fitted["reports"] < len(splits["val"])


def test_patient_level_dp_on_a_mimic_layout_tree(tiny_bert: Path, tmp_path: Path) -> None:
    root = mimic_tree(tmp_path / "mimic", 220)
    cfg = RunConfig(
        data=DataConfig(path=str(root)),
        model=ModelConfig(name=str(tiny_bert), max_length=48),
        privacy=PrivacyConfig(epsilon=2.0),
        train=TrainConfig(mode="head", epochs=4.0, batch_size=48),
    )
    res = train(cfg, tmp_path / "run")
    check_patient_ledger(res.run_dir)
    notes = json.loads((res.run_dir / "notes.json").read_text())
    assert any(n.startswith("privacy unit: patient") for n in notes)


def test_patient_level_dp_on_the_synthetic_corpus_and_report_level_on_request(
    tiny_bert: Path, tmp_path: Path
) -> None:
    path = tmp_path / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=220, seed=42)), CHEXPERT14), path)
    base = RunConfig(
        data=DataConfig(path=str(path)),
        model=ModelConfig(name=str(tiny_bert), max_length=48),
        privacy=PrivacyConfig(epsilon=2.0),
        train=TrainConfig(mode="head", epochs=4.0, batch_size=48),
    )
    check_patient_ledger(train(base, tmp_path / "patient").run_dir)
    per_report = train(base.with_(privacy=PrivacyConfig(epsilon=2.0, unit="report")), tmp_path / "report")
    assert per_report.ledger.privacy_unit == "report" and per_report.ledger.sampler == "poisson"
    assert "k times" in per_report.ledger.statement
