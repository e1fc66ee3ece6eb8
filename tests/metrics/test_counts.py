"""Metrics from confusion counts equal the metrics from scores; resamples are patient-level."""

from __future__ import annotations

import numpy as np

from dprad.metrics.counts import bootstrap_counts, confusion_counts, count_evaluation, count_metrics
from dprad.metrics.scores import f1_scores, per_label


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((300, 5)) < [0.5, 0.2, 0.05, 0.3, 0.0]).astype(float)  # the last label: no positive
    probs = np.clip(y * 0.4 + rng.random((300, 5)) * 0.6, 0, 1)
    mask = (rng.random((300, 5)) > 0.1).astype(float)
    th = np.array([0.5, 0.4, 0.6, 0.5, 0.5])
    return y, probs, mask, th


def test_count_metrics_equal_the_score_metrics() -> None:
    y, probs, mask, th = _data()
    counts = confusion_counts(y, probs, mask, th)  # (L, 4)
    assert counts.shape == (5, 4) and counts.sum(1).tolist() == mask.sum(0).tolist()
    m = count_metrics(counts)
    want = f1_scores(y, probs, mask=mask, thresholds=th)
    for avg in ("weighted", "macro", "micro"):
        assert np.isclose(m[f"{avg}_f1"], want[avg]), avg
    rows = per_label(y, probs, mask=mask, thresholds=th)
    for j, row in enumerate(rows):
        for k in ("precision", "recall", "specificity", "f1"):
            assert np.isclose(m[k][j], row[k]), (j, k)
    assert m["support"][4] == 0 and m["f1"][4] == 0.0  # no positive: F1 0, as in every evaluation


def test_resampled_counts_sum_to_hospital_strata_and_give_intervals() -> None:
    y, probs, mask, th = _data(1)
    patients = [f"p{i // 2}" for i in range(len(y))]  # two reports per patient
    counts, boot = bootstrap_counts(y, probs, mask, th, patients, n_boot=50)
    assert boot.shape == (50, 5, 4)
    # a patient-level resample draws whole patients: every resample has an even number of reports per label
    assert np.all(boot.sum(-1)[:, 0] <= 2 * mask[:, 0].sum())
    ev = count_evaluation(counts, boot, labels=list("abcde"))
    w = ev["headline"]["weighted_f1"]
    assert w["ci_low"] <= w["estimate"] <= w["ci_high"] and w["ci_low"] < w["ci_high"]
    # two hospitals: summing their counts and resamples is the stratified bootstrap of the union
    c2, b2 = bootstrap_counts(y[::-1], probs[::-1], mask[::-1], th, patients, n_boot=50, random_state=3)
    both = count_evaluation(counts + c2, boot + b2, labels=list("abcde"))
    assert np.isclose(
        both["headline"]["weighted_f1"]["estimate"], float(count_metrics(counts + c2)["weighted_f1"])
    )
