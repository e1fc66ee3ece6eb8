"""Subgroup metrics and gaps, built on fairlearn's MetricFrame."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dprad.data.reports import Report


def age_band(age: Any) -> str:
    if age is None or (isinstance(age, float) and np.isnan(age)):
        return "unknown"
    a = float(age)
    return "<40" if a < 40 else "40-59" if a < 60 else "60-79" if a < 80 else "80+"


def group_values(reports: Sequence[Report], attribute: str) -> np.ndarray:
    """One group name per report; ``age`` becomes an age band; missing values are 'unknown'."""
    if attribute in {"age", "age_band"}:
        return np.array([age_band(r.attrs.get("age")) for r in reports])
    return np.array([str(r.attrs.get(attribute, "unknown") or "unknown") for r in reports])


def subgroup_gaps(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: np.ndarray,
    *,
    labels: Sequence[str],
    mask: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Per label: statistical parity difference and equal-opportunity (TPR) difference across groups
    ('unknown' excluded), with the per-group selection rate and TPR behind them."""
    from fairlearn.metrics import MetricFrame, selection_rate, true_positive_rate

    known = groups != "unknown"
    out = []
    for j, name in enumerate(labels):
        keep = known & (np.ones(len(groups), bool) if mask is None else mask[:, j] > 0)
        if len(np.unique(groups[keep])) < 2:
            continue
        frame = MetricFrame(
            metrics={"selection_rate": selection_rate, "tpr": true_positive_rate},
            y_true=y_true[keep, j].astype(int),
            y_pred=y_pred[keep, j].astype(int),
            sensitive_features=groups[keep],
        )
        by = frame.by_group
        diff = frame.difference(method="between_groups")
        out.append(
            {
                "label": name,
                "statistical_parity_difference": float(diff["selection_rate"]),
                "equal_opportunity_difference": float(diff["tpr"]),
                "selection_rate": {str(k): float(v) for k, v in by["selection_rate"].items()},
                "tpr": {str(k): float(v) for k, v in by["tpr"].items()},
            }
        )
    return out
