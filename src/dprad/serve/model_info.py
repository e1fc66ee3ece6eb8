"""What ``GET /v1/model`` answers: the run's schema, shipped thresholds, privacy ledger and metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dprad.run import RunRecord
from dprad.serve.api import ServeLimits

HEADLINE = ("weighted_f1", "macro_f1", "micro_f1", "macro_auroc")
PER_LABEL = ("label", "support", "precision", "recall", "f1", "auroc")


def model_info(record: RunRecord, *, mode: str, limits: ServeLimits) -> dict[str, Any]:
    """The admin view of the model. Its ``metrics`` were computed without DP on the run's own validation and
    test splits: :func:`public_model_info` is what the other roles see."""
    schema, thresholds = record.schema, record.thresholds
    privacy = record.ledger.to_dict()
    return {
        "run": record.name,
        "mode": mode,
        "schema": {k: v for k, v in schema.to_dict().items() if k != "terms"},
        "thresholds": {
            "rule": thresholds.describe(),
            "values": dict(zip(schema.labels, [float(t) for t in thresholds.array], strict=True)),
        },
        "privacy": {
            "statement": privacy.get("statement"),
            "numbers": {k: v for k, v in privacy.items() if k != "statement"},
        },
        "metrics": metrics_summary(record.metrics),
        "limits": {
            "max_body_bytes": limits.max_body_bytes,
            "max_reports_per_request": limits.max_reports_per_request,
            "max_report_chars": limits.max_report_chars,
        },
    }


def public_model_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """The model as non-admin keys see it: what the ledger covers (no evaluation counts)."""
    return {k: v for k, v in info.items() if k != "metrics"}


def metrics_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Headline and per-label scores of metrics.json's ``val`` / ``test`` sections, per threshold rule."""
    summary: dict[str, Any] = {}
    for split in ("val", "test"):
        for which, s in (metrics.get(split) or {}).items():
            if isinstance(s, dict):
                summary.setdefault(split, {})[which] = {k: s.get(k) for k in HEADLINE if k in s} | {
                    "per_label": [{k: d.get(k) for k in PER_LABEL} for d in s.get("per_label", [])]
                }
    return summary
