"""MIMIC-CXR: the ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt`` report tree + ``mimic-cxr-2.0.0-chexpert.csv``."""

from __future__ import annotations

import re
from pathlib import Path

from dprad.data.reports import ReadResult, Report, decode_utf8, parse_label_value, read_table, require_columns
from dprad.data.schemas import CHEXPERT14
from dprad.errors import DpradError

CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
_SECTION = re.compile(r"^\s*([A-Z][A-Z /&()-]{2,40}):", re.M)
_REPORT = re.compile(r"^p(\d{2})/p(\d+)/s(\d+)\.txt$")


def split_sections(text: str) -> dict[str, str]:
    """Upper-case headed sections (``FINDINGS:``, ``IMPRESSION:`` ...) as lower-case keys -> body text."""
    sections: dict[str, str] = {}
    matches = list(_SECTION.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = " ".join(text[m.end() : end].split())
        key = m.group(1).strip().lower()
        sections[key] = f"{sections[key]} {body}".strip() if key in sections else body
    return sections


def report_text(sections: dict[str, str], raw: str) -> str:
    """Findings + impression where present; else the whole report (some studies have neither heading)."""
    parts = [sections.get("findings", ""), sections.get("impression", "")]
    text = " ".join(p for p in parts if p)
    return text or " ".join(raw.split())


def read_mimic_cxr(root: str | Path, *, labels_csv: str | Path | None = None) -> ReadResult:
    """Walk ``root/files`` (or ``root`` itself if it is the ``files`` folder) and join the CheXpert labels.

    Studies without a row in the labels CSV are kept with ``labels=None`` (and counted in a note).
    """
    root = Path(root)
    files = root / "files" if (root / "files").is_dir() else root
    if not files.is_dir():
        raise DpradError(f"{root}: not a MIMIC-CXR folder (expected files/pXX/pXXXXXXXX/sXXXXXXXX.txt)")
    csv_path = Path(labels_csv) if labels_csv else root / CHEXPERT_CSV
    labels: dict[tuple[str, str], dict[str, int]] = {}
    if csv_path.exists():
        df = read_table(csv_path, fmt="csv")
        require_columns(df, ("subject_id", "study_id", *CHEXPERT14.labels), path=csv_path)
        for row, rec in enumerate(df.to_dict(orient="records"), start=1):
            key = (str(rec["subject_id"]).strip(), str(rec["study_id"]).strip())
            if key in labels:
                raise DpradError(f"{csv_path}: row {row}: duplicate (subject_id, study_id) {key}")
            labels[key] = {
                name: v
                for name in CHEXPERT14.labels
                if (v := parse_label_value(rec[name], where=f"{csv_path}: row {row}: column '{name}'"))
                is not None
            }
    elif labels_csv:
        raise DpradError(f"{csv_path}: no such file")
    reports: list[Report] = []
    skipped: list[tuple[str, str]] = []
    unlabelled = 0
    for path in sorted(files.glob("p*/p*/s*.txt")):
        rel = path.relative_to(files).as_posix()
        m = _REPORT.match(rel)
        if not m or not m.group(2).startswith(m.group(1)):
            raise DpradError(f"{path}: not in the MIMIC-CXR layout pXX/pXXXXXXXX/sXXXXXXXX.txt")
        subject, study = m.group(2), m.group(3)
        raw = decode_utf8(path)
        sections = split_sections(raw)
        text = report_text(sections, raw)
        if not text:
            skipped.append((f"s{study}", "empty report"))
            continue
        lab = labels.get((subject, study))
        unlabelled += lab is None
        reports.append(
            Report(
                id=f"s{study}",
                patient_id=f"p{subject}",
                text=text,
                sections=sections,
                attrs={"site": "mimic-cxr"},
                labels=lab,
            )
        )
    if not reports:
        raise DpradError(f"{files}: no report files found in the pXX/pXXXXXXXX/sXXXXXXXX.txt layout")
    notes = [f"{unlabelled} studies have no row in {csv_path.name}"] if unlabelled else []
    return ReadResult(reports=reports, skipped=skipped, notes=notes)
