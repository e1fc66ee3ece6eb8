"""One evaluation of a set of scores: headline and per-label metrics with patient-level bootstrap CIs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dprad.metrics.bootstrap import headline, interval, patient_resamples, weighted_label_metrics
from dprad.metrics.scores import binarize

PER_LABEL_METRICS = ("precision", "recall", "specificity", "f1", "auroc", "auprc")
HEADLINE_METRICS = ("weighted_f1", "macro_f1", "micro_f1", "macro_auroc")


@dataclass(frozen=True)
class EvalOptions:
    # "val": the thresholds the run ships with (fitted on its validation split, under DP when the run
    # was private; 0.5 where it fitted none), which serving uses; or "0.5" for every label
    thresholds: str = "val"
    n_boot: int = 1000
    groups: tuple[str, ...] = ()
    min_group_size: int = 30
    temperature: bool = False  # fit one temperature on the run's validation split and apply it
    split: str = "auto"  # auto: the run's test split if the data holds it, else all reports; or test / all
    label_map: str | None = None
    calibration_bins: int = 10
    random_state: int = 0


def evaluate_arrays(
    y: np.ndarray,
    probs: np.ndarray,
    mask: np.ndarray,
    patient_ids: Sequence[str],
    *,
    labels: Sequence[str],
    thresholds: np.ndarray,
    n_boot: int,
    random_state: int = 0,
) -> dict[str, Any]:
    """Point estimates and patient-level bootstrap CIs for headline and per-label metrics."""
    pred = binarize(probs, thresholds)
    ones = np.ones((1, len(y)), dtype=np.float32)
    point = weighted_label_metrics(y, probs, pred, ones, mask)
    point_head = headline(point)
    # the resamples are drawn block by block: memory bounded by a cell budget, not by n_boot x N
    boot = weighted_label_metrics(
        y, probs, pred, patient_resamples(patient_ids, n_boot, random_state=random_state), mask
    )  # each (B, L)
    boot_head = headline(boot)
    heads = {k: interval(float(point_head[k][0]), boot_head[k]).to_dict() for k in HEADLINE_METRICS}
    per = []
    for j, name in enumerate(labels):
        support = int(point["support"][0, j])
        row: dict[str, Any] = {
            "label": name,
            "support": support,
            "n": int(mask[:, j].sum()),
            "prevalence": float(support / max(mask[:, j].sum(), 1)),
            "threshold": float(thresholds[j]),
            "no_positives": support == 0,
        }
        for metric in PER_LABEL_METRICS:
            row[metric] = interval(float(point[metric][0, j]), boot[metric][:, j]).to_dict()
        per.append(row)
    missing = [r["label"] for r in per if r["no_positives"]]
    return {
        "headline": heads,
        "per_label": per,
        "labels_without_positives": missing,
        "macro_auroc_labels": int((~np.isnan(point["auroc"][0])).sum()),
        "bootstrap": {"resamples": n_boot, "unit": "patient", "level": 0.95, "random_state": random_state},
    }
