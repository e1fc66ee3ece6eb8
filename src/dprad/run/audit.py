"""A run's ``audit.json`` read back typed: the one-run canary audit and membership-inference attacks."""

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


@dataclass(frozen=True)
class Mia:
    auc: float | None  # a single AUC, when the section holds one rather than per-attack results
    attacks: tuple[Attack, ...]
    members: int | None
    nonmembers: int | None
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class Audit:
    source: str
    canary: Canary | None
    mia: Mia | None
    raw: Mapping[str, Any]


def read_audit(path: Path) -> Audit:
    raw = mapping(read_json(path))
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
            Attack(str(name), interval(res.get("auc")), interval(res.get("tpr_at_0.01_fpr")))
            for name, res in mapping(m.get("attacks")).items()
            if isinstance(res, Mapping)
        )
        mia = Mia(auc, attacks, integer(m.get("members")), integer(m.get("nonmembers")), raw=m)
    return Audit(str(path), canary, mia, raw)
