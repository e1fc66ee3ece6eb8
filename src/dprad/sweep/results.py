"""What a sweep leaves behind: the results table (one row per cell), ``selection.json`` (the privacy cost
of choosing among the cells) and the report. Every run is read through :class:`dprad.run.RunRecord`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dprad import io
from dprad.errors import DpradError
from dprad.run import RunRecord
from dprad.run.results import Evaluation, Interval
from dprad.sweep.plan import Cell, slug
from dprad.sweep.spec import SweepConfig
from dprad.sweep.state import CELL, DONE, CellOutcome, cell_finished, read_state

RESULT_COLUMNS = (
    "cell",
    "dataset",
    "model",
    "mode",
    "private",
    "epsilon_target",
    "epsilon_spent",
    "delta",
    "noise_multiplier",
    "steps",
    "seed",
    "split_seed",
    "status",
    "error",
    "weighted_f1",
    "weighted_f1_low",
    "weighted_f1_high",
    "macro_auroc",
    "macro_auroc_low",
    "macro_auroc_high",
    "thresholds",
    "test_reports",
    "wall_s",
    "attempts",
    "reused",
    "run_dir",
)


def open_cell(run_dir: Path) -> tuple[RunRecord | None, str]:
    """The cell's run, or None and why not (it has not finished training, or its files do not read)."""
    try:
        return RunRecord.open(run_dir), ""
    except DpradError as err:
        return None, str(err)


def _evaluation(record: RunRecord | None) -> Evaluation | None:
    if record is None:
        return None
    try:
        return record.evaluation
    except DpradError:  # an unreadable evaluation.json: the cell is not finished
        return None


def result_rows(
    out: Path, cells: Sequence[Cell], outcomes: Mapping[str, CellOutcome]
) -> list[dict[str, Any]]:
    """One row per cell, from the files in its run directory (and this invocation's outcome)."""
    rows = []
    for c in cells:
        run_dir = out / "cells" / c.id
        o = outcomes.get(c.id)
        state = read_state(run_dir / CELL)
        record, why = open_cell(run_dir)
        ev = _evaluation(record)
        finished = cell_finished(run_dir)
        if o is not None:
            status, error = o.status, o.error
        elif finished and state.get("spec") == c.spec():
            status, error = "done", ""
        else:
            status, error = "pending", ""
        wall = read_state(run_dir / DONE).get("wall_s") if status == "done" else (o.wall_s if o else None)
        if status == "done" and record is None:  # marked done, but its run does not read
            status, error = "failed", why
        ledger = record.ledger if record is not None else None
        wf1, auroc = _headline(ev, "weighted_f1", finished), _headline(ev, "macro_auroc", finished)
        rows.append(
            {
                "cell": c.id,
                "dataset": c.dataset,
                "model": slug(c.model),
                "mode": record.display_mode if record is not None else c.mode,
                "private": c.private,
                "epsilon_target": c.epsilon,
                "epsilon_spent": _num(ledger.epsilon if ledger else None) if c.private else math.inf,
                "delta": _num(ledger.delta if ledger else None),
                "noise_multiplier": _num(ledger.noise_multiplier if ledger else None),
                "steps": _num(ledger.steps if ledger else None),
                "seed": c.seed,
                "split_seed": c.config.data.split_seed,
                "status": status,
                "error": error,
                "weighted_f1": _num(wf1.estimate),
                "weighted_f1_low": _num(wf1.low),
                "weighted_f1_high": _num(wf1.high),
                "macro_auroc": _num(auroc.estimate),
                "macro_auroc_low": _num(auroc.low),
                "macro_auroc_high": _num(auroc.high),
                "thresholds": (ev.thresholds or "") if ev else "",
                "test_reports": _num(ev.reports if ev else None),
                "wall_s": _num(wall),
                "attempts": int(state.get("attempts", 0)),
                "reused": bool(o.reused) if o is not None else False,
                "run_dir": str(run_dir),
            }
        )
    return rows


def _headline(ev: Evaluation | None, name: str, finished: bool) -> Interval:
    """A headline metric with its CI; only a finished cell's evaluation counts."""
    return ev.metric(name) if ev is not None and finished else Interval(None)


def _num(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else math.nan


def write_results(out: Path, cells: Sequence[Cell], outcomes: Mapping[str, CellOutcome]) -> tuple[Path, Path]:
    import pandas as pd

    df = pd.DataFrame(result_rows(out, cells, outcomes), columns=list(RESULT_COLUMNS))
    csv_path, pq_path = out / "results.csv", out / "results.parquet"
    io.write_with(csv_path, lambda tmp: df.to_csv(tmp, index=False))
    io.write_with(pq_path, lambda tmp: df.to_parquet(tmp, index=False))
    return csv_path, pq_path


SELECTION_WHAT = (
    "Choosing 'the best run' among these cells by their validation scores is a release of its own: "
    "the chosen model depends on every candidate's training. Each cell's ledger covers that cell "
    "alone. The costs below bound the chosen model's epsilon for the training reports; the "
    "validation reports used to score the candidates are not protected by any of them. A cell "
    "chosen before seeing any result (e.g. the one the protocol fixed in advance) costs only its own "
    "ledger's epsilon."
)


def write_selection(out: Path, cells: Sequence[Cell], cfg: SweepConfig) -> Path:
    """Which finished private cells were compared on which data, and the cost of choosing among them."""
    groups = []
    by_dataset: dict[str, list[Cell]] = {}
    for c in cells:
        if c.private and cell_finished(out / "cells" / c.id):
            by_dataset.setdefault(c.dataset, []).append(c)
    for ds, members in by_dataset.items():
        scopes: list[tuple[str, list[Cell]]] = [("every private cell", members)]
        targets = sorted({c.epsilon for c in members})
        if len(targets) > 1:
            scopes += [(f"epsilon target {e:g}", [c for c in members if c.epsilon == e]) for e in targets]
        groups += [_selection_group(out, ds, scope, group) for scope, group in scopes]
    path = out / "selection.json"
    io.write_json(
        path,
        {
            "what": SELECTION_WHAT,
            "sweep": cfg.name,
            "evaluate_thresholds": cfg.evaluate.thresholds,
            "groups": groups,
        },
    )
    return path


def _selection_group(out: Path, dataset: str, scope: str, group: Sequence[Cell]) -> dict[str, Any]:
    from dprad.privacy.selection import Candidate, all_costs

    splits = sorted({c.config.data.split_seed for c in group})
    entry: dict[str, Any] = {
        "dataset": dataset,
        "scope": scope,
        "candidates": [c.id for c in group],
        "compared_on": (
            f"the validation split of {group[0].config.data.path} "
            f"(patient-level split seed(s) {', '.join(map(str, splits))}), scored without DP"
        ),
    }
    try:
        cands = [
            Candidate.from_ledger(c.id, RunRecord.open(out / "cells" / c.id).ledger.to_dict()) for c in group
        ]
        entry["costs"] = {k: v.to_dict() for k, v in all_costs(cands).items()}
    except DpradError as err:
        entry["error"] = str(err)
    return entry


def write_report(out: Path, cfg: SweepConfig, cells: Sequence[Cell], notes: list[str]) -> Path | None:
    """OUT/report.html over the finished cells, with the results table; None (and a note) when none."""
    try:
        from dprad.report.html import write_report as write_html
    except ImportError:
        notes.append("report: dprad.report is not available; no report.html written")
        return None
    runs = [out / "cells" / c.id for c in cells if cell_finished(out / "cells" / c.id)]
    if not runs:
        notes.append("report: no finished cell to report on")
        return None
    return Path(
        write_html(
            runs, out / "report.html", sweep_table=out / "results.parquet", title=f"dprad sweep: {cfg.name}"
        )
    )
