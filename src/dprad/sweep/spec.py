"""The sweep config: YAML in, a checked :class:`SweepConfig` out.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dprad.config import (
    MODE_ALIASES,
    DataConfig,
    LoraConfig,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    TrainConfig,
)
from dprad.data.schemas import BUILTIN_SCHEMAS
from dprad.errors import DpradError
from dprad.modes import REGISTRY
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
MODE_FAMILIES = ("auto", *REGISTRY)  # auto, then the registered modes (head, lora, full)
AUDIT_KEYS = ("attacks", "reference_models", "n_boot")
SECTION_TYPES: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "lora": LoraConfig,
    "privacy": PrivacyConfig,
    "train": TrainConfig,
}


@dataclass(frozen=True)
class ModeSpec:
    """One entry of ``grid.modes``: a mode family, the epsilons it runs at, and section overrides."""

    mode: str  # auto, or a registered mode (head, lora, full)
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
        return cls(
            base=base,
            models=models,
            epsilons=epsilons,
            modes=modes,
            seeds=seeds,
            datasets=datasets,
            seed_splits=bool(grid.get("seed_splits", True)),
            evaluate=_evaluate(d.get("evaluate"), source),
            audit=_audit(d.get("audit", False), source),
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
    if data.schema and data.schema not in BUILTIN_SCHEMAS:  # a schema file, relative to the config
        data = replace(data, schema=_path(data.schema, here))
    name = str(v.get("name") or Path(data.path).stem)
    if not name.replace("-", "").replace("_", "").isalnum():
        raise DpradError(f"{source}: dataset name '{name}' may hold only letters, digits, '-' and '_'")
    eval_path = _path(str(v["eval_path"]), here) if v.get("eval_path") else data.path
    return DatasetSpec(
        name=name, data=data, eval_path=eval_path, eval_format=str(v.get("eval_format") or data.format)
    )


def _evaluate(v: Any, source: str) -> EvalOptions:
    ev = v or {}
    if not isinstance(ev, Mapping):
        raise DpradError(f"{source}: 'evaluate' must be a mapping")
    _no_unknown(ev, tuple(f.name for f in fields(EvalOptions)), source, "evaluate.")
    values: dict[str, Any] = {k: tuple(x) if isinstance(x, list) else x for k, x in ev.items()}
    return EvalOptions(**values)


def _audit(v: Any, source: str) -> AuditSpec | None:
    if v is False or v is None:
        return None
    if v is True:
        return AuditSpec()
    if not isinstance(v, Mapping):
        raise DpradError(f"{source}: 'audit' must be true, false or a mapping")
    _no_unknown(v, AUDIT_KEYS, source, "audit.")
    return AuditSpec(**dict(v))
