"""Metrics from confusion counts alone: what a site can send without its reports.

A federated evaluation sees no scores, only each hospital's per-label counts (TP, FP, FN, TN) at the
shipped thresholds, and the same counts under B patient-level bootstrap resamples drawn at the hospital.
Summing resamples across hospitals is a bootstrap stratified by hospital, so the overall intervals are
as valid as one pooled evaluation's. Every function here is pure; shapes: counts (..., L, 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dprad.metrics.bootstrap import headline, interval, metrics_from_counts, patient_weights
from dprad.metrics.scores import binarize


def confusion_counts(
    y: np.ndarray,
    probs: np.ndarray,
    mask: np.ndarray | None,
    thresholds: np.ndarray,
    *,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Per-label TP, FP, FN, TN at ``thresholds``: (L, 4); with ``weights`` (B, N), one row per resample:
    (B, L, 4). y, probs, mask: (N, L); masked entries are not counted."""
    y = (np.asarray(y) > 0).astype(np.float32)
    pred = binarize(np.asarray(probs), thresholds).astype(np.float32)
    m = np.ones_like(y) if mask is None else (np.asarray(mask) > 0).astype(np.float32)
    cells = np.stack([y * pred, (1 - y) * pred, y * (1 - pred), (1 - y) * (1 - pred)], axis=-1)  # (N, L, 4)
    cells *= m[..., None]
    if weights is None:
        return cells.sum(0)  # (L, 4)
    return np.einsum("bn,nlc->blc", weights.astype(np.float32), cells)  # (B, L, 4)


def bootstrap_counts(
    y: np.ndarray,
    probs: np.ndarray,
    mask: np.ndarray | None,
    thresholds: np.ndarray,
    patient_ids: Sequence[str],
    *,
    n_boot: int = 200,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(counts (L, 4), resampled counts (B, L, 4)) with patients, not reports, resampled."""
    w = patient_weights(patient_ids, n_boot, random_state=random_state)  # (B, N)
    return confusion_counts(y, probs, mask, thresholds), confusion_counts(
        y, probs, mask, thresholds, weights=w
    )


def count_metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """counts (..., L, 4) -> per-label precision, recall, specificity, f1, support (..., L) and the weighted,
    macro and micro F1 (...,), by the same definitions as an evaluation from scores
    (:func:`~dprad.metrics.bootstrap.metrics_from_counts` and :func:`~dprad.metrics.bootstrap.headline`)."""
    lead, n_labels = counts.shape[:-2], counts.shape[-2]
    flat = counts.reshape(-1, n_labels, 4).astype(np.float64)  # (B, L, 4)
    per = metrics_from_counts(*(flat[..., k] for k in range(4)))  # (B, L) each
    head = headline({**per, "auroc": np.full(per["f1"].shape, np.nan)})  # (B,) each
    out = {
        k: per[k].reshape(*lead, n_labels) for k in ("precision", "recall", "specificity", "f1", "support")
    }
    out.update({k: head[k].reshape(lead) for k in ("weighted_f1", "macro_f1", "micro_f1")})
    return out


def count_evaluation(
    counts: np.ndarray, resamples: np.ndarray, *, labels: Sequence[str], level: float = 0.95
) -> dict[str, Any]:
    """Headline and per-label metrics with percentile intervals from counts (L, 4) and resamples (B, L, 4)."""
    point, boot = count_metrics(counts), count_metrics(resamples)
    head = {
        k: interval(float(point[k]), boot[k], level=level).to_dict()
        for k in ("weighted_f1", "macro_f1", "micro_f1")
    }
    per_label = []
    for j, name in enumerate(labels):
        row: dict[str, Any] = {"label": name, "support": int(point["support"][j]), "n": int(counts[j].sum())}
        for k in ("precision", "recall", "specificity", "f1"):
            row[k] = interval(float(point[k][j]), boot[k][:, j], level=level).to_dict()
        per_label.append(row)
    return {"reports": int(counts[0].sum()) if len(counts) else 0, "headline": head, "per_label": per_label}


__all__ = ["bootstrap_counts", "confusion_counts", "count_evaluation", "count_metrics"]
