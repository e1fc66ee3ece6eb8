"""The labelled-table format dprad writes: ``id, patient_id, text``, one column per schema label, attributes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from dprad.data.reports import ATTR_COLUMNS, LABELLED_COL, Report
from dprad.data.schemas import LabelSchema
from dprad.io import write_with


def reports_frame(
    reports: Sequence[Report],
    schema: LabelSchema,
    *,
    labels: Sequence[Mapping[str, int] | None] | None = None,
) -> pd.DataFrame:
    """One row per report; label cells are 1 / 0 / -1 or empty (not mentioned), and a ``labelled`` column
    (0: the report has no labels at all), so that reading the table back is lossless."""
    rows = []
    for i, r in enumerate(reports):
        lab = labels[i] if labels is not None else r.labels
        row: dict[str, object] = {"id": r.id, "patient_id": r.patient_id, "text": r.text}
        for name in schema.labels:
            v = None if lab is None else lab.get(name)
            row[name] = "" if v is None else str(v)
        row[LABELLED_COL] = 0 if lab is None else 1  # blank cells of an unlabelled report mean "no labels"
        for col in ATTR_COLUMNS:
            if col in r.attrs:
                v = r.attrs[col]
                row[col] = "" if v is None else v
        rows.append(row)
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, out: str | Path) -> None:
    """CSV, JSONL or Parquet by suffix, written atomically."""
    out = Path(out)
    suffix = out.suffix.lower()

    def _write(tmp: Path) -> None:
        if suffix in {".parquet", ".pq"}:
            df.to_parquet(tmp, index=False)
        elif suffix in {".jsonl", ".ndjson"}:
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            df.to_csv(tmp, index=False)

    write_with(out, _write)
