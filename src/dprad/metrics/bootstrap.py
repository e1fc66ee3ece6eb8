"""Patient-level bootstrap, vectorised: resample patients (not reports) B times, as a (B, N) weight matrix.

Every metric is computed from weighted counts, so one matrix product gives all B resamples at once:
TP = W @ (y_true * y_pred) -> (B, L). AUROC and AUPRC are computed from score-sorted, tie-grouped
cumulative weights, also for all resamples together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def patient_weights(
    patient_ids: Sequence[str], n_boot: int, *, random_state: int | np.random.Generator = 0
) -> np.ndarray:
    """(B, N) float32: how many times each report's patient was drawn in each resample."""
    rng = np.random.default_rng(random_state)
    _, group = np.unique(np.asarray(patient_ids), return_inverse=True)
    n_patients = int(group.max()) + 1 if len(group) else 0
    draws = rng.integers(0, n_patients, size=(n_boot, n_patients))  # (B, P)
    flat = (np.arange(n_boot)[:, None] * n_patients + draws).ravel()  # one bincount for all rows
    counts = np.bincount(flat, minlength=n_boot * n_patients).reshape(n_boot, n_patients).astype(np.float32)
    return counts[:, group]  # (B, N)


def weighted_label_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    y_pred: np.ndarray,
    weights: np.ndarray,
    mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """All per-label metrics for each weight row: dict of (B, L) arrays (NaN where undefined)."""
    y = y_true.astype(np.float32)
    p = y_pred.astype(np.float32)
    m = np.ones_like(y) if mask is None else mask.astype(np.float32)
    tp = weights @ (y * p * m)  # (B, L)
    fp = weights @ ((1 - y) * p * m)
    fn = weights @ (y * (1 - p) * m)
    tn = weights @ ((1 - y) * (1 - p) * m)
    out = metrics_from_counts(tp, fp, fn, tn)
    auroc = np.full(tp.shape, np.nan)
    auprc = np.full(tp.shape, np.nan)
    for j in range(y.shape[1]):
        keep = m[:, j] > 0
        auroc[:, j], auprc[:, j] = _ranking_metrics(y[keep, j], y_score[keep, j], weights[:, keep])
    out["auroc"], out["auprc"] = auroc, auprc
    return out


def metrics_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-label precision, recall, specificity, F1 (0 where undefined) and support from confusion counts:
    each input and output (..., L). The one definition every evaluation (scores or counts) uses."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "recall": np.where(tp + fn > 0, tp / (tp + fn), 0.0),
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), 0.0),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
            "support": tp + fn,
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }


def _ranking_metrics(
    y: np.ndarray, s: np.ndarray, w: np.ndarray, *, chunk: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC and average precision for every weight row, ties handled as scikit-learn does.

    Rows are processed in chunks so that the (chunk, N) temporaries stay in cache.
    """
    b = w.shape[0]
    if len(y) == 0:
        return np.full(b, np.nan), np.full(b, np.nan)
    order = np.argsort(-s, kind="mergesort")  # descending score
    s_sorted, y_sorted = s[order], y[order].astype(np.float32)
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]  # first index of each tie group
    ties = len(starts) < len(s_sorted)
    auroc, auprc = np.empty(b), np.empty(b)
    for lo in range(0, b, chunk):
        w_sorted = w[lo : lo + chunk, order].astype(np.float32, copy=False)  # (C, N)
        wpos = w_sorted * y_sorted  # (C, N) positive weight at each position
        wneg = w_sorted - wpos
        if ties:  # (C, G): weights summed over each group of equal scores
            wpos, wneg = np.add.reduceat(wpos, starts, axis=1), np.add.reduceat(wneg, starts, axis=1)
        ptot, ntot = wpos.sum(1), wneg.sum(1)  # (C,)
        fp_cum = np.cumsum(wneg, axis=1)
        tp_cum = np.cumsum(wpos, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            # AUROC: each positive beats the negatives in lower groups (later in descending order), ties half
            auroc[lo : lo + chunk] = (wpos * (ntot[:, None] - fp_cum + 0.5 * wneg)).sum(1) / (ptot * ntot)
            precision = tp_cum / np.maximum(tp_cum + fp_cum, 1e-30)
            auprc[lo : lo + chunk] = (wpos * precision).sum(1) / ptot
            auroc[lo : lo + chunk][(ptot == 0) | (ntot == 0)] = np.nan
            auprc[lo : lo + chunk][ptot == 0] = np.nan
    return auroc, auprc


def headline(per_label: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weighted / macro / micro F1 and macro AUROC from per-label arrays: each (B,)."""
    support = per_label["support"]
    f1 = per_label["f1"]
    tp, fp, fn = per_label["tp"].sum(1), per_label["fp"].sum(1), per_label["fn"].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        weighted = np.where(support.sum(1) > 0, (f1 * support).sum(1) / support.sum(1), 0.0)
        micro = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return {
        "weighted_f1": weighted,
        "macro_f1": f1.mean(1),
        "micro_f1": micro,
        "macro_auroc": _nanmean_rows(per_label["auroc"]),
    }


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over the defined (non-NaN) entries; NaN where a row has none."""
    ok = ~np.isnan(x)
    count = ok.sum(1)
    return np.where(count > 0, np.where(ok, x, 0.0).sum(1) / np.maximum(count, 1), np.nan)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "ci_low": self.low, "ci_high": self.high}


def interval(point: float, samples: np.ndarray, *, level: float = 0.95) -> Interval:
    """Percentile interval of the bootstrap samples around the point estimate (NaN samples ignored)."""
    ok = samples[~np.isnan(samples)]
    if len(ok) == 0 or np.isnan(point):
        return Interval(float(point), float("nan"), float("nan"))
    a = (1 - level) / 2
    return Interval(float(point), float(np.quantile(ok, a)), float(np.quantile(ok, 1 - a)))


def paired_difference(
    point_a: float, point_b: float, samples_a: np.ndarray, samples_b: np.ndarray, *, level: float = 0.95
) -> dict[str, Any]:
    """B - A with a bootstrap CI and a two-sided p-value for 'no difference' (same resamples for both)."""
    diff = samples_b - samples_a
    ok = diff[~np.isnan(diff)]
    ci = interval(point_b - point_a, ok, level=level)
    p = float(min(1.0, 2 * min((ok <= 0).mean(), (ok >= 0).mean()))) if len(ok) else float("nan")
    return {
        "a": point_a,
        "b": point_b,
        "difference": ci.estimate,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "p_value": p,
    }
