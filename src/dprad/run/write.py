"""The write side of a finished run: the files :class:`~dprad.run.record.RunRecord` reads, written by one
function for a single run (``stages.finish``) and for a federated hospital's site (``federate.site``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dprad import io
from dprad.privacy.ledger import PrivacyLedger
from dprad.run import files
from dprad.run.plan import RunPlan
from dprad.run.record import Thresholds

SCORED = ("val", "test")  # the splits metrics.json scores (never train: it holds the audit's canaries)


def run_metrics(
    plan: RunPlan, probs_for: Callable[[str], np.ndarray], thresholds: Thresholds
) -> dict[str, Any]:
    """``metrics.json``: the shipped thresholds, and each scored split's metrics at 0.5 and, when they
    were fitted on validation, at the shipped thresholds."""
    from dprad.data.reports import label_matrix
    from dprad.data.schemas import UncertainPolicy
    from dprad.metrics.scores import summary

    schema, policy = plan.schema, UncertainPolicy(plan.cfg.data.uncertain_policy)
    out: dict[str, Any] = {"thresholds": thresholds.to_dict()}
    for name in SCORED:
        reports = plan.splits.as_dict()[name]
        if not reports:
            continue
        y, m = label_matrix(reports, schema, policy=policy)
        p = probs_for(name)
        out[name] = {"threshold_0.5": summary(y, p, mask=m, labels=schema.labels)}
        if thresholds.fitted_on is not None:
            out[name]["threshold_val"] = summary(
                y, p, mask=m, labels=schema.labels, thresholds=thresholds.array
            )
    return out


def monitor_reference(
    plan: RunPlan, probs_for: Callable[[str], np.ndarray], thresholds: Thresholds
) -> dict[str, Any]:
    """``reference.json``, the monitor's reference: test-split scores and statistics, no report text."""
    from dprad.local_models import load_tokenizer
    from dprad.metrics.drift import reference_of_reports, tokenizer_vocab

    return reference_of_reports(
        plan.splits.test,
        probs_for("test"),
        schema=plan.schema,
        policy=plan.cfg.data.uncertain_policy,
        thresholds=thresholds.array,
        threshold_rule=thresholds.describe(),
        vocab=tokenizer_vocab(load_tokenizer(plan.model_dir)),
    )


def write_finished_run(
    path: Path,
    plan: RunPlan,
    *,
    probs_for: Callable[[str], np.ndarray],
    thresholds: Thresholds,
    save_model: Callable[[Path], None],
    history: Mapping[str, Any],
    notes: Sequence[str],
    ledger: PrivacyLedger,
    audit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the run directory ``path`` of the model trained from ``plan`` and return its metrics.

    ``probs_for(split)``: the model's scores of a split's reports (N, L); ``save_model(dir)`` writes the
    model into ``model/``; ``audit``: ``audit.json`` (the canary audit), when there is one. Every split is
    scored before anything is written; then the model, schema, splits, notes, history, the monitor's
    reference (when there is a test split) and the audit, ``metrics.json`` (the marker of a finished
    federated site) last but one, and ``privacy.json`` last (its presence marks a finished run)."""
    metrics = run_metrics(plan, probs_for, thresholds)
    reference = monitor_reference(plan, probs_for, thresholds) if plan.splits.test else None
    (path / files.MODEL).mkdir(parents=True, exist_ok=True)
    save_model(path / files.MODEL)
    io.write_json(path / files.SCHEMA, plan.schema.to_dict())
    io.write_json(path / files.SPLITS, {k: [r.id for r in v] for k, v in plan.splits.as_dict().items()})
    io.write_json(path / files.NOTES, list(notes))
    io.write_json(path / files.HISTORY, history)
    if reference is not None:
        io.write_json(path / files.REFERENCE, reference)
    if audit is not None:
        io.write_json(path / files.AUDIT, audit)
    io.write_json(path / files.METRICS, metrics)
    io.write_json(path / files.PRIVACY, ledger.to_dict())  # last: its presence marks a finished run
    return metrics
