"""Stage 3, finishing: account, choose thresholds, score the splits, write the ledger, metrics and model
(the run directory through ``run.write.write_finished_run``, which a federated site writes with too)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dprad.errors import PrivacyInvariantError
from dprad.modes.base import Mode
from dprad.nn.model import trainable_parameters
from dprad.privacy import DpSgd, NonPrivate, PrivacyLedger, guarantee_statement, library_versions
from dprad.privacy.noise import NoiseSource
from dprad.run.plan import RunPlan
from dprad.run.record import Thresholds
from dprad.run.write import write_finished_run
from dprad.stages.fit import Fitted
from dprad.stages.rundir import RunDir

CRITICAL_SENSITIVITY = 0.9  # validation sensitivity targeted by the thresholds of a schema's critical labels


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    ledger: PrivacyLedger
    metrics: dict[str, Any]


def model_name(cfg_name: str) -> str:
    """The base encoder as the ledger names it: a name, never a local path (a hospital's file layout)."""
    return cfg_name if cfg_name == "minilm" else Path(cfg_name).name or cfg_name


def build_ledger(
    plan: RunPlan, privacy: DpSgd | NonPrivate, fitted: Fitted, params: int, *, noise: NoiseSource | None
) -> PrivacyLedger:
    """The run's ledger. ``noise``: where its DP draws came from (None: not private)."""
    cfg = plan.cfg
    steps = fitted.steps_taken(plan.steps)  # fewer: a non-private run stopped early
    n_canaries = 0 if plan.canaries is None else int(np.sum(plan.canaries.included))
    rule = cfg.privacy.thresholds
    not_protected = [
        f"the base model {model_name(cfg.model.name)} and its pre-training data",
        *(
            ["the validation reports: used WITHOUT DP to pick thresholds (--thresholds val)"]
            if rule == "val"
            else []
        ),
        "history.json: per-step training losses computed without noise (keep inside the institution)",
        "splits.json: which report ids were in which split",
    ]
    common: dict[str, Any] = dict(
        dataset_size=plan.n,
        steps=steps,
        epochs=round(steps * plan.sample_rate, 4),
        sampler=fitted.sampler,
        mode=plan.display_mode,
        trainable_parameters=params,
        not_protected=not_protected,
        library_versions=library_versions(),
        canaries=n_canaries,
        noise={} if noise is None or not plan.private else noise.describe(),
    )
    if isinstance(privacy, DpSgd):
        planned = plan.privacy()  # the parts are the plan's, computed once: they must describe this mechanism
        if not isinstance(planned, DpSgd) or privacy.total_event() != planned.total_event():
            raise PrivacyInvariantError("build_ledger: the privacy object is not the plan's")
        # the total: training composed with the run's other releases (without any, training's own epsilon)
        acc = privacy.total_accounting() if privacy.releases else plan.accounting
        if acc is None:
            raise PrivacyInvariantError("build_ledger: a private plan without its accounting")
        ledger = PrivacyLedger(
            private=True,
            privacy_unit=privacy.unit,
            target_epsilon=cfg.privacy.epsilon,
            epsilon=acc.epsilon,
            delta=privacy.delta,
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            sample_rate=privacy.sample_rate,
            expected_batch_size=privacy.expected_batch_size,
            logical_batch_size=f"Poisson, expected {privacy.expected_batch_size:.1f}",
            accountant=acc.accountant,
            accountant_note=acc.note,
            protected=[f"the training split's {privacy.unit}s (each {privacy.unit} is the unit of privacy)"],
            event=privacy.event_dict(),
            parts=[dict(part) for part in plan.ledger_parts],
            **common,
        )
    else:
        ledger = PrivacyLedger(
            private=False,
            privacy_unit="report",
            target_epsilon=None,
            epsilon=None,
            delta=None,
            noise_multiplier=None,
            max_grad_norm=None,
            sample_rate=None,
            expected_batch_size=None,
            logical_batch_size=f"fixed {cfg.train.batch_size}",
            accountant=None,
            accountant_note="",
            **common,
        )
    statement = guarantee_statement(ledger, model_name=model_name(cfg.model.name), thresholds=rule)
    return replace(ledger, statement=statement)


def fit_thresholds(
    probs_for: Callable[[str], np.ndarray], plan: RunPlan, *, noise: NoiseSource
) -> Thresholds:
    """The thresholds the run ships, by ``--thresholds``: DP histograms of validation scores inside the
    ledger's epsilon (``dp``; their noise drawn from ``noise``, the run's secret source), the same grid
    rule on exact counts (``val``), or 0.5 for every label."""
    from dprad.data.reports import label_matrix
    from dprad.data.schemas import UncertainPolicy
    from dprad.privacy.thresholds import dp_thresholds, one_report_per_patient

    schema, val, rule = plan.schema, plan.splits.val, plan.cfg.privacy.thresholds
    critical_names = tuple(schema.critical)
    if rule not in ("dp", "val"):
        why = "" if val else " (no validation split to fit thresholds on)"
        return Thresholds((0.5,) * len(schema), None, f"0.5 for every label{why}", critical=critical_names)
    y, m = label_matrix(val, schema, policy=UncertainPolicy(plan.cfg.data.uncertain_policy))
    p = probs_for("val")
    if plan.unit == "patient":  # the histograms' sensitivity holds per report: keep one per patient
        keep = one_report_per_patient([r.patient_id for r in val], [r.id for r in val])
        y, m, p = y[keep], m[keep], p[keep]
    critical = {schema.labels.index(c): CRITICAL_SENSITIVITY for c in schema.critical}
    default = plan.cfg.privacy.threshold_default
    if rule == "val":  # the same grid rule as the DP thresholds, on exact counts
        exact = dp_thresholds(y, p, m, epsilon=math.inf, delta=1.0, default=default, critical=critical)
        return Thresholds(
            tuple(exact.values.tolist()),
            "val (NOT private)" if plan.private else "val",
            f"{exact.rule}; sensitivity >= {CRITICAL_SENSITIVITY} for critical labels",
            critical=critical_names,
        )
    assert plan.threshold_epsilon is not None and plan.cfg.privacy.delta is not None
    dp = dp_thresholds(
        y,
        p,
        m,
        epsilon=plan.threshold_epsilon,
        delta=plan.cfg.privacy.delta,
        noise=noise.stream("thresholds"),
        default=default,
        critical=critical,
    )
    if not np.isclose(dp.noise_multiplier, plan.threshold_sigma or -1.0):  # what the ledger accounts
        raise RuntimeError("DP thresholds used a noise multiplier other than the planned one")
    return Thresholds(
        tuple(dp.values.tolist()),
        "val (DP)",
        f"{dp.rule}; sensitivity >= {CRITICAL_SENSITIVITY} for critical labels",
        epsilon=dp.epsilon,
        noise_multiplier=dp.noise_multiplier,
        reports=len(y),  # one per patient when the unit of privacy is the patient
        critical=critical_names,
    )


def audit_canaries(plan: RunPlan, mode: Mode, ledger: PrivacyLedger) -> dict[str, Any]:
    """Score every canary (in and out) by its loss on its random labels; convert to an epsilon lower bound."""
    from dprad.audit.canaries import canary_section
    from dprad.privacy import default_delta

    canaries = plan.canaries
    probs = np.clip(mode.score(list(canaries.reports)), 1e-7, 1 - 1e-7)  # (M, L)
    y = canaries.label_matrix(plan.schema)  # (M, L) random labels
    losses = -(y * np.log(probs) + (1 - y) * np.log(1 - probs)).sum(1)  # (M,) summed BCE, as in training
    delta = ledger.delta if ledger.delta is not None else default_delta(plan.n)
    return canary_section(losses, canaries, delta=delta, ledger_epsilon=ledger.epsilon)


def finish(
    plan: RunPlan,
    mode: Mode,
    privacy: DpSgd | NonPrivate,
    fitted: Fitted,
    run_dir: RunDir,
    notes: list[str],
    *,
    noise: NoiseSource,
) -> TrainResult:
    ledger = build_ledger(plan, privacy, fitted, trainable_parameters(mode.trainable), noise=noise)
    probs_for = functools.cache(mode.probs)  # each split scored once

    thresholds = fit_thresholds(probs_for, plan, noise=noise)
    metrics = write_finished_run(
        run_dir.path,
        plan,
        probs_for=probs_for,
        thresholds=thresholds,
        save_model=mode.save,
        history=fitted.history,
        notes=notes,
        ledger=ledger,
        audit=None if plan.canaries is None else {"canary": audit_canaries(plan, mode, ledger)},
    )
    return TrainResult(run_dir.path, ledger, metrics)
