"""What ``GET /v1/model`` answers: the run's schema, shipped thresholds, privacy ledger and metrics.

Admin keys see the run as it is (its ledger as written, metrics computed without DP on its own splits).
The other roles see what a shareable file may say (:mod:`dprad.report.public`): the ledger with local
paths named and no size of the validation or test split, what is released outside the guarantee (the
number of training units n), and no metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dprad.privacy.ledger import noise_warning
from dprad.report.public import public_ledger, released_outside
from dprad.run import RunRecord
from dprad.serve.api import ServeLimits

HEADLINE = ("weighted_f1", "macro_f1", "micro_f1", "macro_auroc")
PER_LABEL = ("label", "support", "precision", "recall", "f1", "auroc")


def model_info(record: RunRecord, *, mode: str, limits: ServeLimits, public: bool = False) -> dict[str, Any]:
    """The admin view of the model, or with ``public`` what the other roles see. The admin view's
    ``metrics`` were computed without DP on the run's own validation and test splits."""
    schema, thresholds = record.schema, record.thresholds
    privacy = (public_ledger(record) if public else record.ledger).to_dict()
    about: dict[str, Any] = {}
    if record.ledger.private:
        about["released_outside_guarantee"] = released_outside(record)
    if warning := noise_warning(record.ledger):
        about["noise_warning"] = warning
    info = {
        "run": record.name,
        "mode": mode,
        "schema": {k: v for k, v in schema.to_dict().items() if k != "terms"},
        "thresholds": {
            "rule": thresholds.describe(),
            "values": dict(zip(schema.labels, [float(t) for t in thresholds.array], strict=True)),
        },
        "privacy": {
            "statement": privacy.get("statement"),
            **about,
            "numbers": {k: v for k, v in privacy.items() if k != "statement"},
        },
        "metrics": metrics_summary(record.metrics),
        "limits": {
            "max_body_bytes": limits.max_body_bytes,
            "max_reports_per_request": limits.max_reports_per_request,
            "max_report_chars": limits.max_report_chars,
        },
    }
    if public:  # evaluation counts and scores on the private splits, computed without DP: admin only
        del info["metrics"]
    return info


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
