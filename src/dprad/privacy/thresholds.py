"""Per-label decision thresholds chosen on the validation split under differential privacy, and the
composition of their privacy cost with training's for the ledger.

Thresholds fitted on private validation reports are a release like the weights. The mechanism here
releases, once, two noisy histograms per label of the model's scores on the validation split over a fixed
public grid g_1 < ... < g_G: positives and negatives per bin [g_b, g_b+1) (bin 0 below g_1, bin G from g_G
up). Adding or removing one report moves, for each label it is scored on, exactly one count by 1, so the
whole release (2 L (G+1) counts) has L2 sensitivity sqrt(L), independent of the grid size; one Gaussian
mechanism of std ``noise_multiplier * sqrt(L)`` per count covers it. (Releasing TP / FP at every grid
point directly would cost sensitivity sqrt(L G).) Everything after is post-processing of the noisy
histograms: TP and FP at grid point k are the noisy counts of bins >= k, P the noisy number of positives,
F1_k = 2 TP_k / (TP_k + FP_k + P). A label leaves the default (``FALLBACK``, 0.3, fixed in advance) only
when its noisy positive count clears the noise; it then takes its max-F1 grid point (the first on ties)
among the points that beat the default with bootstrap confidence, a critical label the highest grid point
whose noisy recall TP_k / P reaches its target with that confidence (``select_thresholds``). Without noise:
max F1, and for a critical label the highest point reaching its target (the lowest grid point if none).

Accounting: Gaussian mechanisms compose into one Gaussian (1 / sigma^2 adds up), whose epsilon at delta
is exact (``GaussianPrivacyLoss`` of dp-accounting); any other event (DP-SGD's Poisson-sampled steps) is
composed with it by dp-accounting's PLD accountant (``compose_epsilon``). Training and thresholds use
different splits, but the split itself depends on every report's labels (stratification), so dprad
composes them sequentially (their epsilons add up in the worst case) rather than in parallel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dprad.errors import DpradError, ParameterError
from dprad.privacy.accounting import gaussian_epsilon, gaussian_noise_multiplier
from dprad.privacy.noise import NoiseStream

# 0.1, 0.2, ..., 0.9: a coarse grid keeps the noisy tail sums short (see bench/head_trainers.py)
DEFAULT_GRID: tuple[float, ...] = tuple(float(g) for g in np.round(np.arange(0.1, 0.91, 0.1), 2))
THRESHOLD_SHARE = 0.1  # default share of a run's epsilon spent on thresholds
# The default, fixed in advance: kept by a label whose released counts do not clear the noise (most labels of
# a private run: a validation split of a few hundred reports rarely clears it). Chosen across both real
# corpora's validation splits, split seeds 0-2, private heads at eps 1 and 10 (never a test split): weighted
# F1 at a fixed threshold, mean of the four corpus x eps cells (python bench/threshold_default.py): 0.2:
# 0.8691, 0.25: 0.8697, 0.3: 0.8704, 0.35: 0.8693, 0.4: 0.8691, 0.45: 0.8681, 0.5: 0.8660; 0.3 is at least
# 0.5 in every cell (IU eps 1 / 10 +0.004 / +0.006, CT-RATE +0.000 / +0.008). It is what theory expects:
# for calibrated scores the F1-optimal cut is half the best F1 reachable (Lipton, Elkan, Narayanaswamy
# 2014), below 0.5 whenever a label is not perfectly separable.
FALLBACK = 0.3


@dataclass(frozen=True)
class DpThresholds:
    values: np.ndarray  # (L,) one threshold per label, each a grid point (or FALLBACK)
    event: Any  # dp_accounting.DpEvent (NonPrivateDpEvent when epsilon is inf)
    epsilon: float  # the event's epsilon at delta (inf when not private)
    delta: float
    rule: str
    noise_multiplier: float  # std / sensitivity of each count (0 when not private)


# --------------------------------------------------------------------------------------------------------
# the mechanism


def _check_grid(grid: Sequence[float]) -> np.ndarray:
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or len(g) == 0 or not np.all(np.diff(g) > 0) or g[0] <= 0 or g[-1] >= 1:
        raise ParameterError(
            parameter="threshold_grid",
            value=g.tolist(),
            problem="must be increasing numbers strictly between 0 and 1",
        )
    return g


def score_histograms(
    y: np.ndarray, probs: np.ndarray, mask: np.ndarray | None, grid: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positives and negatives per label and grid bin: two (L, G+1) arrays (exact, private)."""
    g = _check_grid(grid)
    y = np.asarray(y)
    m = np.ones_like(y, dtype=bool) if mask is None else np.asarray(mask) > 0
    bins = np.searchsorted(g, np.asarray(probs, dtype=np.float64), side="right")  # (N, L) in 0..G
    n_labels, n_bins = y.shape[1], len(g) + 1
    pos = np.zeros((n_labels, n_bins))
    neg = np.zeros((n_labels, n_bins))
    for j in range(n_labels):
        keep = m[:, j]
        pos[j] = np.bincount(bins[keep & (y[:, j] > 0), j], minlength=n_bins)
        neg[j] = np.bincount(bins[keep & (y[:, j] <= 0), j], minlength=n_bins)
    return pos, neg


def _f1(tp: np.ndarray, fp: np.ndarray, p: np.ndarray) -> np.ndarray:
    return 2 * tp / np.maximum(tp + fp + p[..., None], 1e-12)


def select_thresholds(
    pos: np.ndarray,
    neg: np.ndarray,
    grid: Sequence[float],
    *,
    default: float = FALLBACK,
    critical: Mapping[int, float] | None = None,
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
    confidence: float = 0.95,
    replicates: int = 200,
) -> np.ndarray:
    """Post-processing of (noisy) histograms (L, G+1) -> per-label thresholds (L,).

    Exact counts (``noise_std`` 0): max F1 per label (``default`` for a label without positives). Noisy
    counts: a label moves away from the grid point nearest ``default`` only to a point whose F1 beats it in
    at least ``confidence`` of ``replicates`` parametric bootstrap draws (fresh noise of the same, public,
    std added to the released counts): with little data or budget the thresholds stay at the default rather
    than follow the noise. Uses only released values.
    """
    g = _check_grid(grid)
    if noise_std > 0:
        return _select_noisy(
            pos,
            neg,
            g,
            default=default,
            critical=critical,
            noise_std=noise_std,
            rng=rng,
            confidence=confidence,
            replicates=replicates,
        )
    tp, fp, p = _sums(pos, neg)  # (L, G), (L, G), (L,): exact counts, nothing to floor
    out = np.full(pos.shape[0], default)
    for j in range(pos.shape[0]):
        if p[j] < 1:
            continue
        if critical and j in critical:
            ok = np.flatnonzero(tp[j] / p[j] >= critical[j])
            out[j] = g[ok[-1]] if len(ok) else g[0]
            continue
        out[j] = g[int(np.argmax(_f1(tp[j], fp[j], p[j])))]
    return out


def _sums(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy histograms (..., G+1) -> TP, FP (..., G) and P (...,) as plain tail sums, each floored at 0 as
    a whole. Flooring each bin before summing (as dprad once did) biases the sums upwards, the more so the
    more bins a sum spans, and so pulled every noisy choice towards the lowest grid point."""
    tp = np.cumsum(pos[..., ::-1], axis=-1)[..., ::-1][..., 1:]
    fp = np.cumsum(neg[..., ::-1], axis=-1)[..., ::-1][..., 1:]
    return np.maximum(tp, 0.0), np.maximum(fp, 0.0), pos.sum(-1)


def _z(confidence: float, tests: int) -> float:
    """One-sided normal quantile for ``confidence`` shared (Bonferroni) over ``tests`` tests."""
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - confidence) / max(tests, 1)))


def _rate(hist: np.ndarray, noise_std: float) -> tuple[np.ndarray, np.ndarray]:
    """A noisy histogram (G+1,) -> the share of its mass at or above each grid point (G,) and its standard
    error from the released noise (delta method: U / (U + D), U and D the independent noisy sums above
    and below the point, each bin carrying noise of std ``noise_std``)."""
    n_bins = len(hist)
    k = np.arange(1, n_bins)  # grid point k splits bins [0, k) and [k, G]
    up = np.cumsum(hist[::-1])[::-1][1:]  # (G,) U_k
    down = np.cumsum(hist)[:-1]  # (G,) D_k
    total = max(float(hist.sum()), 1e-12)
    rate = np.clip(up / total, 0.0, 1.0)
    var = noise_std**2 * ((n_bins - k) * down**2 + k * up**2) / total**4
    return rate, np.sqrt(var)


def _separates(pos: np.ndarray, neg: np.ndarray, *, noise_std: float, confidence: float) -> np.ndarray:
    """(L, G): grid points where TPR - FPR > 0 clears the noise at ``confidence``, shared (Bonferroni) over
    every label and grid point of the release."""
    n_labels, n_bins = pos.shape
    z = _z(confidence, n_labels * (n_bins - 1))
    out = np.zeros((n_labels, n_bins - 1), dtype=bool)
    for j in range(n_labels):
        if pos[j].sum() <= 0 or neg[j].sum() <= 0:
            continue
        tpr, se_t = _rate(pos[j], noise_std)
        fpr, se_f = _rate(neg[j], noise_std)
        out[j] = tpr - fpr > z * np.sqrt(se_t**2 + se_f**2)
    return out


def _select_noisy(
    pos: np.ndarray,
    neg: np.ndarray,
    g: np.ndarray,
    *,
    default: float,
    critical: Mapping[int, float] | None,
    noise_std: float,
    rng: np.random.Generator | None,
    confidence: float,
    replicates: int,
) -> np.ndarray:
    """Noisy histograms -> thresholds that leave ``default`` only on evidence that clears the noise.

    A label keeps the default unless its noisy positive count clears its noise (P > z sd(P), z the one-sided
    ``confidence`` quantile). Candidate points must separate positives from negatives: TPR - FPR > 0 by
    more than its noise at ``confidence`` shared (Bonferroni) over all labels and grid points, so a model
    whose scores carry nothing keeps the default. A critical label takes the highest such point whose recall's
    lower confidence bound reaches its target (the default if none does), another label the max-F1 such
    point among those whose F1 beats the default's in at least ``confidence`` of parametric bootstrap draws (fresh noise of the
    released, public std added to the released counts). Only released values are used.
    """
    from scipy.stats import norm

    if rng is None:
        raise DpradError("noisy thresholds need a random generator for their bootstrap")
    n_labels, n_bins = pos.shape
    base = int(np.argmin(np.abs(g - default)))
    tp, fp, p = _sums(pos, neg)  # (L, G), (L, G), (L,)
    informative = p > norm.ppf(confidence) * noise_std * math.sqrt(n_bins)  # (L,)
    draws = rng.normal(0.0, noise_std, size=(replicates, n_labels, n_bins))  # (R, L, G+1)
    draws_neg = rng.normal(0.0, noise_std, size=(replicates, n_labels, n_bins))
    noisy = pos[None] + draws, neg[None] + draws_neg
    tp_rep, fp_rep, p_rep = _sums(*noisy)  # (R, L, G), (R, L, G), (R, L)
    f1_rep = _f1(tp_rep, fp_rep, np.maximum(p_rep, 0.0))  # (R, L, G)
    wins = (f1_rep > f1_rep[:, :, [base]]).mean(0)  # (L, G) share of draws where point k beats the default
    # a cut must separate positives from negatives (TPR > FPR) beyond the noise: without this, a model whose
    # scores carry nothing (constant) would "win" F1 by flagging every report below its constant score
    separates = _separates(pos, neg, noise_std=noise_std, confidence=confidence)  # (L, G)
    out = np.full(n_labels, default)
    for j in np.flatnonzero(informative).tolist():
        if critical and j in critical:
            tpr, se = _rate(pos[j], noise_std)  # (G,), (G,)
            reached = tpr - _z(confidence, len(g) * n_labels) * se >= critical[j]
            ok = np.flatnonzero(reached & separates[j])
            out[j] = g[ok[-1]] if len(ok) else default
            continue
        allowed = (wins[j] >= confidence) & separates[j]
        allowed[base] = True
        out[j] = g[int(np.argmax(np.where(allowed, _f1(tp[j], fp[j], p[j]), -np.inf)))]
    return out


def dp_thresholds(
    y: np.ndarray,
    probs: np.ndarray,
    mask: np.ndarray | None,
    *,
    epsilon: float,
    delta: float,
    noise: NoiseStream | None = None,
    grid: Sequence[float] = DEFAULT_GRID,
    default: float = FALLBACK,
    critical: Mapping[int, float] | None = None,
) -> DpThresholds:
    """Per-label thresholds from noisy validation histograms; ``epsilon`` inf: exact counts, not private.

    y (N, L) in {0, 1}, probs (N, L) scores, mask (N, L) or None; ``critical`` maps a label index to the
    sensitivity (recall) its threshold must reach. ``noise``: a stream of the run's
    ``privacy.noise.NoiseSource`` (required unless ``epsilon`` is inf).
    """
    import dp_accounting

    y, probs = np.asarray(y), np.asarray(probs)
    if y.shape != probs.shape or y.ndim != 2 or (mask is not None and np.shape(mask) != y.shape):
        raise DpradError(f"thresholds: labels {y.shape}, scores {probs.shape} and mask do not fit together")
    for j, target in (critical or {}).items():
        if not 0 <= j < y.shape[1] or not 0 < target <= 1:
            raise DpradError(f"critical label {j}: target sensitivity {target} must be in (0, 1]")
    pos, neg = score_histograms(y, probs, mask, grid)
    n_labels = y.shape[1]
    what = f"max F1 over a {len(grid)}-point grid" + (
        f", critical labels at their target sensitivity ({len(critical)})" if critical else ""
    )
    if math.isinf(epsilon) and epsilon > 0:
        values = select_thresholds(pos, neg, grid, default=default, critical=critical)
        return DpThresholds(
            values,
            dp_accounting.NonPrivateDpEvent(),
            math.inf,
            delta,
            f"validation, NOT private: {what}",
            0.0,
        )
    if noise is None:
        raise ValueError("DP thresholds draw their noise from a NoiseStream (privacy.noise)")
    sigma = gaussian_noise_multiplier(epsilon=epsilon, delta=delta)
    std = sigma * math.sqrt(n_labels)  # L2 sensitivity of the whole release: sqrt(L)
    noisy_pos = pos + noise.gaussian(pos.shape, std=std)  # (L, G+1)
    noisy_neg = neg + noise.gaussian(neg.shape, std=std)
    values = select_thresholds(  # post-processing of the released histograms, on the same stream
        noisy_pos,
        noisy_neg,
        grid,
        default=default,
        critical=critical,
        noise_std=std,
        rng=noise.generator,
    )
    event = dp_accounting.GaussianDpEvent(sigma)
    return DpThresholds(
        values,
        event,
        gaussian_epsilon(sigma, delta=delta),
        delta,
        f"validation, DP (noisy score histograms, Gaussian): {what}",
        sigma,
    )


__all__ = [
    "DEFAULT_GRID",
    "FALLBACK",
    "THRESHOLD_SHARE",
    "DpThresholds",
    "dp_thresholds",
    "score_histograms",
    "select_thresholds",
]


def one_report_per_patient(patient_ids: Sequence[str], report_ids: Sequence[str]) -> np.ndarray:
    """Indices keeping each patient's first report by report id: a label-blind choice after which one
    patient changes at most one count per histogram cell, the sensitivity ``dp_thresholds`` assumes. Used
    when the unit of privacy is the patient. (N,) ids -> (P,) sorted indices."""
    first: dict[str, int] = {}
    for i in sorted(range(len(report_ids)), key=lambda j: report_ids[j]):
        first.setdefault(patient_ids[i], i)
    return np.array(sorted(first.values()), dtype=np.int64)
