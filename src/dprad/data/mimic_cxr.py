"""MIMIC-CXR: the ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt`` report tree + ``mimic-cxr-2.0.0-chexpert.csv``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
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

    Never silent about a mismatch: studies without a row in the labels CSV are kept with ``labels=None``
    and counted in a note; rows of the CSV that name no study in the tree are counted in a note (with the
    first one named); reports with neither a FINDINGS nor an IMPRESSION heading are kept with their whole
    text and counted in a note; an empty report is skipped (listed in ``skipped``). A report file that is
    not UTF-8 is refused: a one-line error naming the file, line and byte.
    """
    root = Path(root)
    files = root / "files" if (root / "files").is_dir() else root
    if not files.is_dir():
        raise DpradError(f"{root}: not a MIMIC-CXR folder (expected files/pXX/pXXXXXXXX/sXXXXXXXX.txt)")
    csv_path = Path(labels_csv) if labels_csv else root / CHEXPERT_CSV
    if csv_path.exists():
        labels = read_chexpert_csv(csv_path)
    elif labels_csv:
        raise DpradError(f"{csv_path}: no such file")
    else:
        labels = {}
    reports: list[Report] = []
    skipped: list[tuple[str, str]] = []
    unlabelled = 0
    no_heading: list[str] = []
    for path, subject, study in study_files(files):
        lab = labels.pop((subject, study), None)  # what is left at the end names no study
        raw = _read_utf8(path)
        sections = split_sections(raw)
        text = report_text(sections, raw)
        if not text:
            skipped.append((f"s{study}", "empty report"))
            continue
        if "findings" not in sections and "impression" not in sections:
            no_heading.append(f"p{subject[:2]}/p{subject}/s{study}.txt")
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
    if no_heading:
        notes.append(
            f"{len(no_heading)} reports have neither a FINDINGS nor an IMPRESSION heading: their whole text "
            f"is used (first: {no_heading[0]})"
        )
    if labels:
        subject, study = next(iter(labels))
        notes.append(
            f"{len(labels)} rows of {csv_path.name} name a study with no report file under {files.name}/ "
            f"(first: subject_id {subject}, study_id {study}); they are not used"
        )
    return ReadResult(reports=reports, skipped=skipped, notes=notes)


def study_files(files: Path) -> Iterator[tuple[str, str, str]]:
    """``(path, subject, study)`` of every ``pXX/pXXXXXXXX/sXXXXXXXX.txt`` under ``files``, in path order.

    One ``os.scandir`` per folder (no stat per file); a ``p*`` / ``s*.txt`` name outside the layout is an
    error naming it, other names (``index.html``, hidden files) are not reports and are passed over."""
    for group in _entries(str(files), "p", ""):
        if not group.is_dir():
            continue
        for subject in _entries(group.path, "p", ""):
            if not subject.is_dir():
                continue
            for entry in _entries(subject.path, "s", ".txt"):
                rel = f"{group.name}/{subject.name}/{entry.name}"
                m = _REPORT.match(rel)
                if not m or not m.group(2).startswith(m.group(1)):
                    raise DpradError(f"{entry.path}: not in the MIMIC-CXR layout pXX/pXXXXXXXX/sXXXXXXXX.txt")
                if entry.is_dir():
                    raise DpradError(f"{entry.path}: is a folder, expected a report file")
                yield entry.path, m.group(2), m.group(3)


def _entries(folder: str, prefix: str, suffix: str) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as it:
        found = [e for e in it if e.name.startswith(prefix) and e.name.endswith(suffix)]
    return sorted(found, key=lambda e: e.name)


def _read_utf8(path: str) -> str:
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return decode_utf8(Path(path))  # raises the one-line error naming the file, line and byte


# the label cells the real file holds, parsed once; any other cell goes through parse_label_value
_CELL = {"": None, "1.0": 1, "0.0": 0, "-1.0": -1, "1": 1, "0": 0, "-1": -1}


def read_chexpert_csv(path: Path) -> dict[tuple[str, str], dict[str, int]]:
    """``(subject_id, study_id) -> labels`` (blank cells left out); one-line errors name row and column."""
    df = read_table(path, fmt="csv")
    require_columns(df, ("subject_id", "study_id", *CHEXPERT14.labels), path=path)
    subjects = [s.strip() for s in df["subject_id"]]
    studies = [s.strip() for s in df["study_id"]]
    keys = list(zip(subjects, studies, strict=True))
    columns = []
    for name in CHEXPERT14.labels:
        cells = df[name].tolist()
        parsed = [_CELL.get(c, _CELL) for c in cells]
        for row, (c, v) in enumerate(zip(cells, parsed, strict=True), start=1):
            if v is _CELL:  # not a cell the real file writes: parse it (or refuse it) the general way
                parsed[row - 1] = parse_label_value(c, where=f"{path}: row {row}: column '{name}'")
        columns.append(parsed)
    labels: dict[tuple[str, str], dict[str, int]] = {}
    first: dict[tuple[str, str], int] = {}
    for row, (key, *values) in enumerate(zip(keys, *columns, strict=True), start=1):
        if key in labels:
            raise DpradError(
                f"{path}: row {row}: duplicate (subject_id, study_id) {key} (first at row {first[key]})"
            )
        first[key] = row
        labels[key] = {n: v for n, v in zip(CHEXPERT14.labels, values, strict=True) if v is not None}
    return labels
