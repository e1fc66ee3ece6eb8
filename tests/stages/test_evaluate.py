"""Evaluation end to end: a tiny run evaluated through the CLI, compared, and transferred across schemas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dprad import CHEXPERT14, CTRATE18, DpradError, SynthConfig, generate_reports
from dprad.cli import main
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.metrics.transfer import label_map
from dprad.stages.evaluate import EvalOptions, compare_runs, evaluate_run
from dprad.stages.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    data = root / "synth.csv"
    write_table(
        reports_frame(
            generate_reports(
                SynthConfig(n_patients=300, seed=2, prevalence={"Pneumothorax": 0.05, "Pleural Other": 0.05})
            ),
            CHEXPERT14,
        ),
        data,
    )

    def run(name: str, mode: str, eps: float | None) -> Path:
        cfg = RunConfig(
            data=DataConfig(path=str(data)),
            model=ModelConfig(name=str(tiny_bert), max_length=64),
            privacy=PrivacyConfig(epsilon=eps),
            train=TrainConfig(mode=mode, epochs=20, batch_size=128),
        )
        train(cfg, root / name)
        return root / name

    return data, run("head", "head", None), run("dp", "dp-head", 1.0)


def test_evaluate_cli_writes_metrics_with_cis_calibration_and_subgroups(
    runs: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, head, _ = runs
    out = tmp_path / "metrics.json"
    main(
        [
            "evaluate",
            str(head),
            str(data),
            "--out",
            str(out),
            "--groups",
            "sex,site,age",
            "--bootstrap",
            "200",
            "--thresholds",
            "val",
        ]
    )
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["split"] == "test" and res["reports"] == len(
        json.loads((head / "splits.json").read_text())["test"]
    )
    assert len(res["per_label"]) == 14
    for row in res["per_label"]:
        for m in ("precision", "recall", "specificity", "f1"):
            assert row[m]["ci_low"] <= row[m]["estimate"] <= row[m]["ci_high"]
    w = res["headline"]["weighted_f1"]
    assert w["ci_low"] <= w["estimate"] <= w["ci_high"] and w["ci_high"] - w["ci_low"] > 0
    assert res["bootstrap"] == {"resamples": 200, "unit": "patient", "level": 0.95, "random_state": 0}
    assert res["thresholds"]["source"] == "val"
    assert res["calibration"]["bins"] == 10 and 0 <= res["calibration"]["pooled_ece"] <= 1
    assert set(res["subgroups"]) == {"sex", "site", "age"}
    assert set(res["subgroups"]["sex"]["groups"]) == {"F", "M"}
    assert set(res["subgroups"]["age"]["groups"]) <= {"<40", "40-59", "60-79", "80+"}
    assert any(g["small"] for g in res["subgroups"]["age"]["groups"].values())  # small groups are flagged
    assert "per label" in printed and "Pleural Effusion" in printed
    # the evaluation's point estimate equals the training-time test metric at the same thresholds
    train_metrics = json.loads((head / "metrics.json").read_text())["test"]["threshold_val"]["weighted_f1"]
    assert w["estimate"] == pytest.approx(train_metrics, abs=1e-6)


def test_compare_is_paired(runs: tuple[Path, Path, Path]) -> None:
    data, head, dp = runs
    same = compare_runs(head, head, data, options=EvalOptions(n_boot=200))
    assert (
        same["headline"]["weighted_f1"]["difference"] == 0
        and same["headline"]["weighted_f1"]["p_value"] == 1.0
    )
    diff = compare_runs(head, dp, data, options=EvalOptions(n_boot=200))
    d = diff["headline"]["macro_auroc"]
    assert d["ci_low"] <= d["difference"] <= d["ci_high"] and len(diff["per_label"]) == 14


def test_domain_transfer_to_ct_schema(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, head, _ = runs
    ct = tmp_path / "ct.csv"
    write_table(
        reports_frame(generate_reports(SynthConfig(modality="ct", n_patients=120, seed=3)), CTRATE18), ct
    )
    res = evaluate_run(head, ct, options=EvalOptions(n_boot=100))
    assert res["split"] == "all"
    assert [r["label"] for r in res["per_label"]] == list(label_map(CHEXPERT14, CTRATE18).values())
    assert "domain transfer" in res["notes"][0]
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"Cardiomegaly": "Heart big"}))
    with pytest.raises(DpradError, match="'Heart big' is not a label of the data's schema 'ctrate18'"):
        evaluate_run(head, ct, options=EvalOptions(n_boot=10, label_map=str(bad)))


def test_real_iu_per_label_cis_and_sex_subgroups(iu_csv: Path, tmp_path: Path) -> None:
    """The default encoder on the real IU X-ray file: a non-private head run, then evaluate with sex groups."""
    run = tmp_path / "iu-head"
    main(["train", str(iu_csv), "--out", str(run), "--mode", "head", "--epochs", "30"])
    res = evaluate_run(run, iu_csv, options=EvalOptions(n_boot=300, groups=("sex",)))
    assert len(res["per_label"]) == 14 and res["labels_without_positives"] == []
    assert all(not np.isnan(r["auroc"]["ci_low"]) for r in res["per_label"])
    assert res["headline"]["macro_auroc"]["estimate"] > 0.85
    assert set(res["subgroups"]["sex"]["groups"]) == {"F", "M"} and res["subgroups"]["sex"]["unknown"] > 0
