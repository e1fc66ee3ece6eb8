"""CT-RATE chest CT reports: the official reports + labels CSVs, and the manually labelled set."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable, Mapping
from pathlib import Path

from dprad.data.reports import (
    ReadResult,
    Report,
    check_unique_ids,
    parse_label_value,
    read_table,
    require_columns,
)
from dprad.data.schemas import CTRATE18
from dprad.errors import DpradError

OFFICIAL_REPORT_COLUMNS = (
    "VolumeName",
    "ClinicalInformation_EN",
    "Technique_EN",
    "Findings_EN",
    "Impressions_EN",
)
_VOLUME = re.compile(r"^(?P<patient>(train|valid|test)_\d+)_[a-z]+_\d+(\.nii(\.gz)?)?$")


def patient_from_volume(volume: str) -> str:
    """``train_12_a_1`` (or ``train_12_a_1.nii.gz``) -> ``train_12``; other names are their own patient."""
    m = _VOLUME.match(volume.strip())
    return m.group("patient") if m else volume.strip()


def _labels(rec: Mapping[Hashable, object], *, where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in CTRATE18.labels:
        v = parse_label_value(rec[name], where=f"{where}: column '{name}'")
        if v is not None:
            out[name] = v
    return out


def read_ct_rate_manual(path: str | Path) -> ReadResult:
    """``AccessionNo, report_text`` + the 18 label columns. Identical texts are kept once (first row wins)."""
    path = Path(path)
    df = read_table(path, fmt="csv")
    require_columns(df, ("AccessionNo", "report_text", *CTRATE18.labels), path=path)
    ids = [str(v).strip() for v in df["AccessionNo"]]
    check_unique_ids(ids, path=path, column="AccessionNo")
    reports: list[Report] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for row, rec in enumerate(df.to_dict(orient="records"), start=1):
        where = f"{path}: row {row}"
        rid = ids[row - 1]
        if not rid:
            raise DpradError(f"{where}: column 'AccessionNo': empty id")
        labels = _labels(rec, where=where)
        text = " ".join(str(rec["report_text"]).split())
        if not text:
            skipped.append((rid, "empty report_text"))
            continue
        key = hashlib.sha256(text.encode()).hexdigest()
        if key in seen:
            skipped.append((rid, f"duplicate text of {seen[key]}"))
            continue
        seen[key] = rid
        reports.append(
            Report(
                id=rid,
                patient_id=patient_from_volume(rid),
                text=text,
                attrs={"site": "ct-rate"},
                labels=labels,
            )
        )
    return ReadResult(reports=reports, skipped=skipped)


def read_ct_rate_official(reports_path: str | Path, labels_path: str | Path) -> ReadResult:
    """The official layout: a reports CSV joined on ``VolumeName`` to a labels CSV with the 18 columns."""
    reports_path, labels_path = Path(reports_path), Path(labels_path)
    rdf = read_table(reports_path, fmt="csv")
    require_columns(rdf, OFFICIAL_REPORT_COLUMNS, path=reports_path)
    ldf = read_table(labels_path, fmt="csv")
    require_columns(ldf, ("VolumeName", *CTRATE18.labels), path=labels_path)
    check_unique_ids([str(v).strip() for v in rdf["VolumeName"]], path=reports_path, column="VolumeName")
    check_unique_ids([str(v).strip() for v in ldf["VolumeName"]], path=labels_path, column="VolumeName")
    labels_by_volume: dict[str, dict[str, int]] = {}
    for row, rec in enumerate(ldf.to_dict(orient="records"), start=1):
        labels_by_volume[str(rec["VolumeName"]).strip()] = _labels(rec, where=f"{labels_path}: row {row}")
    reports: list[Report] = []
    skipped: list[tuple[str, str]] = []
    for rec in rdf.to_dict(orient="records"):
        vol = str(rec["VolumeName"]).strip()
        sections = {
            "clinical_information": " ".join(str(rec["ClinicalInformation_EN"]).split()),
            "technique": " ".join(str(rec["Technique_EN"]).split()),
            "findings": " ".join(str(rec["Findings_EN"]).split()),
            "impression": " ".join(str(rec["Impressions_EN"]).split()),
        }
        text = " ".join(x for x in (sections["findings"], sections["impression"]) if x)
        if not text:
            skipped.append((vol, "no findings and no impression"))
            continue
        labels = labels_by_volume.get(vol)
        if labels is None:
            skipped.append((vol, f"no row in {labels_path.name}"))
            continue
        reports.append(
            Report(
                id=vol,
                patient_id=patient_from_volume(vol),
                text=text,
                sections=sections,
                attrs={"site": "ct-rate"},
                labels=labels,
            )
        )
    if not reports:
        raise DpradError(f"{reports_path}: no report matched a VolumeName in {labels_path}")
    return ReadResult(reports=reports, skipped=skipped)
