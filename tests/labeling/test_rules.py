from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dprad import CHEXPERT14, CTRATE18, SynthConfig, generate_reports, load_schema, read_reports
from dprad.cli import main
from dprad.labeling.agreement import agreement
from dprad.labeling.rules import CHEXPERT_RULES, CTRATE_RULES, label_text, rules_for


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Small left pleural effusion.", {"Pleural Effusion": 1}),
        ("No pleural effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0, "No Finding": 1}),
        (
            "No focal consolidation, suspicious opacity, pneumothorax or definite pleural effusion.",
            {
                "Consolidation": 0,
                "Lung Opacity": 0,
                "Pneumothorax": 0,
                "Pleural Effusion": 0,
                "No Finding": 1,
            },
        ),
        ("Cannot exclude pneumonia.", {"Pneumonia": -1}),
        ("Pneumonia is not excluded.", {"Pneumonia": -1}),
        ("Atelectasis versus pneumonia in the left base.", {"Atelectasis": -1, "Pneumonia": -1}),
        ("Pleural effusion is no longer seen.", {"Pleural Effusion": 0, "No Finding": 1}),
        (
            "No pneumothorax. There is a small right pneumothorax.",
            {"Pneumothorax": 1},
        ),  # positive beats negative
        (
            "Possible small effusion. No effusion on the left.",
            {"Pleural Effusion": -1},
        ),  # uncertain beats negative
        ("History of pneumonia. Lungs are clear.", {"No Finding": 1}),  # history is not a current finding
        ("Right PICC line with tip in the SVC. Lungs are clear.", {"Support Devices": 1, "No Finding": 1}),
        ("No effusion but there is cardiomegaly.", {"Pleural Effusion": 0, "Cardiomegaly": 1}),
        (
            "Calcified granuloma in the right upper lobe.",
            {},
        ),  # abnormal, but not a CheXpert label: blocks No Finding
    ],
)
def test_chexpert_conventions(text: str, expected: dict[str, int]) -> None:
    assert label_text(text, CHEXPERT_RULES) == expected


def test_ct_phrasing() -> None:
    text = (
        "Pericardial effusion-thickening was not observed. Calcific atheroma plaques in the aorta and coronary "
        "arteries. No enlarged lymph nodes were detected. Cardiothoracic index increased in favor of the heart."
    )
    got = label_text(text, CTRATE_RULES)
    assert got["Pericardial effusion"] == 0 and got["Lymphadenopathy"] == 0
    assert got["Arterial wall calcification"] == 1 and got["Coronary artery wall calcification"] == 1
    assert got["Cardiomegaly"] == 1


def test_user_schema_terms(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("name: mine\nlabels: [Nodule, Mass]\nterms: {Nodule: [nodule], Mass: [lung mass, tumor]}\n")
    rules = rules_for(load_schema(str(p)))
    assert label_text("A 5 mm nodule. No lung mass.", rules) == {"Nodule": 1, "Mass": 0}
    bad = tmp_path / "b.yaml"
    bad.write_text("labels: [Nodule, Mass]\nterms: {Nodule: [nodule]}\n")
    with pytest.raises(Exception, match=r"needs 'terms'.*Mass"):
        rules_for(load_schema(str(bad)))


def test_rules_recover_the_synthetic_corpus() -> None:
    # (speed is measured outside the tests: 9,989 reports in about 2 s on the reference machine, see the note)
    reports = generate_reports(SynthConfig(n_patients=3000, seed=0))
    labels = [label_text(r.text, CHEXPERT_RULES) for r in reports]
    rep = agreement(labels, [r.labels for r in reports], CHEXPERT14)
    assert rep["weighted_f1"] > 0.9, rep["weighted_f1"]


def _check(rep: dict, target: float) -> None:
    assert rep["weighted_f1"] >= target, rep["weighted_f1"]
    for row in rep["per_label"]:
        if row["gold_positive"] >= 20:
            assert row["recall"] > 0, row["label"]


def test_rules_vs_iu_mesh_gold(iu_csv: Path) -> None:
    result, schema, _ = read_reports(iu_csv)
    reps = [r for r in result.reports if r.labels is not None]
    _check(
        agreement([label_text(r.text, CHEXPERT_RULES) for r in reps], [r.labels for r in reps], schema), 0.85
    )


def test_rules_vs_ct_rate_manual_labels(ct_manual_csv: Path) -> None:
    result, schema, _ = read_reports(ct_manual_csv)
    assert schema is CTRATE18
    reps = result.reports
    _check(
        agreement([label_text(r.text, CTRATE_RULES) for r in reps], [r.labels for r in reps], schema), 0.85
    )


def test_cli_label_rules_with_agreement(tmp_path: Path) -> None:
    data = tmp_path / "s.csv"
    main(["synth", "--out", str(data), "--patients", "150"])
    out, agree = tmp_path / "rules.csv", tmp_path / "agree.json"
    main(
        [
            "label",
            str(data),
            "--teacher",
            "rules",
            "--out",
            str(out),
            "--gold-from",
            str(data),
            "--agreement-out",
            str(agree),
        ]
    )
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(df.columns[:17]) == ["id", "patient_id", "text", *CHEXPERT14.labels]
    assert set(df["Pleural Effusion"]) <= {"1", "0", "-1", ""}
    import json

    rep = json.loads(agree.read_text())
    assert rep["reports"] == len(df) and len(rep["per_label"]) == 14
    assert "positive" in rep["per_label"][0]["confusion_gold_by_teacher"]


def test_agreement_intervals_bracket_the_estimate_and_resample_patients() -> None:
    # 40 reports, 20 patients with two identical reports each: gold Edema on 20, the teacher finds 15
    gold = [{"Edema": 1} if i < 20 else {"Edema": 0} for i in range(40)]
    found = [{"Edema": 1} if i < 15 else {"Edema": 0} for i in range(40)]
    by_patient = [f"p{i // 2}" for i in range(40)]
    by_report = [f"r{i}" for i in range(40)]
    rep = agreement(found, gold, CHEXPERT14, patient_ids=by_patient, n_boot=2000)
    edema = next(r for r in rep["per_label"] if r["label"] == "Edema")
    ci = edema["ci"]["recall"]
    assert edema["recall"] == 0.75 and ci["ci_low"] < 0.75 < ci["ci_high"]
    w = rep["weighted_f1_ci"]
    assert w["ci_low"] <= rep["weighted_f1"] <= w["ci_high"]
    # two reports of one patient are one draw: the interval is wider than if they were independent
    flat = next(
        r
        for r in agreement(found, gold, CHEXPERT14, patient_ids=by_report, n_boot=2000)["per_label"]
        if r["label"] == "Edema"
    )
    assert (
        ci["ci_high"] - ci["ci_low"]
        > (flat["ci"]["recall"]["ci_high"] - flat["ci"]["recall"]["ci_low"]) * 1.2
    )
