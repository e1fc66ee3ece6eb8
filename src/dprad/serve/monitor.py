"""Monitoring a deployed run: drift of new reports against the run's own reference, rare-label sensitivity.

The reference is what the run looked like on data it was validated on: its test split's scores (numbers
only, never text), predicted prevalence at the run's thresholds, report length, vocabulary coverage and,
where the reports had labels, per-label sensitivity with confidence intervals. Training stores it as
``RUN/reference.json`` (``write_reference`` writes it again for a finished run); without that file the
monitor scores the run's test split again.

This module is the run-level part: it reads the run through :class:`dprad.run.RunRecord`, scores reports
with the run's model and hands the numbers to the pure statistics of :mod:`dprad.metrics.drift` (PSI, KS,
Newcombe intervals, the comparison and its alerts).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dprad.data.reports import Report
from dprad.errors import DpradError
from dprad.io import write_json
from dprad.metrics.drift import (
    REFERENCE_FORMAT,
    MonitorOptions,
    MonitorResult,
    compare,
    labels_of,
    reference_of_reports,
    reference_statistics,
    tokenizer_vocab,
)
from dprad.run import RunRecord
from dprad.run.files import REFERENCE as REFERENCE_FILE

if TYPE_CHECKING:
    from dprad.modes.predictor import Predictor

__all__ = [
    "REFERENCE_FILE",
    "MonitorOptions",
    "MonitorResult",
    "load_reference",
    "monitor_reports",
    "monitor_run",
    "write_reference",
]


def _record(run: str | Path | RunRecord) -> RunRecord:
    return run if isinstance(run, RunRecord) else RunRecord.open(run)


def write_reference(
    run_dir: str | Path, reports: Sequence[Report], probs: np.ndarray, *, source: str = "test split"
) -> Path:
    """Write ``RUN/reference.json`` of a finished run from scored reports (their labels too, when they
    have them), at the run's shipped thresholds."""
    from dprad.local_models import load_tokenizer

    record = RunRecord.open(run_dir)
    ref = reference_of_reports(
        reports,
        probs,
        schema=record.schema,
        policy=record.config.data.uncertain_policy,
        thresholds=record.thresholds.array,
        threshold_rule=record.thresholds.describe(),
        vocab=tokenizer_vocab(load_tokenizer(record.model_dir)),
        source=source,
    )
    path = record.path / REFERENCE_FILE
    write_json(path, ref)
    return path


def _test_split(record: RunRecord) -> list[Report]:
    """The run's test reports, read again from its training data (to compute a missing reference)."""
    if not Path(record.data_path).exists():
        raise DpradError(
            f"{record.path}: no {REFERENCE_FILE}, and the run's data {record.data_path} is not here to "
            "rebuild it from"
        )
    return record.split_reports("test")[0]


def load_reference(run: str | Path | RunRecord, predictor: Predictor) -> tuple[dict[str, Any], str | None]:
    """``RUN/reference.json``, or (with a note saying so) the same statistics computed now from the test split."""
    record = _record(run)
    path = record.path / REFERENCE_FILE
    ref = record.reference()
    if ref is not None:
        if ref.get("format") != REFERENCE_FORMAT:
            raise DpradError(f"{path}: not a {REFERENCE_FORMAT} file")
        return ref, None
    reports = _test_split(record)
    if not reports:
        raise DpradError(f"{record.path}: no {REFERENCE_FILE} and no test report found to compute one")
    ref = reference_of_reports(
        reports,
        predictor.predict(reports).probs,
        schema=predictor.schema,
        policy=record.config.data.uncertain_policy,
        thresholds=record.thresholds.array,
        threshold_rule=record.thresholds.describe(),
        vocab=tokenizer_vocab(predictor.tokenizer),
        source="test split (computed now)",
    )
    note = (
        f"{path} is missing: the reference was computed now by scoring the run's {len(reports)} test reports"
    )
    return ref, note


def monitor_reports(
    run_dir: str | Path | RunRecord,
    reports: Sequence[Report],
    *,
    use_labels: bool = False,
    options: MonitorOptions = MonitorOptions(),
    predictor: Predictor | None = None,
    data: str = "",
    notes: Sequence[str] = (),
) -> MonitorResult:
    """Score ``reports`` with the run and compare them with the run's reference."""
    from dprad.modes import load_run

    if not reports:
        raise DpradError(f"{data or 'monitor'}: no report to monitor")
    record = _record(run_dir)
    predictor = predictor or load_run(record)
    reference, note = load_reference(record, predictor)
    all_notes = list(notes) + ([note] if note else [])
    schema = predictor.schema
    if list(reference["labels"]) != list(schema.labels):
        raise DpradError(f"{record.path}/{REFERENCE_FILE}: its labels are not the run's labels")
    lab = labels_of(reports, schema, record.config.data.uncertain_policy) if use_labels else None
    if use_labels and lab is None:
        raise DpradError(f"{data or 'monitor'}: --labels, but no report has labels of schema '{schema.name}'")
    new = reference_statistics(
        [r.text for r in reports],
        predictor.predict(reports).probs,
        labels=schema.labels,
        critical=schema.critical,
        thresholds=np.asarray(reference["thresholds"], dtype=float),
        threshold_rule=str(reference.get("threshold_rule", "")),
        vocab=tokenizer_vocab(predictor.tokenizer),
        source=data,
        y=None if lab is None else lab[0],
        mask=None if lab is None else lab[1],
    )
    return compare(reference, new, run=str(record.path), data=data, options=options, notes=all_notes)


def monitor_run(
    run_dir: str | Path,
    data: str | Path,
    *,
    use_labels: bool = False,
    options: MonitorOptions = MonitorOptions(),
    **read_kw: Any,
) -> MonitorResult:
    """Read NEW_DATA with the run's label schema (when its format allows) and monitor it."""
    from dprad.data.read import read_reports

    record = RunRecord.open(run_dir)
    schema = record.schema
    notes: list[str] = []
    try:
        result, used, _ = read_reports(data, schema=schema, **read_kw)
    except DpradError as err:
        if "does not fit --format" not in str(err):
            raise
        result, used, _ = read_reports(data, **read_kw)  # another schema: drift only
    reports = result.reports
    if used.name != schema.name:
        notes.append(f"{data}: labels are in schema '{used.name}', not the run's '{schema.name}': ignored")
        if use_labels:
            raise DpradError(
                f"{data}: --labels, but its labels are in schema '{used.name}', not '{schema.name}'"
            )
        reports = [Report(id=r.id, patient_id=r.patient_id, text=r.text, attrs=r.attrs) for r in reports]
    if result.skipped:
        notes.append(f"{len(result.skipped)} reports skipped by the reader")
    return monitor_reports(
        record, reports, use_labels=use_labels, options=options, data=str(data), notes=notes
    )
