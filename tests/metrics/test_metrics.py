from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from dprad.metrics.bootstrap import (
    headline,
    interval,
    paired_difference,
    patient_weights,
    weighted_label_metrics,
)
from dprad.metrics.calibration import (
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
)
from dprad.metrics.fairness import age_band, subgroup_gaps
from dprad.metrics.scores import f1_scores, fit_thresholds, per_label


def random_problem(seed: int, n: int = 200, k: int = 5, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < rng.uniform(0.05, 0.5, size=k)).astype(int)
    y[:, -1] = 0  # a label with no positives
    s = np.clip(y * 0.3 + rng.random((n, k)) * 0.8, 0, 1)
    if ties:
        s = np.round(s, 1)
    return y, s


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), ties=st.booleans())
def test_metrics_agree_with_scikit_learn(seed: int, ties: bool) -> None:
    y, s = random_problem(seed, ties=ties)
    pred = (s >= 0.5).astype(int)
    rows = per_label(y, s)
    boot = weighted_label_metrics(y, s, pred, np.ones((1, len(y)), dtype=np.float32))
    for j, r in enumerate(rows):
        assert r["precision"] == pytest.approx(precision_score(y[:, j], pred[:, j], zero_division=0))
        assert r["recall"] == pytest.approx(recall_score(y[:, j], pred[:, j], zero_division=0))
        assert r["f1"] == pytest.approx(f1_score(y[:, j], pred[:, j], zero_division=0))
        assert boot["f1"][0, j] == pytest.approx(r["f1"])
        if y[:, j].sum() == 0:
            assert r["auroc"] is None and np.isnan(boot["auroc"][0, j]) and r["support"] == 0
        else:
            assert r["auroc"] == pytest.approx(roc_auc_score(y[:, j], s[:, j]))
            assert boot["auroc"][0, j] == pytest.approx(roc_auc_score(y[:, j], s[:, j]))
            assert boot["auprc"][0, j] == pytest.approx(average_precision_score(y[:, j], s[:, j]))
    f1s = f1_scores(y, s)
    for avg in ("weighted", "macro", "micro"):
        assert f1s[avg] == pytest.approx(f1_score(y, pred, average=avg, zero_division=0))
    head = headline(boot)
    assert head["weighted_f1"][0] == pytest.approx(f1s["weighted"])
    assert head["macro_f1"][0] == pytest.approx(f1s["macro"])  # the zero-positive label counts as F1 0
    assert head["micro_f1"][0] == pytest.approx(f1s["micro"])


def test_weighted_metrics_equal_sklearn_with_sample_weights() -> None:
    y, s = random_problem(3)
    w = np.random.default_rng(0).integers(0, 3, size=(1, len(y))).astype(np.float32)
    boot = weighted_label_metrics(y, s, (s >= 0.5).astype(int), w)
    for j in range(y.shape[1] - 1):
        assert boot["auroc"][0, j] == pytest.approx(roc_auc_score(y[:, j], s[:, j], sample_weight=w[0]))
        assert boot["auprc"][0, j] == pytest.approx(
            average_precision_score(y[:, j], s[:, j], sample_weight=w[0])
        )


def test_small_literal_case_by_hand() -> None:
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    s = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1], [0.1, 0.3]])
    a, b = per_label(y, s, labels=["A", "B"])
    # A: predicted 1 0 1 0 vs truth 1 1 0 0 -> TP 1, FP 1, FN 1, TN 1
    assert (a["precision"], a["recall"], a["specificity"], a["f1"]) == (0.5, 0.5, 0.5, 0.5)
    assert a["auroc"] == pytest.approx(0.75)  # pairs (0.9>0.6, 0.9>0.1, 0.4<0.6, 0.4>0.1) -> 3/4
    # B: no positives: reported, not dropped
    assert b["support"] == 0 and b["auroc"] is None and b["f1"] == 0.0 and b["specificity"] == 0.75
    th = fit_thresholds(y, s)
    assert th[0] == pytest.approx(0.4) and th[1] == 0.5


def test_patient_weights_resample_whole_patients() -> None:
    pids = ["a", "a", "a", "b", "c", "c"]
    w = patient_weights(pids, 500, random_state=1)
    assert w.shape == (500, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 1] == w[:, 2]).all() and (w[:, 4] == w[:, 5]).all()
    # each resample draws 3 patients
    assert np.allclose(w[:, [0, 3, 4]].sum(1), 3)


def test_bootstrap_ci_covers_the_truth_at_about_the_nominal_rate() -> None:
    """Simulated patients with 1-3 correlated reports; the true AUROC / F1 come from a large population."""
    rng = np.random.default_rng(7)

    def sample(n_patients: int):
        sizes = rng.integers(1, 4, size=n_patients)
        pid = np.repeat(np.arange(n_patients), sizes)
        frailty = rng.normal(size=n_patients)[pid]  # shared within a patient
        y = (rng.random(len(pid)) < 1 / (1 + np.exp(-(frailty - 1)))).astype(int)
        s = 1 / (1 + np.exp(-(1.5 * y + 0.8 * frailty + rng.normal(size=len(pid)) - 1.5)))
        return y[:, None], s[:, None], pid.astype(str)

    y, s, _ = sample(200_000)
    truth_auc = roc_auc_score(y[:, 0], s[:, 0])
    truth_f1 = f1_score(y[:, 0], s[:, 0] >= 0.5)
    hits_auc = hits_f1 = 0
    trials = 150
    for _ in range(trials):
        y, s, pid = sample(150)
        boot = weighted_label_metrics(
            y, s, (s >= 0.5).astype(int), patient_weights(pid, 400, random_state=rng)
        )
        point = weighted_label_metrics(y, s, (s >= 0.5).astype(int), np.ones((1, len(y)), dtype=np.float32))
        ci_auc = interval(float(point["auroc"][0, 0]), boot["auroc"][:, 0])
        ci_f1 = interval(float(point["f1"][0, 0]), boot["f1"][:, 0])
        hits_auc += ci_auc.low <= truth_auc <= ci_auc.high
        hits_f1 += ci_f1.low <= truth_f1 <= ci_f1.high
    assert 0.88 <= hits_auc / trials <= 0.99, hits_auc / trials
    assert 0.88 <= hits_f1 / trials <= 0.99, hits_f1 / trials


def test_paired_difference() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.8, 0.02, size=1000)
    same = paired_difference(0.8, 0.8, a, a)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    worse = paired_difference(0.8, 0.7, a, a - 0.1 + rng.normal(0, 0.01, size=1000))
    assert worse["ci_high"] < 0 and worse["p_value"] < 0.01


def test_calibration_and_temperature() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20_000)
    y = (rng.random(20_000) < p).astype(float)
    assert expected_calibration_error(y, p, n_bins=10) < 0.02
    over = apply_temperature(p, 0.4)  # overconfident version of the same scores
    assert expected_calibration_error(y, over, n_bins=10) > 0.08
    t = fit_temperature(y[:, None], over[:, None])
    assert t == pytest.approx(1 / 0.4, rel=0.1)
    rep = calibration_report(y[:, None], p[:, None], n_bins=15, labels=["x"])
    assert rep["bins"] == 15 and len(rep["per_label"][0]["reliability"]) == 15
    assert sum(b["count"] for b in rep["pooled_reliability"]) == 20_000


def test_subgroup_gaps_known_values() -> None:
    groups = np.array(["F"] * 4 + ["M"] * 4 + ["unknown"] * 2)
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 1])[:, None]
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])[:, None]
    (gap,) = subgroup_gaps(y, pred, groups, labels=["X"])
    assert gap["selection_rate"] == {"F": 0.75, "M": 0.25}
    assert gap["tpr"] == {"F": 1.0, "M": 0.5}
    assert gap["statistical_parity_difference"] == pytest.approx(0.5)
    assert gap["equal_opportunity_difference"] == pytest.approx(0.5)
    assert [age_band(a) for a in (30, 45, 70, 85, None)] == ["<40", "40-59", "60-79", "80+", "unknown"]


def test_threshold_for_a_critical_label_reaches_the_target_sensitivity() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((400, 1)) < 0.2).astype(int)
    s = np.clip(0.25 * y + rng.random((400, 1)) * 0.8, 0, 1)
    th = fit_thresholds(y, s, target_recall={0: 0.9})
    recall = ((s[:, 0] >= th[0]) & (y[:, 0] == 1)).sum() / y.sum()
    assert recall >= 0.9
    assert th[0] <= fit_thresholds(y, s)[0]  # asking for sensitivity lowers the threshold below max-F1's
