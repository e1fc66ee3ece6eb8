"""Running a sweep: read each dataset once, plan the cells, run every unfinished one (in this process or
in worker processes), and write the results table, ``selection.json`` and the report as cells finish.

A cell is trained (or resumed from its checkpoint), evaluated on the test split and optionally audited;
any error is recorded in its ``cell.json``, and the other cells go on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from dprad import io
from dprad.config import MODE_ALIASES
from dprad.data.reports import Report
from dprad.data.schemas import builtin_schema
from dprad.errors import DpradError
from dprad.run import RunRecord
from dprad.run.files import CHECKPOINT, CONFIG, EVALUATION
from dprad.stages.evaluate import EvalOptions
from dprad.sweep.plan import Cell, fingerprint, plan_cells
from dprad.sweep.results import write_report, write_results, write_selection
from dprad.sweep.spec import AuditSpec, SweepConfig
from dprad.sweep.state import CELL, DONE, CellOutcome, cell_finished, read_state, write_cell_state

# ---------------------------------------------------------------------------------------------------
# running one cell (in this process or in a worker process)


@dataclass(frozen=True)
class CellTask:
    cell: Cell
    run_dir: Path
    reports: tuple[Report, ...] | None  # the dataset, read once by the sweep
    evaluate: EvalOptions
    audit: AuditSpec | None
    threads: int | None  # set in worker processes only


def run_cell(task: CellTask, *, on_step: Callable[[Any], None] | None = None) -> CellOutcome:
    """Train (or resume), evaluate and optionally audit one cell; any error is recorded, not raised."""
    cell, run_dir = task.cell, task.run_dir
    spec = cell.spec()
    state = read_state(run_dir / CELL)
    same = state.get("spec") == spec
    if same and cell_finished(run_dir):
        done = read_state(run_dir / DONE)
        return CellOutcome(cell.id, "done", "", done.get("wall_s"), True, int(state.get("attempts", 1)))
    attempts = int(state.get("attempts", 0)) + 1 if same else 1
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / DONE).unlink(missing_ok=True)
    write_cell_state(run_dir, spec, attempts, "running")
    tick = time.perf_counter()
    try:
        if task.threads:
            import torch

            torch.set_num_threads(task.threads)  # a worker process of its own: nothing else shares it
        trained = same and RunRecord.is_run(run_dir) and not (run_dir / CHECKPOINT).exists()
        if not trained:
            _train(cell, run_dir, task.reports, fresh=not same, on_step=on_step)
        (run_dir / EVALUATION).unlink(missing_ok=True)
        evaluation = _evaluate(cell, run_dir, task.evaluate)
        io.write_json(run_dir / EVALUATION, evaluation)
        if task.audit is not None:
            _audit_cell(run_dir, task.audit, task.reports)
        wall = time.perf_counter() - tick
        write_cell_state(run_dir, spec, attempts, "done")
        io.write_json(
            run_dir / DONE, {"wall_s": round(wall, 2), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        )
        return CellOutcome(cell.id, "done", "", round(wall, 2), False, attempts)
    except Exception as err:  # noqa: BLE001 - a failed cell is recorded with its error; the others go on
        message = " ".join(f"{type(err).__name__}: {err}".split())
        write_cell_state(run_dir, spec, attempts, "failed", message)
        return CellOutcome(cell.id, "failed", message, round(time.perf_counter() - tick, 2), False, attempts)


def _train(
    cell: Cell,
    run_dir: Path,
    reports: Sequence[Report] | None,
    *,
    fresh: bool,
    on_step: Callable[[Any], None] | None,
) -> None:
    from dprad.stages.train import train

    try:
        train(cell.config, run_dir, reports=reports, on_step=on_step, overwrite=fresh)
    except DpradError:
        if fresh or not (run_dir / CONFIG).exists():
            raise
        # an interrupted run the training stage will not resume (e.g. written by another dprad version):
        # start the cell again rather than leave it broken
        train(cell.config, run_dir, reports=reports, on_step=on_step, overwrite=True)


def _evaluate(cell: Cell, run_dir: Path, options: EvalOptions) -> dict[str, Any]:
    from dprad.data.schemas import load_schema
    from dprad.stages.evaluate import evaluate_run

    d = cell.config.data
    return evaluate_run(
        run_dir,
        cell.eval_path,
        options=options,
        format=cell.eval_format,
        schema=load_schema(d.schema) if d.schema else None,
        text_col=d.text_col,
        id_col=d.id_col,
        patient_col=d.patient_col,
        labels_path=d.labels_path if cell.eval_path == d.path else None,
    )


def _audit_cell(run_dir: Path, spec: AuditSpec, reports: Sequence[Report] | None) -> None:
    import numpy as np

    from dprad.audit.run_audit import audit_run
    from dprad.stages.train import train

    audit_run(
        run_dir,
        attacks=spec.attacks,
        reference_models=spec.reference_models,
        rng=np.random.default_rng(0),
        reports=reports,
        n_boot=spec.n_boot,
        train_fn=train,
    )


def _run_cell_task(task: CellTask) -> CellOutcome:  # top level: picklable for worker processes
    return run_cell(task)


# ---------------------------------------------------------------------------------------------------
# the sweep


@dataclass(frozen=True)
class SweepResult:
    out: Path
    cells: tuple[Cell, ...]
    outcomes: tuple[CellOutcome, ...]
    results_csv: Path
    results_parquet: Path
    selection: Path
    report: Path | None
    notes: tuple[str, ...]

    def table(self) -> Any:
        import pandas as pd

        return pd.read_parquet(self.results_parquet)


def run_sweep(
    cfg: SweepConfig,
    out: str | Path,
    *,
    jobs: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
    on_step: Callable[[Any], None] | None = None,
) -> SweepResult:
    """Run every unfinished cell of ``cfg`` into ``out/cells``; write the results table and selection costs.

    ``progress(cell_id, finished, total)`` is called as cells finish; ``on_step`` receives training steps
    (with ``jobs == 1`` only: worker processes report cells, not steps).
    """
    if jobs < 1:
        raise DpradError(f"--jobs {jobs} must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    reports, schemas, auto_modes, failed_sets = _read_datasets(cfg, out, notes)
    cache = str((out / "features").resolve()) if cfg.feature_cache else None
    cells = plan_cells(cfg, schemas=schemas, auto_modes=auto_modes, feature_cache=cache)
    prints = {ds.name: fingerprint(ds.data.path, ds.data.labels_path, ds.eval_path) for ds in cfg.datasets}
    cells = [replace(c, data_fingerprint=prints[c.dataset]) for c in cells]
    io.write_json(
        out / "sweep.json",
        {
            "name": cfg.name,
            "cells": [c.spec() for c in cells],
            "evaluate": {f.name: getattr(cfg.evaluate, f.name) for f in fields(EvalOptions)},
            "notes": notes,
        },
    )
    outcomes: dict[str, CellOutcome] = {}
    for c in cells:
        if c.dataset in failed_sets:
            outcomes[c.id] = CellOutcome(c.id, "failed", failed_sets[c.dataset], None, False, 0)
    todo = [c for c in cells if c.id not in outcomes]
    total = len(cells)

    def finished(o: CellOutcome) -> None:
        outcomes[o.cell] = o
        write_results(out, cells, outcomes)
        if progress is not None:
            progress(o.cell, len(outcomes), total)

    threads = max(1, _cores() // jobs) if jobs > 1 else None
    tasks = [
        CellTask(
            cell=c,
            run_dir=out / "cells" / c.id,
            reports=reports.get(c.dataset),
            evaluate=cfg.evaluate,
            audit=cfg.audit,
            threads=threads,
        )
        for c in todo
    ]
    _run_tasks(tasks, jobs, finished, on_step)
    csv_path, pq_path = write_results(out, cells, outcomes)
    selection_path = write_selection(out, cells, cfg)
    report = write_report(out, cfg, cells, notes) if cfg.report else None
    return SweepResult(
        out=out,
        cells=tuple(cells),
        outcomes=tuple(outcomes[c.id] for c in cells),
        results_csv=csv_path,
        results_parquet=pq_path,
        selection=selection_path,
        report=report,
        notes=tuple(notes),
    )


def _run_tasks(
    tasks: Sequence[CellTask],
    jobs: int,
    finished: Callable[[CellOutcome], None],
    on_step: Callable[[Any], None] | None,
) -> None:
    """Run the cells here (``jobs == 1``) or in ``jobs`` spawned worker processes; ``finished`` gets each
    outcome as it comes. A worker that dies fails its cell, not the sweep."""
    if jobs == 1 or len(tasks) <= 1:
        for t in tasks:
            finished(run_cell(t, on_step=on_step))
        return
    import multiprocessing
    from concurrent.futures import as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures: dict[Future[CellOutcome], CellTask] = {pool.submit(_run_cell_task, t): t for t in tasks}
        for fut in as_completed(futures):
            t = futures[fut]
            try:
                finished(fut.result())
            except Exception as err:  # noqa: BLE001 - a worker that died: the cell is failed, not the sweep
                msg = " ".join(f"worker process failed: {type(err).__name__}: {err}".split())
                finished(CellOutcome(t.cell.id, "failed", msg, None, False, 0))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _read_datasets(
    cfg: SweepConfig, out: Path, notes: list[str]
) -> tuple[dict[str, tuple[Report, ...]], dict[str, str | None], dict[str, str], dict[str, str]]:
    """Read each dataset once; pin its schema; resolve what ``auto`` means for it. Failures are per dataset."""
    from dprad.data.read import read_data
    from dprad.stages.plan import prepare, resolve

    reports: dict[str, tuple[Report, ...]] = {}
    schemas: dict[str, str | None] = {}
    auto: dict[str, str] = {}
    failed: dict[str, str] = {}
    needs_auto = any(m.mode == "auto" for m in cfg.modes)
    for ds in cfg.datasets:
        d = ds.data
        try:
            result, schema, _ = read_data(d)
            if result.skipped:
                notes.append(f"{ds.name}: {len(result.skipped)} reports skipped by the reader")
            if d.schema:
                pinned = d.schema
            elif builtin_schema(schema):
                pinned = schema.name
            else:  # a schema inferred from the table's columns: keep it beside the sweep
                pinned = str((out / "datasets" / f"{ds.name}.schema.json").resolve())
                io.write_json(pinned, schema.to_dict())
            schemas[ds.name] = pinned
            reports[ds.name] = tuple(result.reports)
            if needs_auto:
                probe = cfg.base.with_(
                    data=replace(
                        d, schema=pinned, split_seed=cfg.seeds[0] if cfg.seed_splits else d.split_seed
                    ),
                    privacy=replace(cfg.base.privacy, epsilon=1.0, noise_multiplier=None),
                    train=replace(cfg.base.train, mode="auto"),
                )
                sch, splits, _ = prepare(probe, result.reports)
                mode = resolve(probe, n_train=len(splits.train), schema=sch).train.mode
                auto[ds.name] = MODE_ALIASES.get(mode, mode)
        except DpradError as err:
            failed[ds.name] = f"DpradError: {err}"
            notes.append(f"{ds.name}: {err}")
    return reports, schemas, auto, failed
