"""A privacy-utility sweep: a grid of normal runs (datasets x models x modes x epsilons x seeds), resumable.

A sweep config is YAML with the sections of a run config (``data``, ``model``, ``lora``, ``privacy``,
``train``: the settings every cell shares) plus:

``grid``
    ``models``: model names or local model directories (default: ``model.name``);
    ``epsilons``: target epsilons, ``inf`` for the non-private twin of each mode;
    ``modes``: ``auto`` (what ``dprad train --epsilon`` picks: the private head; at ``inf`` its
    non-private twin), ``head``, ``lora``, ``full`` (``dp-*`` spellings accepted).
    A mode runs privately at every finite epsilon and non-privately at ``inf``. An entry may be a mapping
    ``{mode, epsilons, name, train, lora, model, privacy}`` with its own epsilons (e.g. full fine-tuning only
    at ``inf``) and section overrides;
    ``seeds``: each cell's ``train.seed``; with ``seed_splits: true`` (the default) also its
    ``data.split_seed``, so seeds repeat the whole experiment on another patient-level split;
    ``datasets``: ``{name, path, format, schema, ...}`` (any ``data`` key, plus ``eval_path`` /
    ``eval_format`` to evaluate against other labels of the same reports, e.g. gold labels when training
    on a teacher's). Default: one dataset from the ``data`` section.
``evaluate``: ``thresholds`` (0.5 or val), ``n_boot``, ``groups``, ``split`` (EvalOptions fields).
``audit``: false (default), true, or ``{attacks, reference_models, n_boot}`` (when dprad.audit exists).
``report``: write OUT/report.html at the end (default true, when dprad.report exists).
``feature_cache``: reuse encoder features across the head cells of the sweep (default true; the cache in
OUT/features is derived from the reports and as sensitive as they are).

Paths (``data.path``, dataset ``path`` / ``eval_path``, model directories) are relative to the config
file's folder unless absolute. Unknown keys stop with one line naming the key.

Each cell is a normal run directory ``OUT/cells/<cell-id>`` (config.json, privacy.json, metrics.json, ...)
plus ``evaluation.json`` (the test split, with patient-level bootstrap CIs), ``cell.json`` (the cell's
spec, attempts, last error) and ``done.json`` (written last). Re-running skips cells whose ``done.json``,
``privacy.json`` and ``evaluation.json`` exist and whose spec is unchanged; an interrupted cell resumes
from its checkpoint (or evaluates only, when training had finished). ``OUT/results.parquet`` and
``results.csv`` hold one row per cell; ``OUT/selection.json`` says which cells were compared on which data
and what choosing the best of them costs in privacy (:mod:`dprad.privacy.selection`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dprad import io
from dprad.config import (
    MODE_ALIASES,
    DataConfig,
    LoraConfig,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    TrainConfig,
)
from dprad.data.reports import Report
from dprad.errors import DpradError
from dprad.stages.evaluate import EvalOptions

TOP_KEYS = (
    "name",
    "data",
    "model",
    "lora",
    "privacy",
    "train",
    "grid",
    "evaluate",
    "audit",
    "report",
    "feature_cache",
)
GRID_KEYS = ("models", "epsilons", "modes", "seeds", "datasets", "seed_splits")
MODE_KEYS = ("mode", "name", "epsilons", "model", "lora", "privacy", "train")
MODE_FAMILIES = ("auto", "head", "lora", "full")
AUDIT_KEYS = ("attacks", "reference_models", "n_boot")
SECTION_TYPES: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "lora": LoraConfig,
    "privacy": PrivacyConfig,
    "train": TrainConfig,
}
DONE = "done.json"
CELL = "cell.json"
EVALUATION = "evaluation.json"
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


# ---------------------------------------------------------------------------------------------------
# the config


@dataclass(frozen=True)
class ModeSpec:
    """One entry of ``grid.modes``: a mode family, the epsilons it runs at, and section overrides."""

    mode: str  # auto, head, lora or full
    name: str  # used in cell ids
    epsilons: tuple[float, ...] | None = None  # None: the grid's
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # section -> key -> value


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    data: DataConfig
    eval_path: str  # the labels evaluation compares against (default: the training file)
    eval_format: str


@dataclass(frozen=True)
class AuditSpec:
    attacks: str = "loss"
    reference_models: int = 16
    n_boot: int = 1000


@dataclass(frozen=True)
class SweepConfig:
    base: RunConfig
    models: tuple[str, ...]
    epsilons: tuple[float, ...]
    modes: tuple[ModeSpec, ...]
    seeds: tuple[int, ...]
    datasets: tuple[DatasetSpec, ...]
    seed_splits: bool = True
    evaluate: EvalOptions = field(default_factory=EvalOptions)
    audit: AuditSpec | None = None
    report: bool = True
    feature_cache: bool = True
    name: str = "sweep"

    @classmethod
    def load(cls, path: str | Path) -> SweepConfig:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise DpradError(f"{path}: no such sweep config")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise DpradError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise DpradError(f"{path}: a sweep config is a mapping of sections")
        return cls.from_dict(raw, base_dir=path.resolve().parent, source=str(path), default_name=path.stem)

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        base_dir: Path | None = None,
        source: str = "sweep config",
        default_name: str = "sweep",
    ) -> SweepConfig:
        """Build and check a sweep config; relative paths are taken from ``base_dir`` (default: cwd)."""
        here = base_dir or Path.cwd()
        _no_unknown(d, TOP_KEYS, source, "")
        base = RunConfig.from_dict({k: d[k] for k in SECTION_TYPES if d.get(k) is not None}, source=source)
        if base.privacy.epsilon is not None or base.privacy.noise_multiplier is not None:
            raise DpradError(
                f"{source}: privacy.epsilon / privacy.noise_multiplier are set per cell by grid.epsilons; remove them"
            )
        grid = d.get("grid") or {}
        if not isinstance(grid, Mapping):
            raise DpradError(f"{source}: 'grid' must be a mapping")
        _no_unknown(grid, GRID_KEYS, source, "grid.")
        models = tuple(_model_path(str(m), here) for m in _list(grid, "models", [base.model.name], source))
        epsilons = tuple(
            _epsilon(e, source, "grid.epsilons") for e in _list(grid, "epsilons", [math.inf], source)
        )
        seeds = tuple(_int(s, source, "grid.seeds") for s in _list(grid, "seeds", [base.train.seed], source))
        modes = tuple(_mode_spec(m, source, here) for m in _list(grid, "modes", ["auto"], source))
        raw_sets = _list(grid, "datasets", [None], source)
        datasets = tuple(_dataset(x, base.data, here, source) for x in raw_sets)
        for axis, values in (("models", models), ("seeds", seeds), ("datasets", [x.name for x in datasets])):
            if len(set(values)) != len(values):
                raise DpradError(f"{source}: grid.{axis} lists the same value twice")
        ev = d.get("evaluate") or {}
        if not isinstance(ev, Mapping):
            raise DpradError(f"{source}: 'evaluate' must be a mapping")
        _no_unknown(ev, tuple(f.name for f in fields(EvalOptions)), source, "evaluate.")
        ev_values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in ev.items()}
        evaluate = EvalOptions(**ev_values)
        audit = _audit(d.get("audit", False), source)
        return cls(
            base=base,
            models=models,
            epsilons=epsilons,
            modes=modes,
            seeds=seeds,
            datasets=datasets,
            seed_splits=bool(grid.get("seed_splits", True)),
            evaluate=evaluate,
            audit=audit,
            report=bool(d.get("report", True)),
            feature_cache=bool(d.get("feature_cache", True)),
            name=str(d.get("name") or default_name),
        )


def _no_unknown(d: Mapping[str, Any], known: Sequence[str], source: str, prefix: str) -> None:
    for key in d:
        if key not in known:
            raise DpradError(f"{source}: unknown key '{prefix}{key}' (expected one of {', '.join(known)})")


def _list(d: Mapping[str, Any], key: str, default: list[Any], source: str) -> list[Any]:
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, list) or not v:
        raise DpradError(f"{source}: grid.{key} must be a non-empty list")
    return v


def _epsilon(v: Any, source: str, where: str) -> float:
    if isinstance(v, str) and v.strip().lower() in ("inf", "infinity", "+inf", "none", "non-private"):
        return math.inf
    if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
        raise DpradError(f"{source}: {where}: {v!r} is not a positive epsilon or 'inf'")
    return float(v)


def _int(v: Any, source: str, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise DpradError(f"{source}: {where}: {v!r} is not an integer")
    return v


def _path(p: str, here: Path) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (here / q).resolve())


def _model_path(name: str, here: Path) -> str:
    """``minilm`` stays a name; anything else is a local model directory, relative to the config file."""
    from dprad.local_models import DEFAULT_ENCODER

    return name if name == DEFAULT_ENCODER else _path(name, here)


def _family(mode: str, source: str) -> str:
    family = MODE_ALIASES.get(mode, mode)
    if family not in MODE_FAMILIES:
        raise DpradError(f"{source}: grid.modes: '{mode}' is not one of {', '.join(MODE_FAMILIES)} (or dp-*)")
    return family


def _mode_spec(v: Any, source: str, here: Path) -> ModeSpec:
    if isinstance(v, str):
        family = _family(v, source)
        return ModeSpec(mode=family, name=family)
    if not isinstance(v, Mapping) or "mode" not in v:
        raise DpradError(f"{source}: grid.modes entries are a mode name or a mapping with a 'mode' key")
    _no_unknown(v, MODE_KEYS, source, "grid.modes[].")
    family = _family(str(v["mode"]), source)
    eps = None
    if v.get("epsilons") is not None:
        if not isinstance(v["epsilons"], list) or not v["epsilons"]:
            raise DpradError(f"{source}: grid.modes[{family}].epsilons must be a non-empty list")
        eps = tuple(_epsilon(e, source, f"grid.modes[{family}].epsilons") for e in v["epsilons"])
    overrides: dict[str, dict[str, Any]] = {}
    for section in ("model", "lora", "privacy", "train"):
        sec = v.get(section)
        if sec is None:
            continue
        if not isinstance(sec, Mapping):
            raise DpradError(f"{source}: grid.modes[{family}].{section} must be a mapping")
        known = tuple(f.name for f in fields(SECTION_TYPES[section]))
        _no_unknown(sec, known, source, f"grid.modes[{family}].{section}.")
        if section == "privacy" and ("epsilon" in sec or "noise_multiplier" in sec):
            raise DpradError(
                f"{source}: grid.modes[{family}].privacy: set epsilons, not epsilon / noise_multiplier"
            )
        values = {k: tuple(x) if isinstance(x, list) else x for k, x in sec.items()}
        if section == "model" and "name" in values:
            values["name"] = _model_path(str(values["name"]), here)
        overrides[section] = values
    return ModeSpec(mode=family, name=str(v.get("name") or family), epsilons=eps, overrides=overrides)


def _dataset(v: Any, base: DataConfig, here: Path, source: str) -> DatasetSpec:
    known = (*[f.name for f in fields(DataConfig)], "name", "eval_path", "eval_format")
    if v is None:
        v = {}
    if not isinstance(v, Mapping):
        raise DpradError(f"{source}: grid.datasets entries are mappings ({{name, path, format, schema}})")
    _no_unknown(v, known, source, "grid.datasets[].")
    values: dict[str, Any] = {
        k: tuple(x) if isinstance(x, list) else x
        for k, x in v.items()
        if k in {f.name for f in fields(DataConfig)}
    }
    data = replace(base, **values)
    if not data.path:
        raise DpradError(f"{source}: no data path (set data.path or grid.datasets[].path)")
    data = replace(data, path=_path(data.path, here))
    if data.labels_path:
        data = replace(data, labels_path=_path(data.labels_path, here))
    if data.schema and not _builtin_schema(data.schema):
        data = replace(data, schema=_path(data.schema, here))
    name = str(v.get("name") or Path(data.path).stem)
    if not name.replace("-", "").replace("_", "").isalnum():
        raise DpradError(f"{source}: dataset name '{name}' may hold only letters, digits, '-' and '_'")
    eval_path = _path(str(v["eval_path"]), here) if v.get("eval_path") else data.path
    return DatasetSpec(
        name=name, data=data, eval_path=eval_path, eval_format=str(v.get("eval_format") or data.format)
    )


def _builtin_schema(name: str) -> bool:
    from dprad.data.schemas import BUILTIN_SCHEMAS

    return name in BUILTIN_SCHEMAS


def _audit(v: Any, source: str) -> AuditSpec | None:
    if v is False or v is None:
        return None
    if v is True:
        return AuditSpec()
    if not isinstance(v, Mapping):
        raise DpradError(f"{source}: 'audit' must be true, false or a mapping")
    _no_unknown(v, AUDIT_KEYS, source, "audit.")
    return AuditSpec(**dict(v))


# ---------------------------------------------------------------------------------------------------
# cells


@dataclass(frozen=True)
class Cell:
    id: str
    dataset: str
    model: str
    mode: str  # as the ledger names it: dp-head, head, dp-lora, lora, ...
    epsilon: float  # target; inf = non-private
    seed: int
    config: RunConfig
    eval_path: str
    eval_format: str
    data_fingerprint: str = ""  # of the training and evaluation files: edited data redo the cell

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    def spec(self) -> dict[str, Any]:
        """What identifies the cell's work: a finished cell with another spec is redone."""
        d = {
            "id": self.id,
            "dataset": self.dataset,
            "model": self.model,
            "mode": self.mode,
            "epsilon": "inf" if not self.private else self.epsilon,
            "seed": self.seed,
            "config": self.config.to_dict(),
            "eval": {"path": self.eval_path, "format": self.eval_format},
            "data_fingerprint": self.data_fingerprint,
        }
        return dict(json.loads(json.dumps(d)))


def _slug(x: str) -> str:
    name = Path(x).name if ("/" in x or "\\" in x) else x
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _eps_text(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def plan_cells(
    cfg: SweepConfig,
    *,
    schemas: Mapping[str, str | None] | None = None,
    auto_modes: Mapping[str, str] | None = None,
    feature_cache: str | None = None,
) -> list[Cell]:
    """Every cell of the grid, in a stable order.

    ``schemas``: dataset -> schema (name or file) to pin in the cells' config (cells receive the reports
    read once, and training needs the schema named); ``auto_modes``: dataset -> the family ``auto`` resolves
    to (``head`` or ``lora``); without it ``auto`` stays ``auto``.
    """
    cells: list[Cell] = []
    for ds in cfg.datasets:
        schema = (schemas or {}).get(ds.name) or ds.data.schema
        for model in cfg.models:
            for spec in cfg.modes:
                family = spec.mode
                if family == "auto" and auto_modes and ds.name in auto_modes:
                    family = auto_modes[ds.name]
                name = family if spec.name == spec.mode else spec.name
                for eps in spec.epsilons or cfg.epsilons:
                    private = math.isfinite(eps)
                    mode = "auto" if family == "auto" else (f"dp-{family}" if private else family)
                    for seed in cfg.seeds:
                        base = cfg.base
                        data = replace(
                            ds.data,
                            schema=schema,
                            split_seed=seed if cfg.seed_splits else ds.data.split_seed,
                        )
                        train = replace(base.train, mode=mode, seed=seed)
                        if feature_cache and train.feature_cache is None:
                            train = replace(train, feature_cache=feature_cache)
                        sections: dict[str, Any] = {
                            "data": data,
                            "model": replace(base.model, name=model),
                            "lora": base.lora,
                            "privacy": replace(base.privacy, epsilon=eps if private else None),
                            "train": train,
                        }
                        for section, over in spec.overrides.items():
                            sections[section] = replace(sections[section], **over)
                        run_cfg = base.with_(**sections)
                        label = (
                            f"dp-{name}"
                            if private and not name.startswith("dp-") and mode != "auto"
                            else name
                        )
                        cell_id = f"{ds.name}-{_slug(run_cfg.model.name)}-{label}-eps{_eps_text(eps)}-s{seed}"
                        cells.append(
                            Cell(
                                id=cell_id,
                                dataset=ds.name,
                                model=run_cfg.model.name,
                                mode=mode if mode != "auto" else ("dp-auto" if private else "auto"),
                                epsilon=eps,
                                seed=seed,
                                config=run_cfg,
                                eval_path=ds.eval_path,
                                eval_format=ds.eval_format,
                            )
                        )
    seen: dict[str, int] = {}
    for c in cells:
        seen[c.id] = seen.get(c.id, 0) + 1
    dup = [k for k, v in seen.items() if v > 1]
    if dup:
        raise DpradError(
            f"sweep: cell id {dup[0]} occurs twice: give the grid.modes entries distinct 'name's"
        )
    return cells


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


@dataclass(frozen=True)
class CellOutcome:
    cell: str
    status: str  # done | failed
    error: str
    wall_s: float | None
    reused: bool
    attempts: int


def cell_finished(run_dir: Path) -> bool:
    return all((run_dir / f).is_file() for f in (DONE, "privacy.json", EVALUATION))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def run_cell(task: CellTask, *, on_step: Callable[[Any], None] | None = None) -> CellOutcome:
    """Train (or resume), evaluate and optionally audit one cell; any error is recorded, not raised."""
    cell, run_dir = task.cell, task.run_dir
    spec = cell.spec()
    state = _read_json(run_dir / CELL) or {}
    same = state.get("spec") == spec
    if same and cell_finished(run_dir):
        done = _read_json(run_dir / DONE) or {}
        return CellOutcome(cell.id, "done", "", done.get("wall_s"), True, int(state.get("attempts", 1)))
    attempts = int(state.get("attempts", 0)) + 1 if same else 1
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / DONE).unlink(missing_ok=True)
    io.write_json(run_dir / CELL, {"spec": spec, "attempts": attempts, "status": "running", "error": ""})
    tick = time.perf_counter()
    try:
        if task.threads:
            import torch

            torch.set_num_threads(task.threads)  # a worker process of its own: nothing else shares it
        trained = same and (run_dir / "privacy.json").is_file() and not (run_dir / "checkpoint.pt").exists()
        if not trained:
            _train(cell, run_dir, task.reports, fresh=not same, on_step=on_step)
        (run_dir / EVALUATION).unlink(missing_ok=True)
        evaluation = _evaluate(cell, run_dir, task.evaluate)
        io.write_json(run_dir / EVALUATION, evaluation)
        if task.audit is not None:
            _audit_cell(run_dir, task.audit, task.reports)
        wall = time.perf_counter() - tick
        io.write_json(run_dir / CELL, {"spec": spec, "attempts": attempts, "status": "done", "error": ""})
        io.write_json(
            run_dir / DONE, {"wall_s": round(wall, 2), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        )
        return CellOutcome(cell.id, "done", "", round(wall, 2), False, attempts)
    except Exception as err:  # noqa: BLE001 - a failed cell is recorded with its error; the others go on
        message = " ".join(f"{type(err).__name__}: {err}".split())
        io.write_json(
            run_dir / CELL, {"spec": spec, "attempts": attempts, "status": "failed", "error": message}
        )
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
        if fresh or not (run_dir / "config.json").exists():
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

    audit_run(
        run_dir,
        attacks=spec.attacks,
        reference_models=spec.reference_models,
        rng=np.random.default_rng(0),
        reports=reports,
        n_boot=spec.n_boot,
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
    if jobs == 1 or len(tasks) <= 1:
        for t in tasks:
            finished(run_cell(t, on_step=on_step))
    else:
        import multiprocessing

        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures: dict[Future[CellOutcome], CellTask] = {pool.submit(_run_cell_task, t): t for t in tasks}
            from concurrent.futures import as_completed

            for fut in as_completed(futures):
                t = futures[fut]
                try:
                    finished(fut.result())
                except Exception as err:  # noqa: BLE001 - a worker that died: the cell is failed, not the sweep
                    msg = " ".join(f"worker process failed: {type(err).__name__}: {err}".split())
                    finished(CellOutcome(t.cell.id, "failed", msg, None, False, 0))
    csv_path, pq_path = write_results(out, cells, outcomes)
    selection_path = write_selection(out, cells, cfg)
    report = _write_report(out, cfg, cells, notes) if cfg.report else None
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


def fingerprint(*paths: str | None) -> str:
    """sha256 of the files' bytes (folders: of their files' names, sizes and mtimes); missing paths count
    as absent, so that a dataset that cannot be read still plans (and fails) its cells."""
    import hashlib

    h = hashlib.sha256()
    for p in dict.fromkeys(x for x in paths if x):
        path = Path(p)
        h.update(f"{p}\0".encode())
        if path.is_file():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        elif path.is_dir():
            for q in sorted(path.rglob("*")):
                if q.is_file():
                    st = q.stat()
                    h.update(f"{q.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


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
    from dprad.stages.train import prepare, resolve

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
            elif _builtin_schema(schema.name):
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


def result_rows(
    out: Path, cells: Sequence[Cell], outcomes: Mapping[str, CellOutcome]
) -> list[dict[str, Any]]:
    """One row per cell, from the files in its run directory (and this invocation's outcome)."""
    rows = []
    for c in cells:
        run_dir = out / "cells" / c.id
        o = outcomes.get(c.id)
        state = _read_json(run_dir / CELL) or {}
        ledger = _read_json(run_dir / "privacy.json") or {}
        ev = _read_json(run_dir / EVALUATION) or {}
        done = _read_json(run_dir / DONE) or {}
        config = _read_json(run_dir / "config.json") or {}
        head = ev.get("headline", {}) if cell_finished(run_dir) else {}
        wf1, auroc = head.get("weighted_f1") or {}, head.get("macro_auroc") or {}
        if o is not None:
            status, error = o.status, o.error
        elif cell_finished(run_dir) and state.get("spec") == c.spec():
            status, error = "done", ""
        else:
            status, error = "pending", ""
        mode = ledger.get("mode") or c.mode  # the ledger's mode carries dp- exactly when the run is private
        rows.append(
            {
                "cell": c.id,
                "dataset": c.dataset,
                "model": _slug(c.model),
                "mode": mode,
                "private": c.private,
                "epsilon_target": c.epsilon,
                "epsilon_spent": _num(ledger.get("epsilon")) if c.private else math.inf,
                "delta": _num(ledger.get("delta")),
                "noise_multiplier": _num(ledger.get("noise_multiplier")),
                "steps": _num(ledger.get("steps")),
                "seed": c.seed,
                "split_seed": c.config.data.split_seed,
                "status": status,
                "error": error,
                "weighted_f1": _num(wf1.get("estimate")),
                "weighted_f1_low": _num(wf1.get("ci_low")),
                "weighted_f1_high": _num(wf1.get("ci_high")),
                "macro_auroc": _num(auroc.get("estimate")),
                "macro_auroc_low": _num(auroc.get("ci_low")),
                "macro_auroc_high": _num(auroc.get("ci_high")),
                "thresholds": (ev.get("thresholds") or {}).get("source", ""),
                "test_reports": _num(ev.get("reports")),
                "wall_s": _num(done.get("wall_s")) if status == "done" else _num(o.wall_s if o else None),
                "attempts": int(state.get("attempts", 0)),
                "reused": bool(o.reused) if o is not None else False,
                "run_dir": str(run_dir),
            }
        )
        if status == "done" and not config:
            rows[-1]["status"], rows[-1]["error"] = "failed", "config.json missing"
    return rows


def _num(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else math.nan


def write_results(out: Path, cells: Sequence[Cell], outcomes: Mapping[str, CellOutcome]) -> tuple[Path, Path]:
    import pandas as pd

    df = pd.DataFrame(result_rows(out, cells, outcomes), columns=list(RESULT_COLUMNS))
    csv_path, pq_path = out / "results.csv", out / "results.parquet"
    io.write_with(csv_path, lambda tmp: df.to_csv(tmp, index=False))
    io.write_with(pq_path, lambda tmp: df.to_parquet(tmp, index=False))
    return csv_path, pq_path


def write_selection(out: Path, cells: Sequence[Cell], cfg: SweepConfig) -> Path:
    """Which finished private cells were compared on which data, and the cost of choosing among them."""
    from dprad.privacy.selection import Candidate, all_costs

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
        for scope, group in scopes:
            splits = sorted({c.config.data.split_seed for c in group})
            entry: dict[str, Any] = {
                "dataset": ds,
                "scope": scope,
                "candidates": [c.id for c in group],
                "compared_on": (
                    f"the validation split of {group[0].config.data.path} "
                    f"(patient-level split seed(s) {', '.join(map(str, splits))}), scored without DP"
                ),
            }
            try:
                cands = [
                    Candidate.from_ledger(c.id, _read_json(out / "cells" / c.id / "privacy.json") or {})
                    for c in group
                ]
                entry["costs"] = {k: v.to_dict() for k, v in all_costs(cands).items()}
            except DpradError as err:
                entry["error"] = str(err)
            groups.append(entry)
    path = out / "selection.json"
    io.write_json(
        path,
        {
            "what": (
                "Choosing 'the best run' among these cells by their validation scores is a release of its own: "
                "the chosen model depends on every candidate's training. Each cell's ledger covers that cell "
                "alone. The costs below bound the chosen model's epsilon for the training reports; the "
                "validation reports used to score the candidates are not protected by any of them. A cell "
                "chosen before seeing any result (e.g. the one the protocol fixed in advance) costs only its own "
                "ledger's epsilon."
            ),
            "sweep": cfg.name,
            "evaluate_thresholds": cfg.evaluate.thresholds,
            "groups": groups,
        },
    )
    return path


def _write_report(out: Path, cfg: SweepConfig, cells: Sequence[Cell], notes: list[str]) -> Path | None:
    try:
        from dprad.report.html import write_report
    except ImportError:
        notes.append("report: dprad.report is not available; no report.html written")
        return None
    runs = [out / "cells" / c.id for c in cells if cell_finished(out / "cells" / c.id)]
    if not runs:
        notes.append("report: no finished cell to report on")
        return None
    return Path(
        write_report(
            runs, out / "report.html", sweep_table=out / "results.parquet", title=f"dprad sweep: {cfg.name}"
        )
    )


__all__ = [
    "AuditSpec",
    "Cell",
    "CellOutcome",
    "CellTask",
    "DatasetSpec",
    "ModeSpec",
    "SweepConfig",
    "SweepResult",
    "cell_finished",
    "fingerprint",
    "plan_cells",
    "result_rows",
    "run_cell",
    "run_sweep",
    "write_results",
    "write_selection",
]
