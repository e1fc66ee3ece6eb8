"""The blocked bootstrap (resamples drawn block by block, counts from per-patient sums) gives the same
numbers, bit for bit, as the (B, N) weight matrix it replaces, for any block size."""

from __future__ import annotations

import numpy as np
import pytest

from dprad.metrics.bootstrap import (
    headline,
    patient_resamples,
    patient_weights,
    weighted_label_metrics,
)
from dprad.metrics.evaluation import evaluate_arrays


def reference_weights(patient_ids: list[str], n_boot: int, random_state: int) -> np.ndarray:
    """The unblocked (B, N) matrix, as dprad drew it before the blocks."""
    rng = np.random.default_rng(random_state)
    _, group = np.unique(np.asarray(patient_ids), return_inverse=True)
    p = int(group.max()) + 1
    draws = rng.integers(0, p, size=(n_boot, p))  # (B, P)
    flat = (np.arange(n_boot)[:, None] * p + draws).ravel()
    return np.bincount(flat, minlength=n_boot * p).reshape(n_boot, p).astype(np.float32)[:, group]


def reference_metrics(
    y: np.ndarray, s: np.ndarray, pred: np.ndarray, w: np.ndarray, m: np.ndarray
) -> dict[str, np.ndarray]:
    """The unblocked computation: four (B, N) @ (N, L) products and the ranking metrics over all rows."""
    from dprad.metrics.bootstrap import metrics_from_counts

    y, p, m = y.astype(np.float32), pred.astype(np.float32), m.astype(np.float32)
    tp, fp = w @ (y * p * m), w @ ((1 - y) * p * m)
    fn, tn = w @ (y * (1 - p) * m), w @ ((1 - y) * (1 - p) * m)
    out = metrics_from_counts(tp, fp, fn, tn)
    auroc, auprc = np.full(tp.shape, np.nan), np.full(tp.shape, np.nan)
    for j in range(y.shape[1]):
        keep = m[:, j] > 0
        auroc[:, j], auprc[:, j] = _ranking(y[keep, j], s[keep, j], w[:, keep])
    out["auroc"], out["auprc"] = auroc, auprc
    return out


def _ranking(y: np.ndarray, s: np.ndarray, w: np.ndarray, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    b = w.shape[0]
    if len(y) == 0:
        return np.full(b, np.nan), np.full(b, np.nan)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order].astype(np.float32)
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    ties = len(starts) < len(s_sorted)
    auroc, auprc = np.empty(b), np.empty(b)
    for lo in range(0, b, chunk):
        ws = w[lo : lo + chunk, order].astype(np.float32, copy=False)
        wpos = ws * y_sorted
        wneg = ws - wpos
        if ties:
            wpos, wneg = np.add.reduceat(wpos, starts, axis=1), np.add.reduceat(wneg, starts, axis=1)
        ptot, ntot = wpos.sum(1), wneg.sum(1)
        fp_cum, tp_cum = np.cumsum(wneg, axis=1), np.cumsum(wpos, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auroc[lo : lo + chunk] = (wpos * (ntot[:, None] - fp_cum + 0.5 * wneg)).sum(1) / (ptot * ntot)
            precision = tp_cum / np.maximum(tp_cum + fp_cum, 1e-30)
            auprc[lo : lo + chunk] = (wpos * precision).sum(1) / ptot
            auroc[lo : lo + chunk][(ptot == 0) | (ntot == 0)] = np.nan
            auprc[lo : lo + chunk][ptot == 0] = np.nan
    return auroc, auprc


def case(
    n: int = 300, n_labels: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < 0.3).astype(np.float32)
    s = np.round(np.clip(y * 0.3 + rng.random((n, n_labels)) * 0.7, 0, 1), 2)  # rounded: many ties
    pred = (s >= 0.5).astype(np.float32)
    m = (rng.random((n, n_labels)) < 0.85).astype(np.float32)
    m[:, -1] = 0  # a label nobody has
    y[:, -2] = 0  # a label without positives
    pids = [f"p{i}" for i in rng.integers(0, n // 3, size=n)]
    return y, s, pred, m, pids


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # NaN == NaN, every bit otherwise


@pytest.mark.parametrize("budget", [1, 7 * 300, 64 * 300, 1 << 20])
def test_blocked_metrics_equal_the_unblocked_matrix(budget: int) -> None:
    y, s, pred, m, pids = case()
    want = reference_metrics(y, s, pred, reference_weights(pids, 150, 3), m)
    resamples = patient_resamples(pids, 150, random_state=3)
    assert_same(weighted_label_metrics(y, s, pred, resamples, m, cell_budget=budget), want)
    # a dense (B, N) matrix, blocked by rows the same way
    dense = patient_weights(pids, 150, random_state=3)
    np.testing.assert_array_equal(dense, reference_weights(pids, 150, 3))
    assert_same(weighted_label_metrics(y, s, pred, dense, m, cell_budget=budget), want)
    # a second pass over the same resamples draws the same rows (compare_runs scores two runs on them)
    assert_same(weighted_label_metrics(y, s, pred, resamples, m, cell_budget=budget), want)


def test_a_generator_passed_in_advances_as_before() -> None:
    _, _, _, _, pids = case()
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    patient_resamples(pids, 40, random_state=a)
    b.integers(0, len(set(pids)), size=(40, len(set(pids))))
    assert a.random() == b.random()


def test_the_evaluation_is_unchanged() -> None:
    y, s, pred, m, pids = case(n=400, seed=1)
    del pred
    thresholds = np.full(y.shape[1], 0.5)
    got = evaluate_arrays(y, s, m, pids, labels=list("abcde"), thresholds=thresholds, n_boot=200)
    boot = reference_metrics(y, s, (s >= 0.5).astype(np.float32), reference_weights(pids, 200, 0), m)
    head = headline(boot)
    assert got["headline"]["weighted_f1"]["ci_low"] == float(np.quantile(head["weighted_f1"], 0.025))
    assert got["headline"]["weighted_f1"]["ci_high"] == float(np.quantile(head["weighted_f1"], 0.975))
    f1 = boot["f1"][:, 0]
    assert got["per_label"][0]["f1"]["ci_low"] == float(np.quantile(f1, 0.025))
    auroc = boot["auroc"][:, 1]
    assert got["per_label"][1]["auroc"]["ci_high"] == float(np.quantile(auroc[~np.isnan(auroc)], 0.975))
