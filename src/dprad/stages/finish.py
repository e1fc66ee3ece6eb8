"""Stage 3, finishing: account, choose thresholds, score the splits, write the ledger, metrics and model."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dprad.data.schemas import LabelSchema
from dprad.data.splits import Splits
from dprad.model import trainable_parameters
from dprad.modes.base import Mode
from dprad.privacy import DpSgd, NonPrivate, PrivacyLedger, epsilon_of, guarantee_statement, library_versions
from dprad.privacy.noise import NoiseSource
from dprad.run import files
from dprad.run.plan import RunPlan
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
        from dprad.stages.plan import threshold_releases

        train_acc, acc = privacy.accounting(), privacy.total_accounting()
        parts: list[dict[str, Any]] = []
        if plan.probe is not None:
            probe = plan.probe.privacy()
            assert isinstance(probe, DpSgd)
            parts.append(
                {
                    "part": "linear probe (DP-SGD, LP-FT phase 1)",
                    "epsilon": probe.accounting().epsilon,
                    **_phase_numbers(plan.probe.phase_dict()),
                }
            )
        parts.append(
            {
                "part": "fine-tuning (DP-SGD, LP-FT phase 2)"
                if plan.probe is not None
                else "training (DP-SGD)",
                "epsilon": train_acc.epsilon,
                **_phase_numbers(plan.phase_dict()),
            }
        )
        for release in threshold_releases(plan.threshold_sigma):
            parts.append(
                {
                    "part": "thresholds (DP: noisy validation score histograms)",
                    "epsilon": epsilon_of(release, delta=privacy.delta, accountant=privacy.accountant),
                    "noise_multiplier": plan.threshold_sigma,
                }
            )
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
            parts=parts,
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


def _phase_numbers(phase: dict[str, Any]) -> dict[str, Any]:
    """A training phase's own accounting inputs: its part of the ledger can be recomputed from them."""
    keys = ("noise_multiplier", "sample_rate", "steps", "max_grad_norm", "epochs", "lr", "batch_size")
    return {k: phase[k] for k in keys}


def split_metrics(
    probs_for: Callable[[str], np.ndarray],
    schema: LabelSchema,
    splits: Splits,
    plan: RunPlan,
    *,
    noise: NoiseSource,
) -> dict[str, Any]:
    """Validation-fitted thresholds, and val / test metrics at 0.5 and at those thresholds. The DP
    thresholds' histogram noise is drawn from ``noise`` (the run's secret source)."""
    from dprad.data.reports import label_matrix
    from dprad.data.schemas import UncertainPolicy
    from dprad.metrics.scores import summary

    policy = UncertainPolicy(plan.cfg.data.uncertain_policy)
    out: dict[str, Any] = {}
    data = {}
    for name, reps in splits.as_dict().items():
        if reps and name != "train":
            y, m = label_matrix(reps, schema, policy=policy)
            data[name] = (y, m, probs_for(name))
    rule = plan.cfg.privacy.thresholds
    critical = {schema.labels.index(c): CRITICAL_SENSITIVITY for c in schema.critical}
    thresholds = None
    if rule == "dp":
        from dprad.privacy.thresholds import dp_thresholds, one_report_per_patient

        y, m, p = data["val"]
        if plan.unit == "patient":  # the histograms' sensitivity holds per report: keep one per patient
            keep = one_report_per_patient([r.patient_id for r in splits.val], [r.id for r in splits.val])
            y, m, p = y[keep], m[keep], p[keep]
        assert plan.threshold_epsilon is not None and plan.cfg.privacy.delta is not None
        dp = dp_thresholds(
            y,
            p,
            m,
            epsilon=plan.threshold_epsilon,
            delta=plan.cfg.privacy.delta,
            noise=noise.stream("thresholds"),
            default=plan.cfg.privacy.threshold_default,
            critical=critical,
        )
        if not np.isclose(dp.noise_multiplier, plan.threshold_sigma or -1.0):  # what the ledger accounts
            raise RuntimeError("DP thresholds used a noise multiplier other than the planned one")
        thresholds = dp.values
        out["thresholds"] = {
            "fitted_on": "val (DP)",
            "rule": f"{dp.rule}; sensitivity >= {CRITICAL_SENSITIVITY} for critical labels",
            "epsilon": dp.epsilon,
            "noise_multiplier": dp.noise_multiplier,
            "reports": len(y),  # one per patient when the unit of privacy is the patient
            "critical": list(schema.critical),
            "values": thresholds.tolist(),
        }
    elif rule == "val":  # the same grid rule as the DP thresholds, on exact counts
        from dprad.privacy.thresholds import dp_thresholds, one_report_per_patient

        y, m, p = data["val"]
        if plan.unit == "patient":  # the histograms' sensitivity holds per report: keep one per patient
            keep = one_report_per_patient([r.patient_id for r in splits.val], [r.id for r in splits.val])
            y, m, p = y[keep], m[keep], p[keep]
        exact = dp_thresholds(
            y,
            p,
            m,
            epsilon=math.inf,
            delta=1.0,
            default=plan.cfg.privacy.threshold_default,
            critical=critical,
        )
        thresholds = exact.values
        out["thresholds"] = {
            "fitted_on": "val (NOT private)" if plan.private else "val",
            "rule": f"{exact.rule}; sensitivity >= {CRITICAL_SENSITIVITY} for critical labels",
            "critical": list(schema.critical),
            "values": thresholds.tolist(),
        }
    else:
        out["thresholds"] = {
            "fitted_on": None,
            "rule": "0.5 for every label"
            + ("" if "val" in data else " (no validation split to fit thresholds on)"),
            "critical": list(schema.critical),
            "values": [0.5] * len(schema),
        }
    for name, (y, m, p) in data.items():
        out[name] = {"threshold_0.5": summary(y, p, mask=m, labels=schema.labels)}
        if thresholds is not None:
            out[name]["threshold_val"] = summary(y, p, mask=m, labels=schema.labels, thresholds=thresholds)
    return out


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
    splits = plan.splits
    if plan.canaries is not None:  # canaries are training data for the audit only: never in metrics
        splits = replace(splits, train=[r for r in splits.train if not r.id.startswith("canary-")])
    probs: dict[str, np.ndarray] = {}

    def probs_for(split: str) -> np.ndarray:  # each split scored once
        if split not in probs:
            probs[split] = mode.probs(split)
        return probs[split]

    metrics = split_metrics(probs_for, plan.schema, splits, plan, noise=noise)
    mode.save(run_dir.model_dir)
    run_dir.write_json(files.SCHEMA, plan.schema.to_dict())
    run_dir.write_json(files.HISTORY, fitted.history)
    run_dir.write_json(files.METRICS, metrics)
    run_dir.write_json(files.SPLITS, {k: [r.id for r in v] for k, v in plan.splits.as_dict().items()})
    run_dir.write_json(files.NOTES, notes)
    if splits.test:  # the monitor's reference: test-split scores and statistics, no report text
        from dprad.local_models import load_tokenizer
        from dprad.metrics.drift import reference_of_reports, tokenizer_vocab
        from dprad.run import Thresholds

        shipped = Thresholds.from_metrics(metrics, plan.schema, source=str(run_dir.path / files.METRICS))
        reference = reference_of_reports(
            splits.test,
            probs_for("test"),
            schema=plan.schema,
            policy=plan.cfg.data.uncertain_policy,
            thresholds=shipped.array,
            threshold_rule=shipped.describe(),
            vocab=tokenizer_vocab(load_tokenizer(plan.model_dir)),
        )
        run_dir.write_json(files.REFERENCE, reference)
    if plan.canaries is not None:
        run_dir.write_json(files.AUDIT, {"canary": audit_canaries(plan, mode, ledger)})
    run_dir.write_json(files.PRIVACY, ledger.to_dict())  # last: its presence marks a finished run
    return TrainResult(run_dir.path, ledger, metrics)
