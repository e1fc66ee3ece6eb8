"""One entry point for every input format: ``read_reports(path, format=...)``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dprad.config import FORMATS
from dprad.data.ct_rate import read_ct_rate_manual, read_ct_rate_official
from dprad.data.iu_xray import read_iu_xray
from dprad.data.mimic_cxr import read_mimic_cxr
from dprad.data.reports import ReadResult, read_generic
from dprad.data.schemas import CHEXPERT14, CTRATE18, LabelSchema
from dprad.errors import DpradError

if TYPE_CHECKING:
    from dprad.config import DataConfig

DEFAULT_SCHEMA = {
    "iu-xray": CHEXPERT14,
    "mimic-cxr": CHEXPERT14,
    "ct-rate": CTRATE18,
    "ct-rate-manual": CTRATE18,
}


def detect_format(path: Path) -> str:
    """Guess the format from the path (and a CSV's header line)."""
    if path.is_dir():
        return "mimic-cxr"
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    with path.open("rb") as fh:
        header = fh.readline().decode("utf-8", "replace")
    if header.startswith("uid,MeSH,Problems"):
        return "iu-xray"
    if header.startswith("AccessionNo,report_text"):
        return "ct-rate-manual"
    if header.startswith("VolumeName,") and "Findings_EN" in header:
        return "ct-rate"
    return "csv"


def read_reports(
    path: str | Path,
    *,
    format: str = "auto",
    schema: LabelSchema | None = None,
    text_col: str = "text",
    id_col: str = "id",
    patient_col: str | None = None,
    split_col: str | None = None,
    labels_path: str | Path | None = None,
) -> tuple[ReadResult, LabelSchema, str]:
    """Read reports; returns (result, schema used, format used)."""
    path = Path(path)
    if format not in FORMATS:
        raise DpradError(f"--format '{format}' is not one of: {', '.join(FORMATS)}")
    if not path.exists():
        raise DpradError(f"{path}: no such file or folder")
    fmt = detect_format(path) if format == "auto" else format
    if fmt in DEFAULT_SCHEMA:
        schema = schema or DEFAULT_SCHEMA[fmt]
    if schema is not None and fmt in DEFAULT_SCHEMA and schema.name != DEFAULT_SCHEMA[fmt].name:
        raise DpradError(
            f"--schema '{schema.name}' does not fit --format {fmt} (it uses {DEFAULT_SCHEMA[fmt].name})"
        )
    if fmt == "iu-xray":
        result = read_iu_xray(path)
    elif fmt == "ct-rate-manual":
        result = read_ct_rate_manual(path)
    elif fmt == "ct-rate":
        if labels_path is None:
            raise DpradError(
                "--format ct-rate needs --labels PATH (the CT-RATE labels CSV joined on VolumeName)"
            )
        result = read_ct_rate_official(path, labels_path)
    elif fmt == "mimic-cxr":
        result = read_mimic_cxr(path, labels_csv=labels_path)
    else:
        result = read_generic(
            path,
            schema,
            fmt=fmt,
            text_col=text_col,
            id_col=id_col,
            patient_col=patient_col,
            split_col=split_col,
        )
    schema = schema or result.schema or CHEXPERT14
    return result, schema, fmt


def read_data(data: DataConfig) -> tuple[ReadResult, LabelSchema, str]:
    """:func:`read_reports` with a run's data settings: the one place a config's reader flags are applied
    (training, evaluating a run's own splits, the audit, the monitor and sweeps all read through it)."""
    from dprad.data.schemas import load_schema

    return read_reports(
        data.path,
        format=data.format,
        schema=load_schema(data.schema) if data.schema else None,
        text_col=data.text_col,
        id_col=data.id_col,
        patient_col=data.patient_col,
        split_col=data.split_col,
        labels_path=data.labels_path,
    )
