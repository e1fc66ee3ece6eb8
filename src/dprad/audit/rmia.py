"""RMIA, the relative membership inference attack of Zarifzadeh et al. (2024), "Low-cost high-power
membership inference attacks", for multi-label classifiers.

For a target example x and a population example z (a report no model under attack was trained on),
LR(x, z) = [Pr(x | theta) / Pr(x)] / [Pr(z | theta) / Pr(z)], where Pr(. | theta) is the target model's
probability of the true labels and Pr(.) its average over reference models. The score of x is the fraction
of population examples z with LR(x, z) >= gamma.

Multi-label: Pr(x | theta) is the product over observed labels of the probability of the true label
(= exp(-loss)), and Pr(x) is that product's per-label average over reference models. Online, the average
runs over all reference models (each example is IN about half of them). Offline (OUT models only), the
paper's linear approximation is applied per label: Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2, with ``a``
fitted on the reference models themselves (:func:`fit_offline_a`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_expit

from dprad.errors import DpradError

DEFAULT_GAMMA = 2.0


def _log_p_true(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log probability of the true label, (..., N, L)."""
    sign = np.where(targets > 0.5, 1.0, -1.0)
    return np.asarray(log_expit(sign * logits), dtype=np.float64)


def fit_offline_a(ref_logits: np.ndarray, keep: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Least-squares a in Pr_IN = a Pr_OUT + (1 - a), per label over examples that are both IN and OUT of
    some reference models; uses the reference models only (nothing of the target). Clipped to [0, 1]."""
    p = np.exp(_log_p_true(ref_logits, targets))  # (K, N, L)
    w = keep[:, :, None].astype(float)
    both = np.logical_and(keep.any(axis=0), (~keep).any(axis=0))  # (N,)
    ok = both[:, None] & (mask > 0)  # (N, L)
    if not ok.any():
        raise DpradError("RMIA offline: no example is both IN and OUT of reference models")
    p_in = (w * p).sum(0) / np.maximum(w.sum(0), 1)  # (N, L)
    p_out = ((1 - w) * p).sum(0) / np.maximum((1 - w).sum(0), 1)
    x, y = p_out[ok] - 1, p_in[ok] - 1
    a = float((x * y).sum() / max(float((x * x).sum()), 1e-12))
    return float(np.clip(a, 0.0, 1.0))


def _log_marginal(
    ref_logits: np.ndarray, keep: np.ndarray, targets: np.ndarray, *, offline: bool, a: float
) -> np.ndarray:
    """log Pr(x) per (example, label) from reference models: (K, N, L) -> (N, L)."""
    p = np.exp(_log_p_true(ref_logits, targets))  # (K, N, L)
    if not offline:
        return np.log(p.mean(0))
    w = (~keep)[:, :, None].astype(float)
    if (w.sum(0) == 0).any():
        raise DpradError("offline RMIA needs every example to be OUT of at least one reference model")
    p_out = (w * p).sum(0) / w.sum(0)  # (N, L)
    return np.log(((1 + a) * p_out + (1 - a)) / 2)


def rmia_scores(
    target_logits: np.ndarray,
    ref_logits: np.ndarray,
    keep: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    *,
    population_logits: np.ndarray,
    population_ref_logits: np.ndarray,
    population_keep: np.ndarray,
    population_targets: np.ndarray,
    population_mask: np.ndarray,
    gamma: float = DEFAULT_GAMMA,
    offline: bool = False,
    a: float | None = None,
) -> np.ndarray:
    """Scores (N,) in [0, 1]: the fraction of the Z population examples that x dominates by gamma.

    target_logits (N, L), ref_logits (K, N, L), keep (K, N); population_* the same for Z examples.
    """
    if gamma <= 0:
        raise DpradError(f"RMIA gamma {gamma} must be > 0")
    if len(population_logits) == 0:
        raise DpradError("RMIA needs population reports (the run's validation split is empty)")
    if offline and a is None:
        a = fit_offline_a(ref_logits, keep, targets, mask)
    a_ = 1.0 if a is None else a

    def log_ratio(tl: np.ndarray, rl: np.ndarray, kp: np.ndarray, y: np.ndarray, m: np.ndarray) -> np.ndarray:
        lr = _log_p_true(tl, y) - _log_marginal(rl, kp, y, offline=offline, a=a_)  # (N, L)
        return np.where(m > 0, lr, 0.0).sum(1)  # (N,)

    rx = log_ratio(target_logits, ref_logits, keep, targets, mask)
    rz = np.sort(
        log_ratio(
            population_logits, population_ref_logits, population_keep, population_targets, population_mask
        )
    )
    # LR(x, z) >= gamma  <=>  rz <= rx - log(gamma)
    count = np.searchsorted(rz, rx - np.log(gamma), side="right")
    return count / len(rz)


__all__ = ["DEFAULT_GAMMA", "fit_offline_a", "rmia_scores"]
