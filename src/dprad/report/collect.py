"""The runs as the report and the model card show them, read through :class:`dprad.run.RunRecord`.

Reading only: every number comes from a run's own files, opened by ``RunRecord`` (the one reader of a run
directory) and typed by :mod:`dprad.run.results` / :mod:`dprad.run.audit`. The one thing added here is the
choice of the ONE evaluation a run's numbers are quoted from (evaluation.json with CIs when the run has one,
else metrics.json's test split at the shipped thresholds) and the words that say which thresholds those
numbers are at; the headline table, the at-a-glance sentences and the model card all quote both verbatim.

Two readers here are a sweep's, not a run's: its results table and its ``selection.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dprad.config import RunConfig
from dprad.errors import DpradError
from dprad.privacy.ledger import PrivacyLedger
from dprad.report.public import data_name, model_name
from dprad.run import files
from dprad.run.audit import Audit
from dprad.run.files import mapping, read_json
from dprad.run.record import RunRecord, Thresholds
from dprad.run.results import Evaluation, number

SELECTION_WORDS = ("threshold", "select")  # a ledger part with one of these in its name is a DP selection


def thresholds_phrase(ev: Evaluation, shipped: Thresholds) -> tuple[str, bool]:
    """Which thresholds ``ev``'s numbers are at, in words (quoted verbatim next to them), and whether they
    are the thresholds the run ships. An evaluation at 0.5 of a run that ships other thresholds says so.
    The phrase is short and holds no parentheses: how the shipped thresholds were chosen is said once
    elsewhere (``shipped.source``; the report's thresholds legend, the model card's privacy section)."""
    name = Path(ev.source).name
    if ev.thresholds == "val" or (ev.thresholds == "0.5" and shipped.fitted_on is None):
        return "at the shipped thresholds", True
    if ev.thresholds == "0.5":
        if all(v == 0.5 for v in shipped.values):
            return "at 0.5 for every label, which are the shipped thresholds", True
        return (
            f"at 0.5 for every label, NOT at the thresholds this run ships: {name} was made with "
            "--thresholds 0.5",
            False,
        )
    which = f"'{ev.thresholds}'" if ev.thresholds else f"that {name} does not record"
    return f"at thresholds {which}, maybe NOT the ones this run ships", False


@dataclass(frozen=True, eq=False)
class Run:
    """One run as the report shows it: its :class:`RunRecord`, short names, and the one evaluation quoted."""

    record: RunRecord
    model: str  # encoder name as the user gave it (a path is shortened to its last part)
    dataset: str  # training data, shortened to its file name
    evaluation: Evaluation | None  # evaluation.json, else metrics.json's test split at the shipped thresholds
    at: str  # which thresholds ``evaluation``'s numbers are at, in words (see ``thresholds_phrase``)
    at_shipped: bool  # ``evaluation`` is at the thresholds the run ships

    @classmethod
    def of(cls, record: RunRecord) -> Run:
        ev = record.evaluation or record.evaluation_of("test")
        at, shipped = thresholds_phrase(ev, record.thresholds) if ev is not None else ("", False)
        return cls(record, model_name(record), data_name(record), ev, at, shipped)

    def at_of(self, ev: Evaluation) -> str:
        """Which thresholds another of the run's evaluations (evaluation-*.json) is at."""
        return thresholds_phrase(ev, self.record.thresholds)[0]

    # ------------------------------------------------------------------ the record's own fields

    @property
    def path(self) -> Path:
        return self.record.path

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def mode(self) -> str:
        """The mode as the ledger names it (``dp-head`` for a private head)."""
        return self.record.display_mode

    @property
    def config(self) -> RunConfig:
        return self.record.config

    @property
    def ledger(self) -> PrivacyLedger:
        return self.record.ledger

    @property
    def metrics(self) -> Mapping[str, Any]:
        return self.record.metrics

    @property
    def thresholds(self) -> Thresholds:
        """The thresholds the run ships."""
        return self.record.thresholds

    @property
    def data_path(self) -> str:
        return self.record.data_path

    @property
    def schema(self) -> str:
        return self.record.schema.name

    @property
    def labels(self) -> tuple[str, ...]:
        return self.record.schema.labels

    @property
    def critical(self) -> tuple[str, ...]:
        return self.record.schema.critical

    @property
    def seed(self) -> int:
        return self.record.config.train.seed

    @property
    def splits(self) -> dict[str, int]:
        """Split name -> number of reports."""
        return {k: len(v) for k, v in self.record.splits.items()}

    @property
    def extra_evaluations(self) -> tuple[Evaluation, ...]:
        return self.record.extra_evaluations

    @property
    def audit(self) -> Audit | None:
        return self.record.audit

    @property
    def notes(self) -> tuple[str, ...]:
        return self.record.notes

    # ------------------------------------------------------------------ views

    @property
    def private(self) -> bool:
        return self.ledger.private

    @property
    def epsilon(self) -> float:
        """The epsilon spent (``math.inf`` for a non-private run)."""
        return self.ledger.spent_epsilon

    @property
    def selection(self) -> tuple[float, str] | None:
        """The ledger's DP threshold / model selection release, (epsilon, its name), when it records one."""
        return self.ledger.part_epsilon(*SELECTION_WORDS)

    @property
    def family(self) -> str:
        """The mode without its privacy switch: dp-head and head are one family."""
        return self.mode.removeprefix("dp-")

    @property
    def series(self) -> str:
        return f"{self.model} · {self.family}"

    @property
    def eps_label(self) -> str:
        return "∞ (non-private)" if not self.private else f"{self.epsilon:.3g}"


# ---------------------------------------------------------------------------------------------------
# runs


def read_run(path: str | Path) -> Run:
    """One finished run directory, every file it holds read now (a broken one is an error here)."""
    record = RunRecord.open(path)
    run = Run.of(record)
    _ = record.extra_evaluations, record.audit
    return run


def expand_runs(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Run directories named on the command line; a folder that is not a run stands for the finished
    runs below it (a sweep's output folder, two levels deep). Returns (runs, notes on skipped folders)."""
    runs: list[Path] = []
    skipped: list[str] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DpradError(f"{p}: no such run directory")
        if RunRecord.is_run(p):
            runs.append(p)
            continue
        if not p.is_dir():
            raise DpradError(f"{p}: not a run directory")
        below = sorted(
            {c.parent for pattern in (f"*/{files.CONFIG}", f"*/*/{files.CONFIG}") for c in p.glob(pattern)}
        )
        below = [c for c in below if not RunRecord.is_run(c.parent)]  # not a run's own model/ folder
        found = [c for c in below if RunRecord.is_run(c)]
        skipped += [
            f"{c}: unfinished (no {files.PRIVACY}), left out" for c in below if RunRecord.is_unfinished(c)
        ]
        if not found:
            raise DpradError(
                f"{p}: neither a run directory ({files.CONFIG} + {files.PRIVACY}) nor a folder of runs"
            )
        runs += found
    unique = list(dict.fromkeys(r.resolve() for r in runs))
    return unique, skipped


def read_runs(paths: Iterable[str | Path]) -> tuple[list[Run], list[str]]:
    dirs, skipped = expand_runs(paths)
    return [read_run(d) for d in dirs], skipped


# ---------------------------------------------------------------------------------------------------
# a sweep's results table

FAILED_STATUSES = ("failed", "error", "broken")


@dataclass(frozen=True)
class SweepTable:
    source: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]  # every cell as text, as the table holds it
    failed: tuple[tuple[str, str], ...]  # (cell, error) for rows the table marks as failed


def read_sweep_table(path: str | Path) -> SweepTable:
    """A sweep's results table (CSV or Parquet), every cell kept as text; failed cells listed apart."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DpradError(f"--sweep {path}: no such file")
    try:
        parquet = path.suffix.lower() in (".parquet", ".pq")
        df = pd.read_parquet(path) if parquet else pd.read_csv(path)
    except (ValueError, OSError) as err:
        raise DpradError(f"--sweep {path}: cannot be read as a table ({err})") from None
    columns = tuple(str(c) for c in df.columns)
    rows = tuple(tuple(_cell(v) for v in row) for row in df.itertuples(index=False, name=None))
    failed: list[tuple[str, str]] = []
    status_col = next((c for c in ("status", "state") if c in columns), None)
    error_col = next((c for c in ("error", "error_message") if c in columns), None)
    cell_col = next((c for c in ("cell", "name", "run", "run_dir", "out") if c in columns), None)
    for row in rows:
        rec = dict(zip(columns, row, strict=True))
        bad = (status_col is not None and rec[status_col].lower() in FAILED_STATUSES) or (
            status_col is None and error_col is not None and rec[error_col] not in ("", "nan", "None")
        )
        if bad:
            failed.append(
                (rec[cell_col] if cell_col else "?", rec[error_col] if error_col else rec[status_col or ""])
            )
    return SweepTable(str(path), columns, rows, tuple(failed))


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.4g}"
    return str(v)


# ---------------------------------------------------------------------------------------------------
# the sweep's selection costs (selection.json)


@dataclass(frozen=True)
class SelectionCost:
    method: str
    epsilon: float | None
    delta: float | None
    largest_single_epsilon: float | None
    assumption: str


@dataclass(frozen=True)
class SelectionGroup:
    dataset: str
    scope: str
    candidates: tuple[str, ...]
    compared_on: str
    costs: tuple[SelectionCost, ...]


@dataclass(frozen=True)
class Selection:
    """What choosing 'the best run' among compared cells costs in privacy, as the sweep wrote it."""

    source: str
    what: str
    groups: tuple[SelectionGroup, ...]


def read_selection(path: str | Path) -> Selection:
    path = Path(path)
    raw = mapping(read_json(path))
    groups = []
    for g in raw.get("groups") or ():
        g = mapping(g)
        costs = tuple(
            SelectionCost(
                method=str(method),
                epsilon=number(mapping(c).get("epsilon")),
                delta=number(mapping(c).get("delta")),
                largest_single_epsilon=number(mapping(c).get("largest_single_epsilon")),
                assumption=str(mapping(c).get("assumption") or ""),
            )
            for method, c in mapping(g.get("costs")).items()
        )
        groups.append(
            SelectionGroup(
                dataset=str(g.get("dataset") or "?"),
                scope=str(g.get("scope") or ""),
                candidates=tuple(str(c) for c in g.get("candidates") or ()),
                compared_on=str(g.get("compared_on") or ""),
                costs=costs,
            )
        )
    return Selection(str(path), str(raw.get("what") or ""), tuple(groups))


def find_selection(places: Iterable[str | Path]) -> Selection | None:
    """selection.json in the first of ``places`` (folders) that holds one."""
    for place in places:
        candidate = Path(place) / "selection.json"
        if candidate.is_file():
            return read_selection(candidate)
    return None
