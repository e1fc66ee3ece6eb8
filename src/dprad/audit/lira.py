"""LiRA, the likelihood-ratio attack of Carlini et al. (2022), "Membership inference attacks from first
principles", for multi-label classifiers.

For each example and label the statistic is the logit-scaled confidence on the true label,
phi = log(p_true / (1 - p_true)) (the logit itself for a positive label, minus it for a negative one),
which is close to Gaussian across models trained with and without the example. Reference models trained on
random halves of the data give, per example, IN and OUT Gaussians; labels are treated as independent
queries, as the paper treats augmentations.

* online: sum over labels of log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out);
* offline (OUT models only): the one-sided test that phi is above the OUT distribution, per label
  z = (phi - mu_out) / s_out, combined over labels by their sum (the likelihood ratio for a common shift).

With few reference models the per-example variances are noisy; ``fix_variance`` (the paper's advice below
about 64 models) pools them per label across examples.
"""

from __future__ import annotations

import numpy as np

from dprad.errors import DpradError

MIN_STD = 1e-3


def true_label_logit(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(..., N, L) logits, (N, L) targets and mask -> (..., N, L) phi, NaN where the label is masked."""
    sign = np.where(targets > 0.5, 1.0, -1.0)  # (N, L)
    return np.where(mask > 0, sign * logits, np.nan)


def _fit(phi: np.ndarray, keep: np.ndarray, *, fix_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per (example, label) over the models where ``keep`` (K, N) is True: (K, N, L) -> (N, L)."""
    w = keep[:, :, None].astype(float)  # (K, N, 1)
    count = w.sum(0)  # (N, 1)
    x = np.nan_to_num(phi)
    mu = (w * x).sum(0) / np.maximum(count, 1)  # (N, L)
    var = (w * (x - mu) ** 2).sum(0) / np.maximum(count - 1, 1)  # (N, L)
    if fix_variance:  # pooled over the examples where the label is observed (masked entries have no variance)
        observed = ~np.isnan(phi).all(0)  # (N, L)
        pooled = np.where(observed, var, 0.0).sum(0, keepdims=True) / np.maximum(observed.sum(0), 1)  # (1, L)
        var = np.broadcast_to(pooled, var.shape)
    return mu, np.sqrt(np.maximum(var, MIN_STD**2))


def _log_normal(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def lira_scores(
    target_phi: np.ndarray,
    reference_phi: np.ndarray,
    keep: np.ndarray,
    *,
    online: bool,
    fix_variance: bool = True,
) -> np.ndarray:
    """Membership scores (N,) for the target model's phi (N, L), given reference phi (K, N, L) and
    ``keep`` (K, N): True where example n was in reference model k's training half. Higher = member."""
    k, n = keep.shape
    if reference_phi.shape[:2] != (k, n) or target_phi.shape != reference_phi.shape[1:]:
        raise DpradError(
            f"LiRA shapes disagree: target {target_phi.shape}, reference {reference_phi.shape}, keep {keep.shape}"
        )
    out_models = (~keep).sum(0)  # (N,)
    if out_models.min() < 2:
        raise DpradError("LiRA needs every example to be OUT of at least 2 reference models: add models")
    mu_out, sd_out = _fit(reference_phi, ~keep, fix_variance=fix_variance)
    observed = ~np.isnan(target_phi)  # (N, L)
    if online:
        if keep.sum(0).min() < 2:
            raise DpradError(
                "online LiRA needs every example to be IN at least 2 reference models: add models"
            )
        mu_in, sd_in = _fit(reference_phi, keep, fix_variance=fix_variance)
        llr = _log_normal(target_phi, mu_in, sd_in) - _log_normal(target_phi, mu_out, sd_out)  # (N, L)
        return np.where(observed, llr, 0.0).sum(1)
    z = (target_phi - mu_out) / sd_out  # (N, L)
    return np.where(observed, z, 0.0).sum(1)


__all__ = ["lira_scores", "true_label_logit"]
