"""The report model and the generic CSV / JSONL / Parquet readers.

Every reader returns ``list[Report]`` and raises :class:`DpradError` with a one-line message naming the
file, row (1-based data row, header excluded) and column of the first problem it finds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dprad.data.schemas import LABEL_VALUES, LabelSchema, UncertainPolicy
from dprad.errors import DpradError

ATTR_COLUMNS = ("sex", "age", "site")
# the words a script writes for a missing value: never read as a blank label cell (see parse_label_value)
MISSING_WORDS = frozenset({"nan", "none", "null", "na", "n/a"})
# a cell that is only a number (sign, digits, decimal point, exponent): not report text
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class Report:
    """One radiology report.

    ``labels`` follows the CheXpert convention: 1 positive, 0 negative, -1 uncertain; a label that is
    absent from the dict was not mentioned. ``labels is None`` means the report has no gold labels at all.
    """

    id: str
    patient_id: str
    text: str
    sections: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, int] | None = None


@dataclass(frozen=True)
class ReadResult:
    """Reports plus what the reader skipped and why (never dropped silently)."""

    reports: list[Report]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    notes: list[str] = field(default_factory=list)
    schema: LabelSchema | None = None  # the schema the reader matched label columns against


def label_matrix(
    reports: Sequence[Report], schema: LabelSchema, *, policy: UncertainPolicy = UncertainPolicy.ONES
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and a mask, both ``(N, L)`` float32.

    Not mentioned -> 0. Uncertain -> 1 (ones), 0 (zeros) or masked (ignore). Reports with no labels at
    all are fully masked.
    """
    n, k = len(reports), len(schema.labels)
    y = np.zeros((n, k), dtype=np.float32)
    mask = np.ones((n, k), dtype=np.float32)
    for i, r in enumerate(reports):
        if r.labels is None:
            mask[i] = 0.0
            continue
        for j, name in enumerate(schema.labels):
            v = r.labels.get(name)
            if v == 1:
                y[i, j] = 1.0
            elif v == -1:
                if policy is UncertainPolicy.ONES:
                    y[i, j] = 1.0
                elif policy is UncertainPolicy.IGNORE:
                    mask[i, j] = 0.0
    return y, mask


def parse_label_value(raw: Any, *, where: str) -> int | None:
    """1 / 0 / -1 / blank (None). Floats like ``1.0`` are accepted; anything else is an error.

    Blank is an empty cell, or a missing value in a typed file (JSON ``null``, a Parquet null, a key a
    JSONL line leaves out). The text ``nan`` (or ``none``, ``null``) in a cell is not blank: it is what a
    table gets when a script writes a missing or failed label as a string, and reading it as "not
    mentioned" would train on a guess."""
    if raw is None:
        return None
    if isinstance(raw, float) and math.isnan(raw):
        return None
    if isinstance(raw, str):
        s = raw.strip()
        if s == "":
            return None
        if s.lower() in MISSING_WORDS:
            raise DpradError(
                f"{where}: label value '{raw}' is not one of 1, 0, -1 or blank "
                "(leave the cell empty for a label the report does not mention)"
            )
        try:
            value = float(s)
        except ValueError:
            raise DpradError(f"{where}: label value '{raw}' is not one of 1, 0, -1 or blank") from None
    elif isinstance(raw, int | float | np.integer | np.floating):
        value = float(raw)
    else:
        raise DpradError(f"{where}: label value '{raw}' is not one of 1, 0, -1 or blank")
    if value not in LABEL_VALUES:
        raise DpradError(f"{where}: label value '{raw}' is not one of 1, 0, -1 or blank")
    return int(value)


def decode_utf8(path: Path) -> str:
    """The file's text, or an error naming the line and byte of the first non-UTF-8 byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DpradError(
            f"{path}: line {line}: byte {err.start} (0x{data[err.start]:02x}) is not valid UTF-8"
        ) from None


def read_table(path: Path, *, fmt: str | None = None) -> pd.DataFrame:
    """CSV / JSONL / Parquet as an all-string-or-object DataFrame, with clear errors for empty/undecodable."""
    if not path.exists():
        raise DpradError(f"{path}: no such file")
    if path.is_dir():
        raise DpradError(f"{path}: is a folder, expected a file (or pass the matching --format)")
    kind = fmt or _format_from_suffix(path)
    if kind == "parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as err:  # noqa: BLE001 - any parse failure becomes one line naming the file
            raise DpradError(f"{path}: not a readable Parquet file: {err}") from None
        if df.empty:
            raise DpradError(f"{path}: the file has no rows")
        return df
    text = decode_utf8(path)
    if not text.strip():
        raise DpradError(f"{path}: the file is empty")
    if kind == "jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DpradError(f"{path}: line {lineno}: not valid JSON: {err.msg}") from None
            if not isinstance(obj, dict):
                raise DpradError(f"{path}: line {lineno}: each line must be a JSON object")
            rows.append(obj)
        return pd.DataFrame(rows)
    import io

    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as err:
        raise DpradError(f"{path}: not valid CSV: {' '.join(str(err).split())}") from None
    if df.empty:
        raise DpradError(f"{path}: the file has a header but no rows")
    return df


def _format_from_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    return "csv"


def require_columns(df: pd.DataFrame, columns: Iterable[str], *, path: Path, flag: str | None = None) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        hint = f" (set it with {flag})" if flag else ""
        have = ", ".join(map(str, df.columns[:12]))
        raise DpradError(f"{path}: missing column '{missing[0]}'{hint}; columns are: {have}")


def check_unique_ids(ids: Sequence[str], *, path: Path, column: str) -> None:
    seen: dict[str, int] = {}
    for row, rid in enumerate(ids, start=1):
        if rid in seen:
            raise DpradError(
                f"{path}: row {row}: column '{column}': duplicate id '{rid}' (first at row {seen[rid]})"
            )
        seen[rid] = row


def read_generic(
    path: str | Path,
    schema: LabelSchema | None,
    *,
    fmt: str | None = None,
    text_col: str = "text",
    id_col: str = "id",
    patient_col: str | None = None,
    split_col: str | None = None,
) -> ReadResult:
    """A plain table: one report per row. Label columns are the schema's label names that appear as columns.

    ``patient_col`` defaults to ``patient_id`` when present, else each report is its own patient (and a note
    says so: a patient-level split cannot be guaranteed without patient ids). ``sex``, ``age`` and ``site``
    columns become attributes. ``split_col`` gives fixed splits; a patient in two of them is an error.
    """
    path = Path(path)
    df = read_table(path, fmt=fmt)
    require_columns(df, [text_col], path=path, flag="--text-col")
    require_columns(df, [id_col], path=path, flag="--id-col")
    notes: list[str] = []
    if patient_col is None:
        if "patient_id" in df.columns:
            patient_col = "patient_id"
        else:
            notes.append("no patient column: each report is treated as its own patient")
    else:
        require_columns(df, [patient_col], path=path, flag="--patient-col")
    if split_col is not None:
        require_columns(df, [split_col], path=path, flag="--split-col")
    if schema is None:
        schema = schema_from_columns(df.columns)
    label_cols = [c for c in schema.labels if c in df.columns]
    if not label_cols:
        notes.append(f"no column matches a label of schema '{schema.name}': reports carry no gold labels")
    ids = [_cell_str(v) for v in df[id_col]]
    for row, rid in enumerate(ids, start=1):
        if not rid:
            raise DpradError(f"{path}: row {row}: column '{id_col}': empty id")
    check_unique_ids(ids, path=path, column=id_col)

    reports: list[Report] = []
    skipped: list[tuple[str, str]] = []
    patient_split: dict[str, tuple[str, int]] = {}
    records = df.to_dict(orient="records")
    for row, rec in enumerate(records, start=1):
        rid = ids[row - 1]
        text = _text_cell(rec[text_col], where=f"{path}: row {row}: column '{text_col}'")
        pid = _cell_str(rec[patient_col]) if patient_col else rid
        if patient_col and not pid:
            raise DpradError(f"{path}: row {row}: column '{patient_col}': empty patient id")
        labels: dict[str, int] | None = None
        unlabelled = LABELLED_COL in df.columns and _cell_str(rec[LABELLED_COL]) in {
            "0",
            "0.0",
            "false",
            "False",
        }
        if label_cols and not unlabelled:
            labels = {}
            for col in label_cols:
                v = parse_label_value(rec[col], where=f"{path}: row {row}: column '{col}'")
                if v is not None:
                    labels[col] = v
        if unlabelled and any(_cell_str(rec[c]) for c in label_cols):
            raise DpradError(
                f"{path}: row {row}: column '{LABELLED_COL}' is 0 (no labels) but a label cell is filled"
            )
        attrs: dict[str, Any] = {}
        for col in ATTR_COLUMNS:
            if col in df.columns:
                attrs[col] = _attr_value(col, rec[col], where=f"{path}: row {row}: column '{col}'")
        if split_col is not None:
            split = _cell_str(rec[split_col])
            if not split:
                raise DpradError(f"{path}: row {row}: column '{split_col}': empty split name")
            prev = patient_split.setdefault(pid, (split, row))
            if prev[0] != split:
                raise DpradError(
                    f"{path}: row {row}: column '{split_col}': patient '{pid}' is in split '{split}' "
                    f"but also in split '{prev[0]}' (row {prev[1]}): a patient must stay in one split"
                )
            attrs["split"] = split
        if not text.strip():
            skipped.append((rid, "empty text"))
            continue
        reports.append(Report(id=rid, patient_id=pid, text=text, sections={}, attrs=attrs, labels=labels))
    if not reports:
        raise DpradError(f"{path}: no report has text in column '{text_col}'")
    return ReadResult(reports=reports, skipped=skipped, notes=notes, schema=schema)


# "labelled": 1 when the row's blank label cells mean "not mentioned", 0 when the report has no labels
# at all (e.g. IU's 'No Indexing' reports, or a teacher that failed): dprad's own tables always write it
LABELLED_COL = "labelled"


def schema_from_columns(columns: Iterable[object]) -> LabelSchema:
    """The built-in schema with the most label columns present (CheXpert-14 when none match)."""
    from dprad.data.schemas import BUILTIN_SCHEMAS, CHEXPERT14

    cols = {str(c) for c in columns}
    best = max(BUILTIN_SCHEMAS.values(), key=lambda s: len(cols & set(s.labels)))
    return best if cols & set(best.labels) else CHEXPERT14


def _cell_str(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _text_cell(v: Any, *, where: str) -> str:
    """A report's text: a string (or empty). Numbers, lists or bytes in a typed file (Parquet, JSONL) are
    refused: read as "0", "1", ... they would be trained on as if they were reports. So is a cell of an
    untyped file (CSV, or a JSON string) that holds only a number: a CSV has no types, so a wrong
    --text-col reads "5", "6" as strings; no report is a bare number."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if not isinstance(v, str):
        raise DpradError(
            f"{where}: expected report text, found {type(v).__name__} {v!r:.40} "
            "(is --text-col the right column?)"
        )
    text = v.strip()
    if NUMBER.fullmatch(text):
        raise DpradError(
            f"{where}: expected report text, found the number '{text:.40}' (is --text-col the right column?)"
        )
    return text


def _attr_value(col: str, v: Any, *, where: str) -> Any:
    s = _cell_str(v)
    if col == "age":
        if not s:
            return None
        try:
            age = float(s)
        except ValueError:
            raise DpradError(f"{where}: age '{s}' is not a number") from None
        if not 0 <= age <= 130:
            raise DpradError(f"{where}: age '{s}' is outside 0-130")
        return age
    if col == "sex":
        low = s.lower()
        if low in {"f", "female", "w", "woman"}:
            return "F"
        if low in {"m", "male", "man"}:
            return "M"
        return "unknown"
    return s or "unknown"
