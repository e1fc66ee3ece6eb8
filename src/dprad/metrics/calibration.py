"""Calibration: expected calibration error with equal-mass bins, Brier score, reliability data, temperature."""

from __future__ import annotations

from typing import Any

import numpy as np


def reliability(y_true: np.ndarray, y_prob: np.ndarray, *, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-mass bins over the predicted probability: mean prediction, observed rate and count per bin."""
    y_true, y_prob = np.asarray(y_true, dtype=float).ravel(), np.asarray(y_prob, dtype=float).ravel()
    if len(y_prob) == 0:
        return []
    order = np.argsort(y_prob, kind="mergesort")
    bins = [b for b in np.array_split(order, min(n_bins, len(order))) if len(b)]
    return [
        {
            "mean_predicted": float(y_prob[b].mean()),
            "observed_rate": float(y_true[b].mean()),
            "count": len(b),
            "low": float(y_prob[b].min()),
            "high": float(y_prob[b].max()),
        }
        for b in bins
    ]


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, *, n_bins: int = 10) -> float:
    """Sum over equal-mass bins of (bin share) x |observed rate - mean prediction|."""
    rows = reliability(y_true, y_prob, n_bins=n_bins)
    n = sum(r["count"] for r in rows)
    return (
        float(sum(r["count"] / n * abs(r["observed_rate"] - r["mean_predicted"]) for r in rows))
        if n
        else float("nan")
    )


def brier(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    y_true, y_prob = np.asarray(y_true, dtype=float), np.asarray(y_prob, dtype=float)
    return float(np.mean((y_prob - y_true) ** 2)) if y_true.size else float("nan")


def calibration_report(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    n_bins: int = 10,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """Per-label and pooled ECE / Brier with reliability data; the bin count is recorded."""
    m = np.ones_like(y_true, dtype=bool) if mask is None else mask > 0
    per = []
    for j in range(y_true.shape[1]):
        yt, yp = y_true[m[:, j], j], y_prob[m[:, j], j]
        per.append(
            {
                "label": labels[j] if labels else str(j),
                "ece": expected_calibration_error(yt, yp, n_bins=n_bins),
                "brier": brier(yt, yp),
                "reliability": reliability(yt, yp, n_bins=n_bins),
            }
        )
    yt, yp = y_true[m], y_prob[m]
    return {
        "bins": n_bins,
        "binning": "equal-mass",
        "pooled_ece": expected_calibration_error(yt, yp, n_bins=n_bins),
        "pooled_brier": brier(yt, yp),
        "pooled_reliability": reliability(yt, yp, n_bins=n_bins),
        "per_label": per,
    }


def fit_temperature(y_true: np.ndarray, y_prob: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """One temperature T > 0 minimising the masked binary NLL of sigmoid(logit / T) (fit on validation)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import expit, logit

    m = np.ones_like(y_true, dtype=bool) if mask is None else mask > 0
    z = logit(np.clip(y_prob[m], 1e-7, 1 - 1e-7))
    y = y_true[m].astype(float)

    def nll(log_t: float) -> float:
        p = np.clip(expit(z / np.exp(log_t)), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(res.x))


def apply_temperature(y_prob: np.ndarray, temperature: float) -> np.ndarray:
    from scipy.special import expit, logit

    return expit(logit(np.clip(y_prob, 1e-7, 1 - 1e-7)) / temperature)
