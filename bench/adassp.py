"""DP linear least squares by perturbed sufficient statistics: AdaSSP (Wang, 2018, "Revisiting
differentially private linear regression: optimal and adaptive prediction & estimation", Algorithm 2).

The whole training split is touched once, through three Gaussian releases:

1. the smallest eigenvalue of X^T X (sensitivity 1: one row x with ||x|| <= 1 moves it by at most ||x||^2),
2. X^T X itself, a symmetric (D, D) matrix (noise on the upper triangle, mirrored; sensitivity
   ||x x^T||_F = ||x||^2 <= 1),
3. X^T T for all L labels at once, (D, L) (sensitivity ||x|| ||t|| <= sqrt(L): targets t are +-1 per label,
   0 where masked),

then solves the ridge system (X^T X + Z + lambda I) theta = X^T T + z with lambda chosen from the noisy
smallest eigenvalue so that the noisy system stays well conditioned with probability 1 - failure_prob.
The releases compose as Gaussian mechanisms, exactly one Gaussian with 1 / sigma^2 = sum 1 / sigma_i^2:
``calibrate_adassp`` finds the noise for a target (epsilon, delta) with dp-accounting's exact Gaussian
privacy loss, and ``dprad.privacy.accounting.compose_epsilon`` recomputes the epsilon of the event. Each
release's noise multiplier is ``sigma / sqrt(share)``, so the shares of the Gaussian budget (1 / sigma^2
adds up over Gaussian mechanisms) follow ``split``.

Rows are clipped to norm <= 1 (after the optional projection) and an intercept column is appended, the
augmented row scaled back to norm <= 1. The projection must be fitted on public data only
(``pca_projection`` of public features, e.g. dprad's synthetic corpus); it is then part of the released
weights, which are returned in the input space as logits: ``logits = x @ weights + bias``.

Research code, not part of dprad: ``bench/head_trainers.py`` measures it against the DP-SGD head
(docs/how-to/choosing.md, "A second head trainer"); ``tests/bench/test_adassp.py`` tests it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dprad.errors import DpradError, ParameterError
from dprad.privacy.accounting import compose_epsilon, gaussian_noise_multiplier
from dprad.privacy.noise import NoiseStream

SPLIT = (0.1, 0.45, 0.45)  # shares of the Gaussian budget: (smallest eigenvalue, X^T X, X^T T)
FAILURE_PROB = 0.05  # the ridge keeps the noisy system positive definite with probability >= 1 - this
LOGIT_SCALE = 6.0  # fitted score s (about P(y = 1)) -> logit LOGIT_SCALE * (s - 0.5): threshold 0.5 stays


@dataclass(frozen=True)
class AdasspFit:
    weights: np.ndarray  # (D, L) on the input features, logit scale
    bias: np.ndarray  # (L,)
    event: Any  # dp_accounting.DpEvent of the three releases (NonPrivateDpEvent when epsilon is inf)
    epsilon: float  # the event's epsilon at ``delta``, recomputed by PLD (inf when not private)
    delta: float
    noise_multipliers: tuple[float, float, float]  # std / sensitivity of each release (0 when not private)
    ridge: float  # the lambda used


def adassp_event(*, noise_multipliers: tuple[float, float, float]) -> Any:
    """The dp-accounting event of AdaSSP's three Gaussian releases (noise multiplier = std / sensitivity)."""
    import dp_accounting

    if len(noise_multipliers) != 3 or any(not s > 0 for s in noise_multipliers):
        raise DpradError(f"AdaSSP needs three positive noise multipliers, not {noise_multipliers}")
    return dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(float(s)) for s in noise_multipliers])


def _noise_for(sigma: float, shares: tuple[float, float, float]) -> tuple[float, float, float]:
    return (sigma / math.sqrt(shares[0]), sigma / math.sqrt(shares[1]), sigma / math.sqrt(shares[2]))


def calibrate_adassp(
    *, epsilon: float, delta: float, split: tuple[float, float, float] = SPLIT
) -> tuple[float, float, float]:
    """Noise multipliers of the three releases whose composed event spends at most ``epsilon`` at ``delta``.

    Gaussian mechanisms compose exactly into one Gaussian with 1 / sigma^2 = sum of 1 / sigma_i^2, so the
    calibration is the exact one of a single Gaussian (dp-accounting's ``GaussianPrivacyLoss``).
    """
    if len(split) != 3 or any(not w > 0 for w in split):
        raise DpradError(f"AdaSSP budget split {split} must be three positive shares")
    total = sum(split)
    shares = (split[0] / total, split[1] / total, split[2] / total)
    return _noise_for(gaussian_noise_multiplier(epsilon=epsilon, delta=delta), shares)


def pca_projection(public_x: np.ndarray, k: int) -> np.ndarray:
    """The top-``k`` right singular vectors of PUBLIC features (N, D) -> (D, k) with orthonormal columns.

    Orthonormal columns never increase a row's norm, so unit-norm inputs stay within AdaSSP's bound.
    """
    if not 1 <= k <= public_x.shape[1]:
        raise DpradError(f"projection size {k} must be in [1, {public_x.shape[1]}]")
    _, _, vt = np.linalg.svd(np.asarray(public_x, dtype=np.float64), full_matrices=False)  # (r, D)
    if vt.shape[0] < k:
        raise DpradError(f"projection size {k} exceeds the {vt.shape[0]} public rows it is fitted on")
    return vt[:k].T.astype(np.float32)


def block_projection(projection: np.ndarray, extra: int) -> np.ndarray:
    """Project the first block with ``projection`` (H, k) and keep ``extra`` trailing columns (the rule
    prior) as they are: (H + extra, k + extra), still orthonormal columns."""
    h, k = projection.shape
    out = np.zeros((h + extra, k + extra), dtype=np.float32)
    out[:h, :k] = projection
    out[h:, k:] = np.eye(extra, dtype=np.float32)
    return out


def clip_rows(x: np.ndarray, bound: float = 1.0) -> np.ndarray:
    """Scale every row with norm above ``bound`` down to ``bound``: (N, D) -> (N, D)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return x * np.minimum(1.0, bound / np.maximum(norms, 1e-12))


def sufficient_statistics(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    *,
    projection: np.ndarray | None = None,
    intercept: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """X^T X (D', D') and X^T T (D', L) of the rows AdaSSP releases (D' = k + 1 with the intercept column).

    Each row: project, clip to norm <= 1, append ``intercept``, divide by sqrt(1 + intercept^2): norm <= 1.
    Targets T = 2 y - 1 where the mask is set, 0 elsewhere: one row moves X^T X by at most 1 (Frobenius)
    and X^T T by at most sqrt(L).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mask = np.asarray(mask, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or y.shape != mask.shape or y.shape[0] != x.shape[0]:
        raise DpradError(f"AdaSSP: x {x.shape}, y {y.shape} and mask {mask.shape} do not fit together")
    if not np.isin(y[mask > 0], (0.0, 1.0)).all():
        raise DpradError("AdaSSP: targets must be 0 or 1 where the mask is set")
    if intercept < 0:
        raise DpradError(f"AdaSSP: intercept {intercept} must be >= 0")
    z = x if projection is None else x @ np.asarray(projection, dtype=np.float64)  # (N, k)
    xa = np.concatenate([clip_rows(z), np.full((len(z), 1), intercept)], axis=1)  # (N, k+1)
    xa /= math.sqrt(1.0 + intercept**2)
    t = (2.0 * y - 1.0) * (mask > 0)  # (N, L) in {-1, 0, 1}
    return xa.T @ xa, xa.T @ t


def fit_adassp(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    *,
    epsilon: float,
    delta: float,
    noise: NoiseStream,
    projection: np.ndarray | None = None,
    split: tuple[float, float, float] = SPLIT,
    intercept: float = 1.0,
    failure_prob: float = FAILURE_PROB,
    ridge: float = 0.0,
    logit_scale: float = LOGIT_SCALE,
    public: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> AdasspFit:
    """Fit all L labels at once. ``epsilon`` inf: no noise and ridge ``ridge`` (ordinary ridge regression).

    ``public`` (x, y, mask) of PUBLIC reports (e.g. dprad's synthetic corpus; no privacy cost): the ridge
    shrinks towards their own ridge solution instead of towards 0, i.e. solves
    (X^T X + Z + lambda I) theta = X^T T + z + lambda theta_public. With little private data (large lambda)
    the fit stays near the public one; with a lot (lambda -> 0) the private data decide.

    x (N, D) rows of norm <= 1 (larger rows are clipped), y (N, L) in {0, 1}, mask (N, L) 1 where a label
    counts. Returns logit-scale weights on x: ``logits = x @ weights + bias`` (exact while no row needs
    clipping, e.g. unit-norm rows and an orthonormal projection).
    """
    if ridge < 0 or not 0 < failure_prob < 1:
        raise DpradError(f"AdaSSP: ridge {ridge} must be >= 0 and failure_prob {failure_prob} in (0, 1)")
    gram, moments = sufficient_statistics(x, y, mask, projection=projection, intercept=intercept)
    d, n_labels = moments.shape
    if math.isfinite(epsilon):
        sigmas = calibrate_adassp(epsilon=epsilon, delta=delta, split=split)
        event = adassp_event(noise_multipliers=sigmas)
        s_eig, s_gram, s_mom = sigmas
        lam_min = float(np.linalg.eigvalsh(gram)[0])
        # release 1: a lower confidence bound on the smallest eigenvalue (sensitivity 1)
        tail = math.sqrt(2 * math.log(3 / failure_prob))
        lam_min_dp = max(lam_min + float(noise.gaussian(1, std=s_eig)[0]) - s_eig * tail, 0.0)
        # release 2: X^T X, symmetric noise (upper triangle mirrored), sensitivity 1
        g = noise.gaussian((d, d), std=s_gram)  # (D', D')
        gram = gram + np.triu(g) + np.triu(g, 1).T
        # release 3: X^T T, sensitivity sqrt(L)
        moments = moments + noise.gaussian((d, n_labels), std=s_mom * math.sqrt(n_labels))
        # Wang (2018): a high-probability bound on ||Z||_2 of the symmetric noise, minus the eigenvalue
        bound = s_gram * math.sqrt(d * math.log(6 * d * d / failure_prob))
        lam = max(bound - lam_min_dp, ridge)
        eps_spent = compose_epsilon([event], delta)
    else:
        import dp_accounting

        if not epsilon > 0:
            raise ParameterError(
                parameter="epsilon", value=epsilon, problem="must be > 0 (inf for no privacy)"
            )
        sigmas, event, lam, eps_spent = (0.0, 0.0, 0.0), dp_accounting.NonPrivateDpEvent(), ridge, math.inf
    theta0 = np.zeros((d, n_labels))  # (D', L) the ridge's centre
    if public is not None:
        g_pub, m_pub = sufficient_statistics(*public, projection=projection, intercept=intercept)
        theta0 = _solve(g_pub + max(ridge, 1.0) * np.eye(d), m_pub)
    theta = _solve(gram + lam * np.eye(d), moments + lam * theta0)  # (D', L): t ~ xa @ theta
    # xa = [clip(z), b] / sqrt(1 + b^2); score s = (t + 1) / 2; logit = logit_scale * (s - 0.5) = scale * t / 2
    scale = math.sqrt(1.0 + intercept**2)
    w_z = theta[:-1] / scale  # (k, L)
    w = w_z if projection is None else np.asarray(projection, dtype=np.float64) @ w_z  # (D, L)
    b = intercept * theta[-1] / scale  # (L,)
    return AdasspFit(
        weights=(0.5 * logit_scale * w).astype(np.float32),
        bias=(0.5 * logit_scale * b).astype(np.float32),
        event=event,
        epsilon=eps_spent,
        delta=delta,
        noise_multipliers=sigmas,
        ridge=float(lam),
    )


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:  # singular (no ridge, rank-deficient data): least-norm solution
        return np.linalg.lstsq(a, b, rcond=None)[0]


__all__ = [
    "SPLIT",
    "AdasspFit",
    "adassp_event",
    "block_projection",
    "calibrate_adassp",
    "clip_rows",
    "fit_adassp",
    "pca_projection",
    "sufficient_statistics",
]
