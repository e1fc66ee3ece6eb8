"""Who wrote a table's labels: the sidecar ``<table>.teacher.json`` that ``dprad label`` writes next to
its output, read back when a run trains on that table (into ``data.teacher``, and from there the model
card). A sidecar travels with CSV, JSONL and Parquet alike, which a table's own metadata would not."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from dprad import io
from dprad.errors import DpradError

SIDECAR_SUFFIX = ".teacher.json"


@dataclass(frozen=True)
class TeacherRecord:
    teacher: str  # rules, llm or gold
    detail: str  # what exactly: the rule set, or the LLM's model, server and structured-output dialect
    source: str  # the file the reports were read from
    reports: int
    unlabelled: int  # reports the teacher gave no labels (an LLM's failures)

    def describe(self) -> str:
        """One sentence for the model card and the run's config."""
        gaps = f", {self.unlabelled} left unlabelled" if self.unlabelled else ""
        return f"{self.teacher} ({self.detail}); `dprad label` on {self.source}, {self.reports} reports{gaps}"


def rules_detail(schema_name: str) -> str:
    return f"dprad's negation-aware rules for {schema_name}"


def sidecar(table: str | Path) -> Path:
    table = Path(table)
    return table.with_name(table.name + SIDECAR_SUFFIX)


def write_record(table: str | Path, record: TeacherRecord) -> None:
    io.write_json(sidecar(table), asdict(record))


def read_record(table: str | Path) -> TeacherRecord | None:
    """The record beside ``table``, or None when there is none. A malformed one is an error, not ignored."""
    path = sidecar(table)
    if not path.is_file():
        return None
    try:
        return TeacherRecord(**json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise DpradError(
            f"{path}: not a dprad teacher record ({err}); remove it or rewrite it with dprad label"
        ) from None


def teacher_of(data_path: str, labels_path: str | None) -> str | None:
    """The recorded teacher of a run's labels: beside the labels file if it has one, else the data file."""
    table = labels_path or data_path
    if not table:
        return None
    record = read_record(table)
    return record.describe() if record is not None else None
