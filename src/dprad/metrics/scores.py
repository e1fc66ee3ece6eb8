"""Classification metrics as pure functions: ``f(y_true, y_score, *, ...)``, numpy in, plain values out.

One engine computes them all: :func:`dprad.bootstrap.weighted_label_metrics` (weighted counts, so the
bootstrap is the same computation with resampling weights); a point estimate here is its unweighted case,
so training-time metrics, ``dprad evaluate``'s point estimates and the teacher agreement cannot drift apart.
A label with no positives in the evaluated set is reported as such (AUROC/AUPRC ``None``, F1 0 with
support 0), never silently dropped from an average: macro averages state how many labels they cover.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dprad.metrics.bootstrap import headline, weighted_label_metrics


def _masked(y: np.ndarray, s: np.ndarray, m: np.ndarray | None, j: int) -> tuple[np.ndarray, np.ndarray]:
    keep = np.ones(len(y), dtype=bool) if m is None else m[:, j] > 0
    return y[keep, j], s[keep, j]


def binarize(y_score: np.ndarray, thresholds: float | np.ndarray = 0.5) -> np.ndarray:
    return (y_score >= np.asarray(thresholds)).astype(int)


def point_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    thresholds: float | np.ndarray = 0.5,
) -> dict[str, np.ndarray]:
    """The engine's per-label arrays with unit weights: each (1, L)."""
    y_true = np.asarray(y_true).astype(int)
    ones = np.ones((1, len(y_true)), dtype=np.float32)
    return weighted_label_metrics(y_true, np.asarray(y_score), binarize(y_score, thresholds), ones, mask)


def per_label(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    thresholds: float | np.ndarray = 0.5,
    labels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Precision, recall (sensitivity), specificity, F1, AUROC, AUPRC, support and prevalence per label."""
    pm = point_metrics(y_true, y_score, mask=mask, thresholds=thresholds)
    y_true = np.asarray(y_true)
    n = (np.ones_like(y_true) if mask is None else (mask > 0)).sum(0)
    out = []
    for j in range(y_true.shape[1]):
        support = int(pm["support"][0, j])
        auroc, auprc = float(pm["auroc"][0, j]), float(pm["auprc"][0, j])
        out.append(
            {
                "label": labels[j] if labels else str(j),
                "support": support,
                "n": int(n[j]),
                "prevalence": support / int(n[j]) if n[j] else 0.0,
                **{k: float(pm[k][0, j]) for k in ("precision", "recall", "specificity", "f1")},
                "auroc": None if np.isnan(auroc) else auroc,
                "auprc": None if np.isnan(auprc) or np.isnan(auroc) else auprc,
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
    """Weighted / macro / micro F1 (masked entries are not scored)."""
    h = headline(point_metrics(y_true, y_score, mask=mask, thresholds=thresholds))
    return {avg: float(h[f"{avg}_f1"][0]) for avg in ("weighted", "macro", "micro")}


def report_log_loss(y_true: np.ndarray, y_prob: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Mean over reports of the binary cross-entropy summed over a report's scored labels (the training
    loss's own scale, ``features.loss_per_example``): (N, L) labels and probabilities -> one number."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(y_prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    m = np.ones_like(y) if mask is None else np.asarray(mask, dtype=np.float64)
    bce = -(y * np.log(p) + (1 - y) * np.log1p(-p))  # (N, L)
    return float((bce * m).sum(-1).mean()) if len(y) else float("nan")


def macro_auroc(
    y_true: np.ndarray, y_score: np.ndarray, *, mask: np.ndarray | None = None
) -> tuple[float, int]:
    """Mean AUROC over the labels that have both classes, and how many labels that is."""
    auroc = point_metrics(y_true, y_score, mask=mask)["auroc"][0]
    ok = ~np.isnan(auroc)
    return (float(auroc[ok].mean()) if ok.any() else float("nan")), int(ok.sum())


def fit_thresholds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    target_recall: dict[int, float] | None = None,
) -> np.ndarray:
    """Per-label thresholds maximising F1 (or reaching a target recall for the labels given); 0.5 if no positives."""
    from sklearn.metrics import precision_recall_curve  # threshold search, not a metric

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
    "report_log_loss",
    "summary",
]
