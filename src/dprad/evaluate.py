"""Evaluate a run on data: per-label metrics with patient-level bootstrap CIs, calibration, subgroups,
domain transfer; and paired comparison of two runs on the same reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dprad.bootstrap import headline, interval, paired_difference, patient_weights, weighted_label_metrics
from dprad.calibration import apply_temperature, calibration_report, fit_temperature
from dprad.data.read import read_reports, read_run_split
from dprad.data.reports import Report, label_matrix
from dprad.data.schemas import UncertainPolicy
from dprad.errors import DpradError
from dprad.fairness import group_values, subgroup_gaps
from dprad.metrics import binarize
from dprad.predict import Predictor, load_run
from dprad.transfer import label_map

PER_LABEL_METRICS = ("precision", "recall", "specificity", "f1", "auroc", "auprc")
HEADLINE_METRICS = ("weighted_f1", "macro_f1", "micro_f1", "macro_auroc")


@dataclass(frozen=True)
class EvalOptions:
    thresholds: str = (
        "0.5"  # "0.5" or "val" (the per-label thresholds the run fitted on its validation split)
    )
    n_boot: int = 1000
    groups: tuple[str, ...] = ()
    min_group_size: int = 30
    temperature: bool = False  # fit one temperature on the run's validation split and apply it
    split: str = "auto"  # auto: the run's test split if the data holds it, else all reports; or test / all
    label_map: str | None = None
    calibration_bins: int = 10
    random_state: int = 0


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
    boot = weighted_label_metrics(
        y, probs, pred, patient_weights(patient_ids, n_boot, random_state=random_state), mask
    )
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


def score(
    predictor: Predictor,
    run_dir: Path,
    reports: list[Report],
    data_schema: Any,
    options: EvalOptions,
    run_config: dict[str, Any],
) -> Scored:
    notes: list[str] = []
    mapping = label_map(predictor.schema, data_schema, options.label_map)
    run_idx = [predictor.schema.labels.index(a) for a in mapping]
    data_labels = list(mapping.values())
    data_idx = [data_schema.labels.index(b) for b in data_labels]
    if predictor.schema.name != data_schema.name:
        notes.append(
            f"domain transfer: {len(mapping)} labels mapped from '{predictor.schema.name}' to '{data_schema.name}'"
        )
    probs = predictor.predict(reports).probs[:, run_idx]
    policy = UncertainPolicy(run_config["data"]["uncertain_policy"])
    y_all, m_all = label_matrix(reports, data_schema, policy=policy)
    y, mask = y_all[:, data_idx], m_all[:, data_idx]
    if options.temperature:
        val_reports, val_schema = read_run_split(run_dir, "val")
        vy, vm = label_matrix(val_reports, val_schema, policy=policy)
        vp = predictor.predict(val_reports).probs
        t = fit_temperature(vy, vp, mask=vm)
        probs = apply_temperature(probs, t)
        notes.append(f"temperature {t:.3f} fitted on the run's {len(val_reports)} validation reports")
    if options.thresholds == "val":
        fitted = json.loads((run_dir / "metrics.json").read_text()).get("thresholds")
        if not fitted:
            raise DpradError(f"{run_dir}: --thresholds val, but the run has no validation thresholds")
        thresholds = np.asarray(fitted["values"], dtype=float)[run_idx]
        notes.append(f"thresholds: per label, {fitted['rule']}, fitted on the run's validation split")
    elif options.thresholds == "0.5":
        thresholds = np.full(len(run_idx), 0.5)
    else:
        raise DpradError(f"--thresholds '{options.thresholds}' must be 0.5 or val")
    return Scored(reports, data_labels, y, mask, probs, thresholds, notes)


def select_reports(run_dir: Path, reports: list[Report], split: str) -> tuple[list[Report], str]:
    labelled = [r for r in reports if r.labels is not None]
    if split == "all":
        return labelled, "all"
    test_ids = set(json.loads((run_dir / "splits.json").read_text())["test"])
    chosen = [r for r in labelled if r.id in test_ids]
    if split == "test":
        if not chosen:
            raise DpradError(
                f"--split test: none of the run's test reports is in this data ({run_dir}/splits.json)"
            )
        return chosen, "test"
    if split != "auto":
        raise DpradError(f"--split '{split}' must be auto, test or all")
    return (chosen, "test") if chosen else (labelled, "all")


def _read(data: str | Path, **read_kw: Any) -> tuple[list[Report], Any]:
    result, schema, _ = read_reports(data, **read_kw)
    return result.reports, schema


def evaluate_run(
    run_dir: str | Path, data: str | Path, *, options: EvalOptions = EvalOptions(), **read_kw: Any
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    predictor = load_run(run_dir)
    run_config = json.loads((run_dir / "config.json").read_text())
    reports, data_schema = _read(data, **read_kw)
    chosen, split = select_reports(run_dir, reports, options.split)
    if not chosen:
        raise DpradError(f"{data}: no labelled report to evaluate on")
    s = score(predictor, run_dir, chosen, data_schema, options, run_config)
    patients = [r.patient_id for r in chosen]
    out: dict[str, Any] = {
        "run": str(run_dir),
        "data": str(data),
        "split": split,
        "reports": len(chosen),
        "patients": len(set(patients)),
        "privacy": json.loads((run_dir / "privacy.json").read_text()),
        "thresholds": {
            "source": options.thresholds,
            "values": dict(zip(s.labels, s.thresholds.tolist(), strict=True)),
        },
        "notes": s.notes,
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
    run_a, run_b = Path(run_a), Path(run_b)
    pa, pb = load_run(run_a), load_run(run_b)
    if pa.schema.labels != pb.schema.labels:
        raise DpradError(
            f"{run_a} and {run_b} use different label schemas: nothing to compare label by label"
        )
    reports, data_schema = _read(data, **read_kw)
    chosen, split = select_reports(run_a, reports, options.split)
    ca = json.loads((run_a / "config.json").read_text())
    cb = json.loads((run_b / "config.json").read_text())
    sa = score(pa, run_a, chosen, data_schema, options, ca)
    sb = score(pb, run_b, chosen, data_schema, options, cb)
    w = patient_weights([r.patient_id for r in chosen], options.n_boot, random_state=options.random_state)
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
