"""The read side of a federation: ``federation.json`` (written by ``dprad federate server`` or ``local``),
typed, for the report and the model card."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dprad.errors import DpradError
from dprad.run.files import mapping, read_object

FEDERATION = "federation.json"


@dataclass(frozen=True)
class SiteResult:
    """One hospital: its guarantee as its own ledger states it, its rounds and its test metrics."""

    name: str
    private: bool
    epsilon: float | None
    delta: float | None
    rounds: int
    rounds_agreed: int
    reports: int | None  # test reports it evaluated on (None: it did not answer the evaluation)
    weighted_f1: dict[str, float] | None  # {"estimate", "ci_low", "ci_high"}
    macro_f1: dict[str, float] | None


@dataclass(frozen=True)
class FederationRecord:
    path: Path
    config: dict[str, Any]
    sites: tuple[SiteResult, ...]
    rounds: tuple[dict[str, Any], ...]
    thresholds: dict[str, Any]
    overall: dict[str, Any] | None
    refused: dict[str, str]
    client_level_dp: dict[str, Any] | None
    # how the server aggregated (federate/server.py): on / off and what it saw; {} before secure
    # aggregation existed (every such federation aggregated in the plain)
    secure_aggregation: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def is_federation(path: str | Path) -> bool:
        return (Path(path) / FEDERATION).is_file()

    @classmethod
    def open(cls, path: str | Path) -> FederationRecord:
        path = Path(path)
        if not cls.is_federation(path):
            raise DpradError(f"{path}: not a federation directory (no {FEDERATION})")
        raw = read_object(path / FEDERATION)
        where = str(path / FEDERATION)
        try:
            evaluation = mapping(raw.get("evaluation"))
            per_site = mapping(evaluation.get("sites"))
            sites = []
            for name, g in mapping(raw["guarantees"]).items():
                ev = per_site.get(name)
                sites.append(
                    SiteResult(
                        name=str(name),
                        private=bool(g["private"]),
                        epsilon=None if g.get("epsilon") is None else float(g["epsilon"]),
                        delta=None if g.get("delta") is None else float(g["delta"]),
                        rounds=int(g["rounds"]),
                        rounds_agreed=int(g["rounds_agreed"]),
                        reports=None if ev is None else int(ev["reports"]),
                        weighted_f1=None if ev is None else dict(ev["headline"]["weighted_f1"]),
                        macro_f1=None if ev is None else dict(ev["headline"]["macro_f1"]),
                    )
                )
            return cls(
                path=path,
                config=dict(mapping(raw["config"])),
                sites=tuple(sites),
                rounds=tuple(dict(r) for r in raw["rounds"]),
                thresholds=dict(mapping(raw["thresholds"])),
                overall=dict(evaluation["overall"]) if "overall" in evaluation else None,
                refused={str(k): str(v) for k, v in mapping(raw.get("refused")).items()},
                client_level_dp=dict(raw["client_level_dp"]) if raw.get("client_level_dp") else None,
                secure_aggregation=dict(mapping(raw.get("secure_aggregation"))),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DpradError(f"{where}: not a complete dprad federation record ({err})") from None


__all__ = ["FEDERATION", "FederationRecord", "SiteResult"]
