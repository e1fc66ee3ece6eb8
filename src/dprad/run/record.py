"""A finished run directory read back, typed: the one reader of a run's files.

Everything that reads a run (the report and model card, evaluation, monitoring, serving, the audit, the
sweep, prediction) opens it here; nothing else parses ``config.json``, ``privacy.json``, ``schema.json``,
``splits.json``, ``metrics.json``, ``notes.json``, ``audit.json``, ``reference.json`` or an
``evaluation*.json``. Run directories written by earlier versions load too (fields added since take
their defaults).

An export (``dprad export``: the shareable part of a run, marked by ``MANIFEST.json``) opens here too: it
has no splits and no metrics, its thresholds are in ``thresholds.json`` and its base encoder is bundled in
``encoder/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from dprad.config import MODE_ALIASES, RunConfig
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema
from dprad.errors import DpradError
from dprad.privacy.ledger import PrivacyLedger
from dprad.run import files
from dprad.run.audit import Audit, read_audit
from dprad.run.files import mapping, read_json, read_object
from dprad.run.results import (
    SHIPPED,
    Evaluation,
    evaluation_from_metrics,
    integer,
    number,
    read_evaluation,
)

FEDERATED = "federated: "  # how the rule of thresholds a federation chose begins


@dataclass(frozen=True)
class Thresholds:
    """The per-label decision thresholds a run ships with (``metrics.json``'s ``thresholds``, an export's
    ``thresholds.json``), and how they were chosen: written by :meth:`to_dict`, read by :meth:`from_dict`."""

    values: tuple[float, ...]  # (L,) in the schema's label order
    fitted_on: str | None  # "val (DP)", "val (NOT private)", "val", or None (0.5 for every label)
    rule: str
    epsilon: float | None = None  # their share of the ledger's epsilon, when chosen under DP
    # how a run fitted them, as its metrics.json records it (an export ships none of it: the same thresholds)
    noise_multiplier: float | None = field(default=None, compare=False)  # a single run's DP histograms'
    reports: int | None = field(default=None, compare=False)  # validation reports (or patients) they counted
    critical: tuple[str, ...] = field(default=(), compare=False)  # labels held to a validation sensitivity

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=float)

    @property
    def covered(self) -> bool:
        """Whether the privacy ledger covers them: chosen under DP (inside its epsilon), or the fixed 0.5."""
        return self.fitted_on is None or "(DP)" in self.fitted_on

    @property
    def federated(self) -> bool:
        """Chosen by a federation from every site's noisy histograms: ``metrics.json`` states their epsilon
        even when there is none (a non-private federation)."""
        return self.rule.startswith(FEDERATED)

    @property
    def source(self) -> str:
        """One phrase a reader can quote: which thresholds these are."""
        if self.fitted_on is None:
            return "0.5 for every label"
        how = self.fitted_on.removeprefix("val").strip(" ()") or "a non-private run"
        return f"fitted on the validation split ({how})"

    def describe(self) -> str:
        return f"validation-fitted: {self.rule}" if self.fitted_on else self.rule

    def to_dict(self) -> dict[str, Any]:
        """``metrics.json``'s ``thresholds``."""
        out: dict[str, Any] = {"fitted_on": self.fitted_on, "rule": self.rule}
        if self.epsilon is not None or self.federated:
            out["epsilon"] = self.epsilon
        if self.noise_multiplier is not None:
            out["noise_multiplier"] = self.noise_multiplier
        if self.reports is not None:
            out["reports"] = self.reports
        return {**out, "critical": list(self.critical), "values": list(self.values)}

    def to_export(self, labels: Sequence[str]) -> dict[str, Any]:
        """An export's ``thresholds.json``: the values by label and how they were chosen; no count of
        validation reports (an exact count is a release the ledger does not cover)."""
        return {
            "labels": list(labels),
            "values": list(self.values),
            "fitted_on": self.fitted_on,
            "rule": self.rule,
            "epsilon": self.epsilon,
        }

    @classmethod
    def from_dict(cls, fitted: Mapping[str, Any], schema: LabelSchema, *, source: str) -> Thresholds:
        """``metrics.json``'s ``thresholds`` or an export's ``thresholds.json`` (empty: a run from before
        thresholds were recorded, which shipped 0.5)."""
        values = fitted.get("values")
        if values is None:  # a run from before thresholds were recorded: it shipped 0.5
            return cls(
                tuple([0.5] * len(schema)), None, "0.5 for every label (the run records no fitted thresholds)"
            )
        if not isinstance(values, list) or len(values) != len(schema):
            raise DpradError(f"{source}: thresholds.values must list one number per label ({len(schema)})")
        fitted_on = fitted.get("fitted_on")
        rule = str(fitted.get("rule") or ("fitted on the validation split" if fitted_on else "0.5"))
        eps, sigma, reports = fitted.get("epsilon"), fitted.get("noise_multiplier"), fitted.get("reports")
        critical = fitted.get("critical")
        return cls(
            tuple(float(v) for v in values),
            None if fitted_on is None else str(fitted_on),
            rule,
            None if eps is None else float(eps),
            number(sigma),
            integer(reports),
            tuple(str(c) for c in critical) if isinstance(critical, list) else (),
        )


@dataclass(frozen=True)
class ManifestEntry:
    """One file of an export, as its ``MANIFEST.json`` lists it."""

    path: str  # relative to the export, with '/'
    sha256: str
    bytes: int
    why: str  # why it is safe to share

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str) -> ManifestEntry:
        try:
            return cls(str(raw["path"]), str(raw["sha256"]), int(raw["bytes"]), str(raw.get("why") or ""))
        except (KeyError, TypeError, ValueError):
            raise DpradError(f"{source}: each file needs path, sha256 and bytes") from None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes, "why": self.why}


@dataclass(frozen=True)
class Manifest:
    """An export's ``MANIFEST.json``: what it holds, and what of the run it leaves out."""

    run: str  # the name of the run it was exported from
    files: tuple[ManifestEntry, ...]
    left_out: tuple[tuple[str, str], ...]  # (a file of the run, why the export leaves it out)


@dataclass(frozen=True)
class RunRecord:
    """One finished run directory, typed. ``RunRecord.open(path)``; every field is the run's own."""

    path: Path
    config: RunConfig
    derived: Mapping[str, Any]  # config.json's informational section (model_dir, steps, sigma, ...)
    ledger: PrivacyLedger
    schema: LabelSchema
    splits: Mapping[str, tuple[str, ...]]  # split name -> report ids, as trained
    thresholds: Thresholds  # the shipped thresholds
    metrics: Mapping[str, Any] = field(repr=False)  # metrics.json as written (see ``evaluation_of``)
    notes: tuple[str, ...] = ()
    is_export: bool = False  # a ``dprad export`` (no splits, no metrics, the encoder bundled), not a run

    # ------------------------------------------------------------------ opening

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """A finished run directory: config.json and privacy.json (written last) are both there."""
        p = Path(path)
        return p.is_dir() and (p / files.CONFIG).is_file() and (p / files.PRIVACY).is_file()

    @staticmethod
    def is_unfinished(path: str | Path) -> bool:
        """A dprad run directory whose training has not finished: a dprad run's config.json (it has a
        'train' section, not some other tool's, a model's say) and no privacy.json."""
        p = Path(path)
        if RunRecord.is_run(p) or not (p / files.CONFIG).is_file():
            return False
        try:
            return "train" in mapping(read_json(p / files.CONFIG))
        except DpradError:
            return False

    @classmethod
    def open(cls, path: str | Path) -> RunRecord:
        path = Path(path)
        if not path.is_dir():
            raise DpradError(f"{path}: no such run directory")
        for name in (files.CONFIG, files.PRIVACY):
            if not (path / name).is_file():
                raise DpradError(f"{path}: not a finished dprad run directory ({name} is missing)")
        raw = read_object(path / files.CONFIG)
        config = RunConfig.from_dict(files.as_run_config(raw), source=str(path / files.CONFIG))
        ledger = PrivacyLedger.from_dict(read_json(path / files.PRIVACY), source=str(path / files.PRIVACY))
        schema = LabelSchema.from_dict(read_object(path / files.SCHEMA), source=str(path / files.SCHEMA))
        if (path / files.MANIFEST).is_file():
            return cls._open_export(path, raw, config, ledger, schema)
        splits_raw = read_object(path / files.SPLITS)
        splits = {str(k): tuple(str(i) for i in v) for k, v in splits_raw.items() if isinstance(v, list)}
        metrics = read_object(path / files.METRICS) if (path / files.METRICS).is_file() else {}
        notes_raw = read_json(path / files.NOTES) if (path / files.NOTES).is_file() else []
        return cls(
            path=path,
            config=config,
            derived=mapping(raw.get("derived")),
            ledger=ledger,
            schema=schema,
            splits=splits,
            thresholds=Thresholds.from_dict(
                mapping(metrics.get("thresholds")), schema, source=str(path / files.METRICS)
            ),
            metrics=metrics,
            notes=tuple(str(n) for n in notes_raw) if isinstance(notes_raw, list) else (),
        )

    @classmethod
    def _open_export(
        cls, path: Path, raw: Mapping[str, Any], config: RunConfig, ledger: PrivacyLedger, schema: LabelSchema
    ) -> RunRecord:
        """An export: the run's config, ledger and schema, its shipped thresholds, and nothing about its data."""
        source = str(path / files.THRESHOLDS)
        shipped = read_object(path / files.THRESHOLDS)
        if not isinstance(shipped.get("values"), list):
            raise DpradError(f"{source}: 'values' must list one threshold per label ({len(schema)})")
        return cls(
            path=path,
            config=config,
            derived=mapping(raw.get("derived")),
            ledger=ledger,
            schema=schema,
            splits={},
            thresholds=Thresholds.from_dict(shipped, schema, source=source),
            metrics={},
            is_export=True,
        )

    def manifest(self) -> Manifest | None:
        """An export's ``MANIFEST.json`` (None for a run)."""
        p = self.path / files.MANIFEST
        if not p.is_file():
            return None
        raw = read_object(p)
        entries, left_out = raw.get("files"), raw.get("left_out") or []
        if not isinstance(entries, list) or not isinstance(left_out, list):
            raise DpradError(f"{p}: 'files' and 'left_out' must be lists")
        return Manifest(
            run=str(raw.get("run") or self.name),
            files=tuple(ManifestEntry.from_dict(mapping(e), source=str(p)) for e in entries),
            left_out=tuple((str(mapping(e).get("file")), str(mapping(e).get("why") or "")) for e in left_out),
        )

    # ------------------------------------------------------------------ what the run is

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def mode(self) -> str:
        """The registry name of the run's mode (``head``, ``lora``, ``full``)."""
        m = self.config.train.mode
        return MODE_ALIASES.get(m, m)

    @property
    def noise_source(self) -> str:
        """Where a private run's DP draws came from (``privacy.ledger.noise_source``): a run written before
        secret noise reads as NOISE_WRITTEN, "noise seeded from a written value" (its config.json's
        ``train.seed``), whose guarantee does not hold against whoever holds its files."""
        from dprad.privacy.ledger import noise_source

        return noise_source(self.ledger)

    @property
    def noise_warning(self) -> str | None:
        """The sentence a run whose noise is not secret carries (None: secret, or not private)."""
        from dprad.privacy.ledger import noise_warning

        return noise_warning(self.ledger)

    @property
    def display_mode(self) -> str:
        """The mode as the ledger names it: ``dp-head`` for a private head."""
        mode = self.ledger.mode if self.ledger.mode not in ("", "unknown") else self.mode
        return f"dp-{mode}" if self.ledger.private and not mode.startswith("dp-") else mode

    @property
    def model_dir(self) -> str:
        """The encoder the run was trained from: the directory it was resolved to when the run trained,
        or, when the run has moved to where that path does not exist, its name resolved again here (an
        export: its own ``encoder/``)."""
        from dprad.local_models import resolve_model_dir

        if self.is_export:  # bundled
            return str(self.path / files.ENCODER)
        recorded = self.derived.get("model_dir")
        if recorded and Path(str(recorded)).is_dir():
            return str(recorded)
        return str(resolve_model_dir(self.config.model.name))

    @property
    def model_path(self) -> Path:
        """The run's own trained weights (``model/``)."""
        return self.path / files.MODEL

    @property
    def data_path(self) -> str:
        return str(self.config.data.path or "")

    # ------------------------------------------------------------------ results

    def evaluation_of(self, split: str = "test", *, thresholds: str = SHIPPED) -> Evaluation | None:
        """metrics.json's point estimates for one split, at the shipped thresholds (or ``"0.5"``)."""
        return evaluation_from_metrics(
            self.path / files.METRICS,
            self.metrics,
            train_data=self.data_path,
            critical=self.schema.critical,
            split=split,
            thresholds=thresholds,
        )

    @cached_property
    def evaluation(self) -> Evaluation | None:
        """``evaluation.json`` (with CIs) when the run was evaluated, else None."""
        p = self.path / files.EVALUATION
        if not p.is_file():
            return None
        return read_evaluation(p, train_data=self.data_path, critical=self.schema.critical)

    @cached_property
    def extra_evaluations(self) -> tuple[Evaluation, ...]:
        """``evaluation-*.json``: evaluations on other datasets (domain transfer)."""
        return tuple(
            read_evaluation(p, train_data=self.data_path, critical=self.schema.critical)
            for p in sorted(self.path.glob(files.OTHER_EVALUATIONS))
        )

    @cached_property
    def audit(self) -> Audit | None:
        p = self.path / files.AUDIT
        return read_audit(p) if p.is_file() else None

    def audit_sections(self) -> dict[str, Any]:
        """``audit.json`` as written (sections are added to it by later audits), or an empty one."""
        p = self.path / files.AUDIT
        return read_object(p) if p.is_file() else {}

    def reference(self) -> dict[str, Any] | None:
        """``reference.json`` (the monitor's baseline), when the run wrote one."""
        p = self.path / files.REFERENCE
        return read_object(p) if p.is_file() else None

    def history(self) -> list[Any]:
        p = self.path / files.HISTORY
        raw = read_json(p) if p.is_file() else []
        return list(raw) if isinstance(raw, list) else []

    # ------------------------------------------------------------------ its data

    def split_ids(self, split: str) -> tuple[str, ...]:
        if self.is_export:
            raise DpradError(f"{self.path}: an export holds no splits (no '{split}' split to read)")
        if split not in self.splits:
            raise DpradError(f"{self.path / files.SPLITS}: no '{split}' split")
        return self.splits[split]

    def split_reports(self, split: str) -> tuple[list[Report], LabelSchema]:
        """The reports of one of the run's own splits, read again from its training data with its reader
        settings, and the schema they were read with."""
        from dprad.data.read import read_data

        ids = set(self.split_ids(split))
        result, schema, _ = read_data(self.config.data)
        return [r for r in result.reports if r.id in ids], schema


def open_run(path: str | Path) -> RunRecord:
    """``RunRecord.open``: the typed read side of a finished run directory."""
    return RunRecord.open(path)
