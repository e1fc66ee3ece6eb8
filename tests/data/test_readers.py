from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dprad import CHEXPERT14, CTRATE18, DpradError, UncertainPolicy, label_matrix, read_reports
from dprad.data.ct_rate import patient_from_volume
from dprad.data.iu_xray import mesh_to_chexpert, sex_from_indication
from dprad.data.mimic_cxr import read_mimic_cxr, split_sections

IU_EXPECTED = {
    "No Finding": 1379,
    "Cardiomegaly": 367,
    "Lung Opacity": 762,
    "Atelectasis": 315,
    "Support Devices": 236,
    "Pleural Effusion": 150,
    "Lung Lesion": 121,
    "Edema": 93,
    "Fracture": 83,
    "Enlarged Cardiomediastinum": 80,
    "Pleural Other": 57,
    "Pneumonia": 40,
    "Consolidation": 30,
    "Pneumothorax": 26,
}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_generic_csv_reads_labels_attrs_and_patients(tmp_path: Path) -> None:
    p = write(
        tmp_path / "r.csv",
        "id,patient_id,text,Cardiomegaly,Edema,sex,age,site\n"
        "a,p1,Big heart.,1,,F,70,x\n"
        "b,p1,Maybe edema.,0,-1,female,71,x\n"
        "c,p2,Normal.,,,M,,y\n",
    )
    result, schema, fmt = read_reports(p)
    assert (fmt, schema.name) == ("csv", "chexpert14")
    a, b, c = result.reports
    assert a.labels == {"Cardiomegaly": 1}
    assert b.labels == {"Cardiomegaly": 0, "Edema": -1}
    assert (b.attrs["sex"], b.attrs["age"], c.attrs["age"]) == ("F", 71.0, None)
    assert a.patient_id == b.patient_id == "p1"
    y, mask = label_matrix(result.reports, CHEXPERT14, policy=UncertainPolicy.IGNORE)
    j = CHEXPERT14.labels.index("Edema")
    assert y[1, j] == 0 and mask[1, j] == 0
    y1, _ = label_matrix(result.reports, CHEXPERT14)  # U-Ones by default
    assert y1[1, j] == 1


def test_jsonl_and_parquet_match_csv(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "x", "Lung nodule": 1}, {"id": "b", "text": "y", "Lung nodule": 0}]
    write(tmp_path / "r.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    pd.DataFrame(rows).to_parquet(tmp_path / "r.parquet")
    a, sa, _ = read_reports(tmp_path / "r.jsonl")
    b, sb, _ = read_reports(tmp_path / "r.parquet")
    assert sa.name == sb.name == "ctrate18"  # detected from the label columns
    assert (
        [r.labels for r in a.reports]
        == [r.labels for r in b.reports]
        == [{"Lung nodule": 1}, {"Lung nodule": 0}]
    )
    assert a.notes and "own patient" in a.notes[0]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", r"r\.csv: the file is empty"),
        ("id,text\n", r"header but no rows"),
        ("id,body\n1,x\n", r"missing column 'text' \(set it with --text-col\)"),
        ("id,text,Edema\n1,x,2\n", r"row 1: column 'Edema': label value '2' is not one of 1, 0, -1 or blank"),
        ("id,text,Edema\n1,x,yes\n", r"row 1: column 'Edema': label value 'yes'"),
        ("id,text\n1,x\n2,y\n1,z\n", r"row 3: column 'id': duplicate id '1' \(first at row 1\)"),
        ("id,text,age\n1,x,old\n", r"row 1: column 'age': age 'old' is not a number"),
    ],
)
def test_malformed_csv_gives_one_line_error(tmp_path: Path, content: str, match: str) -> None:
    p = write(tmp_path / "r.csv", content)
    with pytest.raises(DpradError, match=match) as err:
        read_reports(p)
    assert "\n" not in str(err.value)


def test_non_utf8_names_line_and_byte(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_bytes(b"id,text\n1,ok\n2,caf\xe9\n")
    with pytest.raises(DpradError, match=r"r\.csv: line 3: byte 18 \(0xe9\) is not valid UTF-8"):
        read_reports(p)


def test_patient_in_two_fixed_splits_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path / "r.csv", "id,patient_id,text,split\n1,p1,x,train\n2,p2,y,test\n3,p1,z,test\n")
    with pytest.raises(
        DpradError, match=r"row 3: column 'split': patient 'p1' is in split 'test' but also in .*'train'"
    ):
        read_reports(p, split_col="split")


def test_missing_patient_column_flag(tmp_path: Path) -> None:
    p = write(tmp_path / "r.csv", "id,text\n1,x\n")
    with pytest.raises(DpradError, match=r"missing column 'pid' \(set it with --patient-col\)"):
        read_reports(p, patient_col="pid")


def test_mesh_mapping_rules() -> None:
    assert mesh_to_chexpert("normal", "normal") == {"No Finding": 1}
    assert mesh_to_chexpert("x", "No Indexing") is None
    assert mesh_to_chexpert("Mediastinum/shift", "Mediastinum") == {}
    assert mesh_to_chexpert("Nodule/lung/calcified", "Nodule") == {}
    assert mesh_to_chexpert("Nodule/lung/upper lobe", "Nodule") == {"Lung Lesion": 1}
    assert mesh_to_chexpert("Hydropneumothorax/left", "Hydropneumothorax") == {
        "Pneumothorax": 1,
        "Pleural Effusion": 1,
    }
    assert mesh_to_chexpert("Catheters, Indwelling;Pleura/blunted", "x") == {"Support Devices": 1}
    assert mesh_to_chexpert("Cicatrix/pleura", "Cicatrix") == {"Pleural Other": 1}
    assert mesh_to_chexpert("Cicatrix/lung", "Cicatrix") == {"Lung Opacity": 1}
    assert mesh_to_chexpert("Lung/hilum/lymph nodes", "Lung") == {"Enlarged Cardiomediastinum": 1}
    assert sex_from_indication("62-year-old woman with cough") == "F"
    assert sex_from_indication("XXXX yom chest pain") == "M"
    assert sex_from_indication("chest pain") == "unknown"


def test_iu_xray_real_file_reproduces_mesh_prevalences(iu_csv: Path) -> None:
    raw = pd.read_csv(iu_csv, dtype=str, keep_default_na=False)
    counts = dict.fromkeys(CHEXPERT14.labels, 0)
    for mesh, problems in zip(raw["MeSH"], raw["Problems"], strict=True):
        for k in mesh_to_chexpert(mesh, problems) or {}:
            counts[k] += 1
    assert counts == IU_EXPECTED  # on all 3,851 rows, as published in the issue
    result, schema, fmt = read_reports(iu_csv)
    assert (fmt, schema.name, len(result.reports), len(result.skipped)) == ("iu-xray", "chexpert14", 3826, 25)
    assert sum(r.labels is None for r in result.reports) == 92
    sexes = {r.attrs["sex"] for r in result.reports}
    assert sexes == {"F", "M", "unknown"}


def test_ct_rate_manual_real_file(ct_manual_csv: Path) -> None:
    result, schema, fmt = read_reports(ct_manual_csv)
    assert (fmt, schema.name) == ("ct-rate-manual", "ctrate18")
    texts = [r.text for r in result.reports]
    assert len(texts) == len(set(texts))
    dups = [why for _, why in result.skipped if why.startswith("duplicate text")]
    assert dups and len(result.reports) + len(result.skipped) == 800
    assert all(set(r.labels or {}) == set(CTRATE18.labels) for r in result.reports)


def test_ct_rate_official_layout(tmp_path: Path) -> None:
    labels = ",".join(CTRATE18.labels)
    zeros = ",".join("0" for _ in CTRATE18.labels)
    write(
        tmp_path / "reports.csv",
        "VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n"
        "train_12_a_1.nii.gz,Cough.,CT.,Emphysema in both lungs.,Emphysema.\n"
        "train_12_a_2.nii.gz,Cough.,CT.,No change.,Stable.\n"
        "train_13_a_1.nii.gz,Pain.,CT.,Normal.,Normal.\n",
    )
    write(
        tmp_path / "labels.csv",
        f"VolumeName,{labels}\ntrain_12_a_1.nii.gz,{zeros}\ntrain_12_a_2.nii.gz,{zeros}\ntrain_13_a_1.nii.gz,{zeros}\n",
    )
    result, schema, fmt = read_reports(tmp_path / "reports.csv", labels_path=tmp_path / "labels.csv")
    assert fmt == "ct-rate" and schema.name == "ctrate18"
    assert [r.patient_id for r in result.reports] == ["train_12", "train_12", "train_13"]
    assert result.reports[0].text == "Emphysema in both lungs. Emphysema."
    assert patient_from_volume("valid_7_b_2") == "valid_7"
    with pytest.raises(DpradError, match="needs --labels"):
        read_reports(tmp_path / "reports.csv")


MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 FINDINGS:
 There is a small left pleural effusion.  No pneumothorax.

 IMPRESSION:
 Small left effusion.
"""


def test_mimic_cxr_tree(tmp_path: Path) -> None:
    root = tmp_path / "mimic"
    for subject, study in [("10000032", "50414267"), ("10000032", "53189527"), ("10000764", "57375967")]:
        d = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        d.mkdir(parents=True, exist_ok=True)
        write(d / f"s{study}.txt", MIMIC_REPORT)
    header = "subject_id,study_id," + ",".join(CHEXPERT14.labels)
    row = ",".join(
        "1.0" if n == "Pleural Effusion" else ("0.0" if n == "Pneumothorax" else "")
        for n in CHEXPERT14.labels
    )
    write(
        root / "mimic-cxr-2.0.0-chexpert.csv", f"{header}\n10000032,50414267,{row}\n10000764,57375967,{row}\n"
    )
    result, schema, fmt = read_reports(root)
    assert fmt == "mimic-cxr" and schema.name == "chexpert14"
    assert [r.id for r in result.reports] == ["s50414267", "s53189527", "s57375967"]
    assert [r.patient_id for r in result.reports] == ["p10000032", "p10000032", "p10000764"]
    first = result.reports[0]
    assert first.labels == {"Pleural Effusion": 1, "Pneumothorax": 0}
    assert first.text == "There is a small left pleural effusion. No pneumothorax. Small left effusion."
    assert result.reports[1].labels is None and "1 studies have no row" in result.notes[0]
    assert split_sections(MIMIC_REPORT)["indication"] == "___F with cough"


def test_mimic_bad_label_value(tmp_path: Path) -> None:
    root = tmp_path / "mimic"
    d = root / "files" / "p10" / "p10000032"
    d.mkdir(parents=True)
    write(d / "s1.txt", MIMIC_REPORT)
    header = "subject_id,study_id," + ",".join(CHEXPERT14.labels)
    write(
        root / "mimic-cxr-2.0.0-chexpert.csv",
        f"{header}\n10000032,1,{','.join('3' for _ in CHEXPERT14.labels)}\n",
    )
    with pytest.raises(DpradError, match=r"chexpert\.csv: row 1: column 'No Finding': label value '3'"):
        read_mimic_cxr(root)
