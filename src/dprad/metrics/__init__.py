"""Metrics: pure functions of labels and scores (no run, no model): per-label and headline scores, the
patient-level bootstrap, calibration, subgroup fairness, label mapping across schemas, drift statistics,
and the evaluation of one set of scores."""
