"""Classification metrics as pure functions: ``f(y_true, y_score, *, ...)``, numpy in, plain values out.

Built on scikit-learn. A label with no positives in the evaluated set is reported as such (AUROC/AUPRC
``None``, F1 0 with support 0), never silently dropped from an average: macro averages state how many
labels they cover.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score


def _masked(y: np.ndarray, s: np.ndarray, m: np.ndarray | None, j: int) -> tuple[np.ndarray, np.ndarray]:
    keep = np.ones(len(y), dtype=bool) if m is None else m[:, j] > 0
    return y[keep, j], s[keep, j]


def binarize(y_score: np.ndarray, thresholds: float | np.ndarray = 0.5) -> np.ndarray:
    return (y_score >= np.asarray(thresholds)).astype(int)


def per_label(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    thresholds: float | np.ndarray = 0.5,
    labels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Precision, recall (sensitivity), specificity, F1, AUROC, AUPRC, support and prevalence per label."""
    y_true = np.asarray(y_true).astype(int)
    y_pred = binarize(y_score, thresholds)
    out = []
    for j in range(y_true.shape[1]):
        yt, ys = _masked(y_true, y_score, mask, j)
        yp = _masked(y_true, y_pred, mask, j)[1]
        tp = int(((yp == 1) & (yt == 1)).sum())
        fp = int(((yp == 1) & (yt == 0)).sum())
        fn = int(((yp == 0) & (yt == 1)).sum())
        tn = int(((yp == 0) & (yt == 0)).sum())
        both = 0 < yt.sum() < len(yt)
        out.append(
            {
                "label": labels[j] if labels else str(j),
                "support": int(yt.sum()),
                "n": len(yt),
                "prevalence": float(yt.mean()) if len(yt) else 0.0,
                "precision": tp / (tp + fp) if tp + fp else 0.0,
                "recall": tp / (tp + fn) if tp + fn else 0.0,
                "specificity": tn / (tn + fp) if tn + fp else 0.0,
                "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                "auroc": float(roc_auc_score(yt, ys)) if both else None,
                "auprc": float(average_precision_score(yt, ys)) if both else None,
            }
        )
    return out


def f1_scores(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    thresholds: float | np.ndarray = 0.5,
) -> dict[str, float]:
    """Weighted / macro / micro / samples F1 (masked entries count as negatives that are not scored)."""
    y_true = np.asarray(y_true).astype(int)
    y_pred = binarize(y_score, thresholds)
    w = None if mask is None else mask
    if w is not None:  # ignored entries: make them agree so they add neither TP, FP nor FN
        y_pred = np.where(w > 0, y_pred, 0)
        y_true = np.where(w > 0, y_true, 0)
    return {
        avg: float(f1_score(y_true, y_pred, average=avg, zero_division=0))
        for avg in ("weighted", "macro", "micro", "samples")
    }


def macro_auroc(
    y_true: np.ndarray, y_score: np.ndarray, *, mask: np.ndarray | None = None
) -> tuple[float, int]:
    """Mean AUROC over the labels that have both classes, and how many labels that is."""
    vals = [r["auroc"] for r in per_label(y_true, y_score, mask=mask) if r["auroc"] is not None]
    return (float(np.mean(vals)) if vals else float("nan")), len(vals)


def fit_thresholds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    target_recall: dict[int, float] | None = None,
) -> np.ndarray:
    """Per-label thresholds maximising F1 (or reaching a target recall for the labels given); 0.5 if no positives."""
    from sklearn.metrics import precision_recall_curve

    y_true = np.asarray(y_true).astype(int)
    th = np.full(y_true.shape[1], 0.5)
    for j in range(y_true.shape[1]):
        yt, ys = _masked(y_true, y_score, mask, j)
        if yt.sum() == 0:
            continue
        prec, rec, cut = precision_recall_curve(yt, ys)
        if target_recall and j in target_recall:
            ok = np.flatnonzero(rec[:-1] >= target_recall[j])
            th[j] = float(cut[ok[-1]]) if len(ok) else float(cut[0])
            continue
        f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12)
        th[j] = float(cut[int(np.argmax(f1))])
    return th


def summary(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    thresholds: float | np.ndarray = 0.5,
) -> dict[str, Any]:
    auroc, covered = macro_auroc(y_true, y_score, mask=mask)
    return {
        **{f"{k}_f1": v for k, v in f1_scores(y_true, y_score, mask=mask, thresholds=thresholds).items()},
        "macro_auroc": auroc,
        "macro_auroc_labels": covered,
        "per_label": per_label(y_true, y_score, mask=mask, thresholds=thresholds, labels=labels),
    }


__all__ = [
    "binarize",
    "f1_scores",
    "fit_thresholds",
    "macro_auroc",
    "per_label",
    "summary",
]
