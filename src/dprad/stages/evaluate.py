"""Evaluate a run on data: per-label metrics with patient-level bootstrap CIs, calibration, subgroups,
domain transfer; and paired comparison of two runs on the same reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dprad.data.read import read_reports
from dprad.data.reports import Report, label_matrix
from dprad.data.schemas import UncertainPolicy
from dprad.errors import DpradError
from dprad.metrics.bootstrap import (
    headline,
    paired_difference,
    patient_resamples,
    weighted_label_metrics,
)
from dprad.metrics.calibration import apply_temperature, calibration_report, fit_temperature
from dprad.metrics.evaluation import HEADLINE_METRICS, EvalOptions, evaluate_arrays
from dprad.metrics.fairness import group_values, subgroup_gaps
from dprad.metrics.scores import binarize
from dprad.metrics.transfer import label_map
from dprad.modes import load_run
from dprad.modes.predictor import Predictor
from dprad.run import RunRecord, files


@dataclass(frozen=True)
class Scored:
    """Reports with targets and scores, restricted to the labels both the run and the data have."""

    reports: list[Report]
    labels: list[str]  # data-side label names
    y: np.ndarray  # (N, K)
    mask: np.ndarray  # (N, K)
    probs: np.ndarray  # (N, K)
    thresholds: np.ndarray  # (K,)
    notes: list[str]


def score(
    predictor: Predictor,
    run: RunRecord,
    reports: list[Report],
    data_schema: Any,
    options: EvalOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Scored:
    """The reports scored by the run (``progress(done, total)`` as blocks of reports are scored)."""
    notes: list[str] = []
    mapping = label_map(predictor.schema, data_schema, options.label_map)
    run_idx = [predictor.schema.labels.index(a) for a in mapping]
    data_labels = list(mapping.values())
    data_idx = [data_schema.labels.index(b) for b in data_labels]
    if predictor.schema.name != data_schema.name:
        notes.append(
            f"domain transfer: {len(mapping)} labels mapped from '{predictor.schema.name}' to '{data_schema.name}'"
        )
    done = None if progress is None else (lambda n: progress(n, len(reports)))
    probs = predictor.predict(reports, progress=done).probs[:, run_idx]
    policy = UncertainPolicy(run.config.data.uncertain_policy)
    y_all, m_all = label_matrix(reports, data_schema, policy=policy)
    y, mask = y_all[:, data_idx], m_all[:, data_idx]
    if options.temperature:
        val_reports, val_schema = run.split_reports("val")
        vy, vm = label_matrix(val_reports, val_schema, policy=policy)
        vp = predictor.predict(val_reports).probs
        t = fit_temperature(vy, vp, mask=vm)
        probs = apply_temperature(probs, t)
        notes.append(f"temperature {t:.3f} fitted on the run's {len(val_reports)} validation reports")
    if options.thresholds == "val":  # the run's shipped thresholds
        thresholds = run.thresholds.array[run_idx]
        notes.append(f"thresholds: the run's shipped ones ({run.thresholds.source}: {run.thresholds.rule})")
    elif options.thresholds == "0.5":
        thresholds = np.full(len(run_idx), 0.5)
    else:
        raise DpradError(f"--thresholds '{options.thresholds}' must be 0.5 or val")
    return Scored(reports, data_labels, y, mask, probs, thresholds, notes)


def select_reports(run: RunRecord, reports: list[Report], split: str) -> tuple[list[Report], str]:
    labelled = [r for r in reports if r.labels is not None]
    if split == "all":
        return labelled, "all"
    if run.is_export:  # an export holds no splits (they name training patients): all of DATA is new data
        if split == "test":
            raise DpradError(f"--split test: {run.path} is an export, which holds no splits: use --split all")
        return labelled, "all"
    test_ids = set(run.splits.get("test", ()))
    chosen = [r for r in labelled if r.id in test_ids]
    if split == "test":
        if not chosen:
            raise DpradError(
                f"--split test: none of the run's test reports is in this data ({run.path / files.SPLITS})"
            )
        return chosen, "test"
    if split != "auto":
        raise DpradError(f"--split '{split}' must be auto, test or all")
    return (chosen, "test") if chosen else (labelled, "all")


def check_groups(reports: list[Report], groups: tuple[str, ...], *, data: str | Path) -> None:
    """Refuse a --groups attribute that no report of ``data`` carries (it would give an empty table and
    no gaps, silently), naming the attributes the data does have."""
    have = {k for r in reports for k in r.attrs}
    if "age" in have:
        have.add("age_band")  # metrics.fairness.group_values: an alias of age's bands
    for g in groups:
        if g not in have:
            raise DpradError(
                f"--groups '{g}': no report in {data} has that attribute; it has: "
                f"{', '.join(sorted(have)) or 'none'}"
            )


def _read(data: str | Path, **read_kw: Any) -> tuple[list[Report], Any]:
    result, schema, _ = read_reports(data, **read_kw)
    return result.reports, schema


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    *,
    options: EvalOptions = EvalOptions(),
    progress: Callable[[int, int], None] | None = None,
    **read_kw: Any,
) -> dict[str, Any]:
    run = RunRecord.open(run_dir)
    reports, data_schema = _read(data, **read_kw)
    check_groups(reports, options.groups, data=data)
    chosen, split = select_reports(run, reports, options.split)
    if not chosen:
        raise DpradError(f"{data}: no labelled report to evaluate on")
    predictor = load_run(run, feature_cache=True)  # features training wrote to --feature-cache, if kept
    s = score(predictor, run, chosen, data_schema, options, progress=progress)
    patients = [r.patient_id for r in chosen]
    out: dict[str, Any] = {
        "run": str(run.path),
        "data": str(data),
        "split": split,
        "reports": len(chosen),
        "patients": len(set(patients)),
        "privacy": run.ledger.to_dict(),
        "thresholds": {
            "source": options.thresholds,
            "values": dict(zip(s.labels, s.thresholds.tolist(), strict=True)),
        },
        "notes": [
            *s.notes,
            *(
                ["an export holds no splits: every labelled report of DATA is evaluated"]
                if run.is_export
                else []
            ),
        ],
    }
    out |= evaluate_arrays(
        s.y,
        s.probs,
        s.mask,
        patients,
        labels=s.labels,
        thresholds=s.thresholds,
        n_boot=options.n_boot,
        random_state=options.random_state,
    )
    out["calibration"] = calibration_report(
        s.y, s.probs, mask=s.mask, n_bins=options.calibration_bins, labels=s.labels
    )
    out["subgroups"] = {a: _subgroups(s, a, options) for a in options.groups}
    return out


def _subgroups(s: Scored, attribute: str, options: EvalOptions) -> dict[str, Any]:
    groups = group_values(s.reports, attribute)
    table = {}
    for g in sorted(set(groups.tolist())):
        if g == "unknown":
            continue
        keep = groups == g
        sub = evaluate_arrays(
            s.y[keep],
            s.probs[keep],
            s.mask[keep],
            [r.patient_id for r, k in zip(s.reports, keep, strict=True) if k],
            labels=s.labels,
            thresholds=s.thresholds,
            n_boot=options.n_boot,
            random_state=options.random_state,
        )
        n = int(keep.sum())
        table[g] = {
            "reports": n,
            "small": n < options.min_group_size,
            **sub["headline"],
            "per_label_f1": {r["label"]: r["f1"] for r in sub["per_label"]},
            "per_label_auroc": {r["label"]: r["auroc"] for r in sub["per_label"]},
        }
    gaps = subgroup_gaps(s.y, binarize(s.probs, s.thresholds), groups, labels=s.labels, mask=s.mask)
    return {
        "groups": table,
        "unknown": int((groups == "unknown").sum()),
        "min_group_size": options.min_group_size,
        "gaps": gaps,
    }


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    data: str | Path,
    *,
    options: EvalOptions = EvalOptions(),
    **read_kw: Any,
) -> dict[str, Any]:
    """B vs A on the same reports, with the same patient resamples: differences with CIs and p-values."""
    ra, rb = RunRecord.open(run_a), RunRecord.open(run_b)
    pa, pb = load_run(ra, feature_cache=True), load_run(rb, feature_cache=True)
    if pa.schema.labels != pb.schema.labels:
        raise DpradError(
            f"{run_a} and {run_b} use different label schemas: nothing to compare label by label"
        )
    reports, data_schema = _read(data, **read_kw)
    chosen, split = select_reports(ra, reports, options.split)
    sa = score(pa, ra, chosen, data_schema, options)
    sb = score(pb, rb, chosen, data_schema, options)
    w = patient_resamples([r.patient_id for r in chosen], options.n_boot, random_state=options.random_state)
    ones = np.ones((1, len(chosen)), dtype=np.float32)
    res: dict[str, Any] = {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "data": str(data),
        "split": split,
        "reports": len(chosen),
        "bootstrap": {"resamples": options.n_boot, "unit": "patient"},
    }
    metrics = {}
    for name, s in (("a", sa), ("b", sb)):
        pred = binarize(s.probs, s.thresholds)
        point = weighted_label_metrics(s.y, s.probs, pred, ones, s.mask)
        boot = weighted_label_metrics(s.y, s.probs, pred, w, s.mask)
        metrics[name] = (point, headline(point), boot, headline(boot))
    (pa_l, pa_h, ba_l, ba_h), (pb_l, pb_h, bb_l, bb_h) = metrics["a"], metrics["b"]
    res["headline"] = {
        k: paired_difference(float(pa_h[k][0]), float(pb_h[k][0]), ba_h[k], bb_h[k]) for k in HEADLINE_METRICS
    }
    res["per_label"] = [
        {
            "label": lab,
            **{
                m: paired_difference(float(pa_l[m][0, j]), float(pb_l[m][0, j]), ba_l[m][:, j], bb_l[m][:, j])
                for m in ("f1", "recall", "auroc")
            },
        }
        for j, lab in enumerate(sa.labels)
    ]
    return res
