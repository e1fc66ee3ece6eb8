"""Membership inference metrics: how well a score separates training reports from held-out ones.

Members are the run's training reports; non-members are its test reports (other patients). Every attack
produces one score per report, higher meaning "more likely a member". The metrics are AUC, attacker
advantage (max TPR - FPR over thresholds), and TPR at 1% and 0.1% FPR (the low-FPR regime that matters:
an attacker who is confidently right about a few patients), each with a percentile bootstrap CI that
resamples members and non-members independently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dprad.data.reports import Report
from dprad.errors import DpradError
from dprad.metrics.bootstrap import interval

LOW_FPRS = (0.01, 0.001)
SUBGROUP_ATTRS = ("sex", "site")
MIN_SLICE = 10  # members and non-members a slice needs before it is reported
RARE_PREVALENCE = 0.05  # a label positive in fewer than 5% of training reports is "rare"


def roc(scores_in: np.ndarray, scores_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold "member if score >= t", from (0, 0) to (1, 1); ties are
    one threshold, so tied scores never count as partly separated."""
    s = np.concatenate([scores_in, scores_out])  # (N,)
    y = np.concatenate([np.ones(len(scores_in)), np.zeros(len(scores_out))])  # (N,)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = last + 1 - tp
    return np.r_[0.0, fp / max(len(scores_out), 1)], np.r_[0.0, tp / max(len(scores_in), 1)]


def attack_metrics(
    scores_in: np.ndarray, scores_out: np.ndarray, *, fprs: Sequence[float] = LOW_FPRS
) -> dict[str, float]:
    """AUC, advantage and TPR at each FPR in ``fprs`` (the best TPR among thresholds with FPR <= it)."""
    fpr, tpr = roc(np.asarray(scores_in, float), np.asarray(scores_out, float))
    out = {
        "auc": float(np.trapezoid(tpr, fpr)),
        "advantage": float(np.max(tpr - fpr)),
    }
    for x in fprs:
        out[f"tpr_at_{x:g}_fpr"] = float(tpr[fpr <= x + 1e-12].max())
    return out


def bootstrap_attack(
    scores_in: np.ndarray,
    scores_out: np.ndarray,
    *,
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
    fprs: Sequence[float] = LOW_FPRS,
) -> dict[str, Any]:
    """Point metrics with percentile CIs; members and non-members are resampled independently."""
    scores_in, scores_out = np.asarray(scores_in, float), np.asarray(scores_out, float)
    if len(scores_in) == 0 or len(scores_out) == 0:
        raise DpradError("membership inference needs at least one member and one non-member")
    if not (np.all(np.isfinite(scores_in)) and np.all(np.isfinite(scores_out))):
        raise DpradError("membership inference scores contain NaN or inf")
    point = attack_metrics(scores_in, scores_out, fprs=fprs)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        a = scores_in[rng.integers(0, len(scores_in), len(scores_in))]
        b = scores_out[rng.integers(0, len(scores_out), len(scores_out))]
        for k, val in attack_metrics(a, b, fprs=fprs).items():
            samples[k].append(val)
    out: dict[str, Any] = {"members": len(scores_in), "nonmembers": len(scores_out)}
    for k, val in point.items():
        out[k] = interval(val, np.asarray(samples[k]), level=level).to_dict()
    return out


def loss_scores(losses: np.ndarray) -> np.ndarray:
    """The loss attack (Yeom et al., 2018): a lower loss on the true labels means a member. (N,) -> (N,)."""
    return -np.asarray(losses, float)


def confidence_scores(probs: np.ndarray) -> np.ndarray:
    """The confidence attack, which needs no labels: the mean over labels of max(p, 1 - p). (N, L) -> (N,)."""
    p = np.asarray(probs, float)
    return np.maximum(p, 1 - p).mean(1)


def slices(
    members: Sequence[Report],
    nonmembers: Sequence[Report],
    labels: Sequence[str],
    *,
    member_targets: np.ndarray,
    nonmember_targets: np.ndarray,
    attrs: Sequence[str] = SUBGROUP_ATTRS,
    min_size: int = MIN_SLICE,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named (member mask, non-member mask) pairs: reports positive for each label (rare labels first),
    and each value of each subgroup attribute; slices with fewer than ``min_size`` on a side are left out."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    prevalence = member_targets.mean(0) if len(member_targets) else np.zeros(len(labels))
    for j in np.argsort(prevalence, kind="stable"):
        a, b = member_targets[:, j] > 0, nonmember_targets[:, j] > 0
        if a.sum() >= min_size and b.sum() >= min_size:
            rare = " (rare)" if prevalence[j] < RARE_PREVALENCE else ""
            out[f"label={labels[j]}{rare}"] = (a, b)
    for attr in attrs:
        values = sorted(
            {str(r.attrs[attr]) for r in [*members, *nonmembers] if r.attrs.get(attr) is not None}
        )
        for value in values:
            a = np.array([str(r.attrs.get(attr)) == value for r in members], bool)
            b = np.array([str(r.attrs.get(attr)) == value for r in nonmembers], bool)
            if a.sum() >= min_size and b.sum() >= min_size:
                out[f"{attr}={value}"] = (a, b)
    return out


def evaluate_attack(
    scores_in: np.ndarray,
    scores_out: np.ndarray,
    *,
    rng: np.random.Generator,
    n_boot: int = 1000,
    slice_masks: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    slice_boot: int | None = None,
) -> dict[str, Any]:
    """Headline metrics with CIs, plus the same per slice (``slice_boot`` resamples, default n_boot // 5)."""
    out = bootstrap_attack(scores_in, scores_out, rng=rng, n_boot=n_boot)
    if slice_masks:
        nb = slice_boot if slice_boot is not None else max(n_boot // 5, 50)
        out["slices"] = {
            name: bootstrap_attack(scores_in[a], scores_out[b], rng=rng, n_boot=nb)
            for name, (a, b) in slice_masks.items()
        }
    return out


__all__ = [
    "LOW_FPRS",
    "attack_metrics",
    "bootstrap_attack",
    "confidence_scores",
    "evaluate_attack",
    "loss_scores",
    "roc",
    "slices",
]
