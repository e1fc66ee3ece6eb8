"""A run's ``audit.json`` read back typed: the one-run canary audit, membership inference, attribute
inference and model extraction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dprad.run.files import mapping, read_json
from dprad.run.results import Interval, integer, interval, number


@dataclass(frozen=True)
class Canary:
    epsilon_lower_bound: float | None
    guesses: int | None
    correct: int | None
    ceiling: float | None
    exceeds_ledger: bool | None  # the audit's own verdict: a lower bound above the ledger's eps is a bug
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class Attack:
    name: str
    auc: Interval
    tpr_at_1pct_fpr: Interval
    tpr_at_01pct_fpr: Interval  # TPR at 0.1% FPR
    advantage: Interval  # max(TPR - FPR)


@dataclass(frozen=True)
class Mia:
    auc: float | None  # a single AUC, when the section holds one rather than per-attack results
    attacks: tuple[Attack, ...]
    members: int | None
    nonmembers: int | None
    raw: Mapping[str, Any]
    reference_models: int | None = None  # LiRA / RMIA: the reference models trained for the attack


@dataclass(frozen=True)
class AttributeRow:
    """Attribute inference for one label (or pooled): members' vs non-members' recovery of the finding."""

    label: str
    rare: bool
    critical: bool
    members: int | None
    nonmembers: int | None
    auc: Interval
    tpr_at_1pct_fpr: Interval
    note: str
    control_auc: Interval | None = None  # the control model's AUC on the same groups (--control)


@dataclass(frozen=True)
class Attribute:
    pooled: AttributeRow | None
    labels: tuple[AttributeRow, ...]
    what_it_checks: str
    control: bool = False  # measured against a control model too (--control): rows carry its AUC


@dataclass(frozen=True)
class ExtractionPoint:
    queries: int
    agreement: Interval
    clone_weighted_f1: Interval


@dataclass(frozen=True)
class Extraction:
    """A clone's agreement with the served model by number of attacker queries (reports)."""

    points: tuple[ExtractionPoint, ...]
    constant_agreement: float | None  # the best constant clone: the baseline a clone must beat
    through: str
    evaluated_on: str
    key_budgets: tuple[tuple[str, int | None, int | None], ...]  # (key, budget_total, budget_per_day)
    cut_off: str | None
    what_it_means: str


@dataclass(frozen=True)
class Theory:
    """What the run's ledger promises, written beside what the attacks measured."""

    private: bool | None
    mode: str | None
    epsilon: float | None
    delta: float | None


@dataclass(frozen=True)
class Audit:
    source: str
    canary: Canary | None
    mia: Mia | None
    raw: Mapping[str, Any]
    attribute: Attribute | None = None
    extraction: Extraction | None = None
    theory: Theory | None = None
    run: str | None = None  # the run audited, as the audit named it


def _attribute_row(row: Mapping[str, Any], name: str | None = None) -> AttributeRow:
    return AttributeRow(
        label=name or str(row.get("label")),
        rare=bool(row.get("rare", False)),
        critical=bool(row.get("critical", False)),
        members=integer(row.get("members")),
        nonmembers=integer(row.get("nonmembers")),
        auc=interval(row.get("auc")),
        tpr_at_1pct_fpr=interval(row.get("tpr_at_0.01_fpr")),
        note=str(row.get("note") or ""),
        control_auc=interval(row["control_auc"]) if "control_auc" in row else None,
    )


def read_attribute(raw: object) -> Attribute | None:
    a = mapping(raw)
    if not a:
        return None
    pooled = mapping(a.get("pooled"))
    return Attribute(
        pooled=_attribute_row(pooled, "all labels (pooled)") if pooled else None,
        labels=tuple(_attribute_row(mapping(r)) for r in a.get("labels") or ()),
        what_it_checks=str(a.get("what_it_checks") or ""),
        control=bool(a.get("control")),
    )


def read_extraction(raw: object) -> Extraction | None:
    e = mapping(raw)
    if not e:
        return None
    points = tuple(
        ExtractionPoint(int(n), interval(agree), interval(f1))
        for n, agree, f1 in zip(
            e.get("queries") or (), e.get("agreement") or (), e.get("clone_weighted_f1") or (), strict=False
        )
    )
    budgets = tuple(
        (
            str(mapping(k).get("key")),
            integer(mapping(k).get("budget_total")),
            integer(mapping(k).get("budget_per_day")),
        )
        for k in e.get("key_budgets") or ()
    )
    cut = mapping(e.get("cut_off"))
    return Extraction(
        points=points,
        constant_agreement=number(e.get("constant_agreement")),
        through=str(e.get("through") or ""),
        evaluated_on=str(e.get("evaluated_on") or ""),
        key_budgets=budgets,
        cut_off=str(cut.get("message")) if cut else None,
        what_it_means=str(e.get("what_it_means") or ""),
    )


def read_theory(raw: object) -> Theory | None:
    t = mapping(raw)
    if not t:
        return None
    private = t.get("private")
    return Theory(
        private=private if isinstance(private, bool) else None,
        mode=None if t.get("mode") is None else str(t["mode"]),
        epsilon=number(t.get("epsilon")),
        delta=number(t.get("delta")),
    )


def read_audit(path: Path) -> Audit:
    return audit_of(read_json(path), source=str(path))


def audit_of(content: object, *, source: str) -> Audit:
    """``audit.json``'s content, typed (``source``: where it was read from)."""
    raw = mapping(content)
    canary = None
    c = raw.get("canary")
    if isinstance(c, Mapping):
        canary = Canary(
            epsilon_lower_bound=number(
                c.get("epsilon_lower_bound", c.get("eps_lower_bound", c.get("epsilon_lb")))
            ),
            guesses=integer(c.get("guesses")),
            correct=integer(c.get("correct")),
            ceiling=number(c.get("ceiling")),
            exceeds_ledger=c["exceeds_ledger"] if isinstance(c.get("exceeds_ledger"), bool) else None,
            raw=c,
        )
    mia = None
    m = raw.get("mia")
    if isinstance(m, Mapping):
        auc = next((number(m[k]) for k in ("auc", "auroc", "roc_auc", "mia_auc") if k in m), None)
        if auc is None and isinstance(m.get("auc"), Mapping):
            auc = interval(m["auc"]).estimate
        attacks = tuple(
            Attack(
                str(name),
                interval(res.get("auc")),
                interval(res.get("tpr_at_0.01_fpr")),
                interval(res.get("tpr_at_0.001_fpr")),
                interval(res.get("advantage")),
            )
            for name, res in mapping(m.get("attacks")).items()
            if isinstance(res, Mapping)
        )
        members, nonmembers = integer(m.get("members")), integer(m.get("nonmembers"))
        mia = Mia(
            auc, attacks, members, nonmembers, raw=m, reference_models=integer(m.get("reference_models"))
        )
    return Audit(
        source,
        canary,
        mia,
        raw,
        read_attribute(raw.get("attribute")),
        read_extraction(raw.get("extraction")),
        read_theory(raw.get("theory")),
        None if raw.get("run") is None else str(raw["run"]),
    )
