"""The cells of a sweep: one normal run per (dataset, model, mode, epsilon, seed), in a stable order."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from dprad.config import MODE_ALIASES, Mode, RunConfig
from dprad.errors import DpradError
from dprad.run.files import as_written
from dprad.sweep.spec import DatasetSpec, ModeSpec, SweepConfig

# head -> dp-head, ...
PRIVATE_NAMES: dict[str, str] = {family: alias for alias, family in MODE_ALIASES.items()}


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
        return dict(as_written(d))


def slug(x: str) -> str:
    """A model name or directory as it appears in cell ids and the results table."""
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
                for eps in spec.epsilons or cfg.epsilons:
                    for seed in cfg.seeds:
                        cells.append(_cell(cfg, ds, schema, model, spec, family, eps, seed, feature_cache))
    seen: dict[str, int] = {}
    for c in cells:
        seen[c.id] = seen.get(c.id, 0) + 1
    dup = [k for k, v in seen.items() if v > 1]
    if dup:
        raise DpradError(
            f"sweep: cell id {dup[0]} occurs twice: give the grid.modes entries distinct 'name's"
        )
    return cells


def _cell(
    cfg: SweepConfig,
    ds: DatasetSpec,
    schema: str | None,
    model: str,
    spec: ModeSpec,
    family: str,
    eps: float,
    seed: int,
    feature_cache: str | None,
) -> Cell:
    """One cell: the shared sections, the grid's values for this cell, then the mode entry's overrides."""
    private = math.isfinite(eps)
    mode = "auto" if family == "auto" else (PRIVATE_NAMES[family] if private else family)
    base = cfg.base
    data = replace(ds.data, schema=schema, split_seed=seed if cfg.seed_splits else ds.data.split_seed)
    train = replace(base.train, mode=cast(Mode, mode), seed=seed)  # TrainConfig checks the word
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
    name = family if spec.name == spec.mode else spec.name
    label = f"dp-{name}" if private and not name.startswith("dp-") and mode != "auto" else name
    return Cell(
        id=f"{ds.name}-{slug(run_cfg.model.name)}-{label}-eps{_eps_text(eps)}-s{seed}",
        dataset=ds.name,
        model=run_cfg.model.name,
        mode=mode if mode != "auto" else ("dp-auto" if private else "auto"),
        epsilon=eps,
        seed=seed,
        config=run_cfg,
        eval_path=ds.eval_path,
        eval_format=ds.eval_format,
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
