"""Typed results read back from a run: one schema for what ``metrics.json`` (point estimates, written by
training) and ``evaluation.json`` (with bootstrap CIs, written by ``dprad evaluate``) say.

Reading only: every number is copied from a file. A missing value is ``None``, and whoever renders it says
so instead of inventing one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dprad.errors import DpradError
from dprad.run.files import mapping, read_json

RARE_SUPPORT = 20  # a label with fewer positive test reports than this is marked rare
HEADLINE_KEYS = ("weighted_f1", "macro_f1", "micro_f1", "macro_auroc")


@dataclass(frozen=True)
class Interval:
    """A point estimate and, when the evaluation bootstrapped one, its 95% CI."""

    estimate: float | None
    low: float | None = None
    high: float | None = None

    @property
    def has_ci(self) -> bool:
        return finite(self.low) and finite(self.high)

    @property
    def known(self) -> bool:
        return finite(self.estimate)


@dataclass(frozen=True)
class LabelResult:
    label: str
    support: int | None  # positive reports in the evaluated split
    f1: Interval
    recall: Interval
    specificity: Interval
    auroc: Interval
    critical: bool = False

    @property
    def rare(self) -> bool:
        return self.support is not None and self.support < RARE_SUPPORT


@dataclass(frozen=True)
class ReliabilityBin:
    mean_predicted: float
    observed_rate: float
    count: int


@dataclass(frozen=True)
class Calibration:
    pooled_ece: float | None
    pooled_brier: float | None
    bins: tuple[ReliabilityBin, ...]
    n_bins: int | None
    binning: str
    per_label_ece: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class GroupResult:
    name: str
    reports: int | None
    small: bool
    weighted_f1: Interval


@dataclass(frozen=True)
class Subgroups:
    attribute: str
    groups: tuple[GroupResult, ...]
    min_group_size: int | None
    largest_tpr_gap: float | None  # the largest equal-opportunity difference over labels, as evaluated
    largest_tpr_gap_label: str | None


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run: evaluation.json (CIs) or, without one, metrics.json (point estimates)."""

    source: str  # path of the file read
    has_ci: bool
    data: str | None
    split: str | None
    reports: int | None
    patients: int | None
    thresholds: str | None
    bootstrap_resamples: int | None
    headline: Mapping[str, Interval]
    per_label: tuple[LabelResult, ...]
    calibration: Calibration | None
    subgroups: tuple[Subgroups, ...]
    notes: tuple[str, ...]
    domain_transfer: bool  # evaluated on a dataset other than the one the run was trained on

    def metric(self, name: str) -> Interval:
        return self.headline.get(name, Interval(None))


# ---------------------------------------------------------------------------------------------------
# defensive number readers (a hand-edited or older file may hold odd values)


def finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def number(x: object) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return None


def integer(x: object) -> int | None:
    f = number(x)
    return int(f) if f is not None and math.isfinite(f) else None


def interval(x: object) -> Interval:
    if isinstance(x, Mapping):
        return Interval(number(x.get("estimate")), number(x.get("ci_low")), number(x.get("ci_high")))
    return Interval(number(x))


# ---------------------------------------------------------------------------------------------------
# evaluations


def _calibration(raw: object) -> Calibration | None:
    c = mapping(raw)
    if not c:
        return None
    bins = []
    for b in c.get("pooled_reliability") or ():
        b = mapping(b)
        mp, obs = number(b.get("mean_predicted")), number(b.get("observed_rate"))
        if mp is not None and obs is not None:
            bins.append(ReliabilityBin(mp, obs, integer(b.get("count")) or 0))
    per = []
    for row in c.get("per_label") or ():
        row = mapping(row)
        ece = number(row.get("ece"))
        if ece is not None and row.get("label") is not None:
            per.append((str(row["label"]), ece))
    return Calibration(
        pooled_ece=number(c.get("pooled_ece")),
        pooled_brier=number(c.get("pooled_brier")),
        bins=tuple(bins),
        n_bins=integer(c.get("bins")),
        binning=str(c.get("binning") or ""),
        per_label_ece=tuple(per),
    )


def _subgroups(raw: object) -> tuple[Subgroups, ...]:
    out = []
    for attribute, section in mapping(raw).items():
        section = mapping(section)
        groups = tuple(
            GroupResult(
                name=str(name),
                reports=integer(mapping(g).get("reports")),
                small=bool(mapping(g).get("small", False)),
                weighted_f1=interval(mapping(g).get("weighted_f1")),
            )
            for name, g in mapping(section.get("groups")).items()
        )
        gap, gap_label = None, None
        for row in section.get("gaps") or ():
            row = mapping(row)
            value = number(row.get("equal_opportunity_difference"))
            if value is not None and math.isfinite(value) and (gap is None or value > gap):
                gap, gap_label = value, str(row.get("label"))
        out.append(Subgroups(str(attribute), groups, integer(section.get("min_group_size")), gap, gap_label))
    return tuple(out)


def _same_data(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return True  # unknown: do not claim a transfer
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def read_evaluation(path: Path, *, train_data: str | None, critical: Sequence[str] = ()) -> Evaluation:
    """An evaluation.json written by ``dprad evaluate --out`` (headline and per-label metrics with CIs)."""
    raw = mapping(read_json(path))
    if "headline" not in raw and "per_label" not in raw:
        raise DpradError(f"{path}: not a dprad evaluation (no 'headline' or 'per_label' key)")
    headline = {str(k): interval(v) for k, v in mapping(raw.get("headline")).items()}
    per = tuple(
        LabelResult(
            label=str(row.get("label")),
            support=integer(row.get("support")),
            f1=interval(row.get("f1")),
            recall=interval(row.get("recall")),
            specificity=interval(row.get("specificity")),
            auroc=interval(row.get("auroc")),
            critical=str(row.get("label")) in critical,
        )
        for row in (mapping(r) for r in raw.get("per_label") or ())
    )
    notes = tuple(str(n) for n in raw.get("notes") or ())
    data = str(raw["data"]) if raw.get("data") else None
    transfer = any(n.startswith("domain transfer") for n in notes) or not _same_data(data, train_data)
    boot = mapping(raw.get("bootstrap"))
    return Evaluation(
        source=str(path),
        has_ci=any(i.has_ci for i in headline.values()),
        data=data,
        split=str(raw["split"]) if raw.get("split") else None,
        reports=integer(raw.get("reports")),
        patients=integer(raw.get("patients")),
        thresholds=str(mapping(raw.get("thresholds")).get("source") or "") or None,
        bootstrap_resamples=integer(boot.get("resamples")),
        headline=headline,
        per_label=per,
        calibration=_calibration(raw.get("calibration")),
        subgroups=_subgroups(raw.get("subgroups")),
        notes=notes,
        domain_transfer=transfer,
    )


SHIPPED = "shipped"  # the thresholds the run ships with (metrics.json's "threshold_val" section)


def evaluation_from_metrics(
    path: Path,
    metrics: Mapping[str, Any],
    *,
    train_data: str | None,
    critical: Sequence[str] = (),
    split: str = "test",
    thresholds: str = SHIPPED,
) -> Evaluation | None:
    """One split of metrics.json as an :class:`Evaluation`: point estimates only (no CI), as training wrote
    them, at the run's shipped thresholds (``SHIPPED``: the fitted ones when the run fitted any, else 0.5)
    or at ``"0.5"``."""
    section = mapping(metrics.get(split))
    fitted = mapping(metrics.get("thresholds"))
    at = section.get("threshold_val") if thresholds == SHIPPED else None
    which = str(fitted.get("fitted_on") or "validation split") if at else "0.5"
    values = mapping(at) or mapping(section.get("threshold_0.5"))
    if not values:
        return None
    headline = {k: Interval(number(values.get(k))) for k in HEADLINE_KEYS if k in values}
    per = tuple(
        LabelResult(
            label=str(row.get("label")),
            support=integer(row.get("support")),
            f1=Interval(number(row.get("f1"))),
            recall=Interval(number(row.get("recall"))),
            specificity=Interval(number(row.get("specificity"))),
            auroc=Interval(number(row.get("auroc"))),
            critical=str(row.get("label")) in critical,
        )
        for row in (mapping(r) for r in values.get("per_label") or ())
    )
    where = f"thresholds fitted on {which}" if at else "threshold 0.5"
    return Evaluation(
        source=str(path),
        has_ci=False,
        data=train_data,
        split=split,
        reports=None,
        patients=None,
        thresholds="val" if at else "0.5",
        bootstrap_resamples=None,
        headline=headline,
        per_label=per,
        calibration=None,
        subgroups=(),
        notes=(f"metrics.json {split} split at the shipped thresholds ({where}): point estimates, no CI",),
        domain_transfer=False,
    )
