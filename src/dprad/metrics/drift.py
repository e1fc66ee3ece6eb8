"""Drift statistics: pure functions of scores, texts and labels (no run, no model, no files).

A *reference* is a JSON-able dict of statistics of scored reports (numbers only, never text): per-label
scores, predicted prevalence at the decision thresholds, report length, vocabulary coverage and, where the
reports had labels, per-label sensitivity with confidence intervals (:func:`reference_from_arrays`,
:func:`reference_of_reports`). :func:`compare` compares two of them per label (population stability index
and a two-sample Kolmogorov-Smirnov test of the scores, predicted prevalence with a Newcombe CI of the
difference), on text length and on out-of-vocabulary rate. With labels, a rare or critical label alerts when
its sensitivity fell below the reference by more than the CI of the drop. p-values and CIs used for
alerting are Bonferroni-adjusted over the labels tested, so that a clean comparison does not page someone
by chance. Reading and writing a run's reference is :mod:`dprad.serve.monitor`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from scipy import stats

from dprad.data.reports import Report, label_matrix
from dprad.data.schemas import LabelSchema, UncertainPolicy
from dprad.errors import DpradError

REFERENCE_FORMAT = "dprad-monitor-reference/1"
_WORD = re.compile(r"[a-z]+")
OK, WARNING, ALERT = "ok", "warning", "alert"


# ---------------------------------------------------------------- options and typed results


@dataclass(frozen=True)
class MonitorOptions:
    alpha: float = 0.05  # family-wise error rate of the alerting tests (Bonferroni over labels)
    psi_warning: float = 0.10  # population stability index: 0.1-0.25 moderate shift
    psi_alert: float = 0.25  # >= 0.25 major shift
    bins: int = 10  # PSI bins: quantiles of the reference
    min_prevalence_shift: float = 0.02  # absolute: smaller significant shifts are not worth a page
    rare_prevalence: float = 0.05  # a label rarer than this in the reference is "rare"
    min_positives: int = 5  # sensitivity is checked only with at least this many positives on both sides
    level: float = 0.95  # reported confidence intervals


@dataclass(frozen=True)
class Proportion:
    estimate: float
    ci_low: float
    ci_high: float
    k: int
    n: int


@dataclass(frozen=True)
class LabelDrift:
    label: str
    psi: float
    ks_stat: float
    ks_p: float
    ks_p_adj: float  # Bonferroni over the score tests
    score_severity: str
    reference_prevalence: Proportion  # predicted positive at the run's threshold
    new_prevalence: Proportion
    prevalence_diff: float  # new - reference
    prevalence_diff_low: float  # CI at the reported level (Newcombe)
    prevalence_diff_high: float
    prevalence_severity: str


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    reference_mean: float
    new_mean: float
    psi: float
    ks_stat: float
    ks_p: float
    ks_p_adj: float
    severity: str


@dataclass(frozen=True)
class SensitivityCheck:
    label: str
    rare: bool
    critical: bool
    reference: Proportion | None
    new: Proportion
    drop: float | None  # reference - new
    drop_low: float | None  # CI of the drop at the alerting level (Bonferroni-adjusted)
    drop_high: float | None
    checked: bool  # rare or critical with enough positives on both sides
    severity: str
    note: str = ""


@dataclass(frozen=True)
class Alert:
    severity: str  # warning | alert
    kind: str  # score_shift | prevalence_shift | length_shift | oov_shift | sensitivity_drop
    label: str | None
    message: str


@dataclass(frozen=True)
class MonitorResult:
    run: str
    data: str
    reference_source: str
    n_reference: int
    n_new: int
    threshold_rule: str
    labels: tuple[LabelDrift, ...]
    length: FeatureDrift
    oov: FeatureDrift
    sensitivity: tuple[SensitivityCheck, ...]
    alerts: tuple[Alert, ...]
    notes: tuple[str, ...] = ()
    options: MonitorOptions = field(default_factory=MonitorOptions)

    @property
    def alerted(self) -> bool:
        return any(a.severity == ALERT for a in self.alerts)

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self)) | {"alerted": self.alerted}


def _finite(obj: Any) -> Any:
    """NaN / inf become None so that the result is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------- pure statistics


def wilson(k: int, n: int, *, level: float = 0.95) -> Proportion:
    """Wilson score interval for k successes out of n."""
    if n == 0:
        return Proportion(float("nan"), float("nan"), float("nan"), k, n)
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Proportion(p, max(0.0, centre - half), min(1.0, centre + half), k, n)


def newcombe_diff(a: Proportion, b: Proportion) -> tuple[float, float, float]:
    """b - a with Newcombe's hybrid score interval, built from the two Wilson intervals' level."""
    d = b.estimate - a.estimate
    low = d - math.sqrt((b.estimate - b.ci_low) ** 2 + (a.ci_high - a.estimate) ** 2)
    high = d + math.sqrt((b.ci_high - b.estimate) ** 2 + (a.estimate - a.ci_low) ** 2)
    return d, low, high


def psi(reference: np.ndarray, new: np.ndarray, *, bins: int = 10, floor: float = 1e-4) -> float:
    """Population stability index of ``new`` against ``reference``, on the reference's quantile bins."""
    reference, new = np.asarray(reference, dtype=float), np.asarray(new, dtype=float)
    if len(reference) == 0 or len(new) == 0:
        return float("nan")
    inner = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_p = np.bincount(np.searchsorted(inner, reference, side="right"), minlength=len(inner) + 1)
    new_p = np.bincount(np.searchsorted(inner, new, side="right"), minlength=len(inner) + 1)
    r = np.maximum(ref_p / len(reference), floor)
    q = np.maximum(new_p / len(new), floor)
    return float(np.sum((q - r) * np.log(q / r)))


def ks(reference: np.ndarray, new: np.ndarray) -> tuple[float, float]:
    if len(reference) == 0 or len(new) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():  # ties: scipy falls back from the exact to the asymptotic p-value
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ks_2samp(reference, new)
    return float(res.statistic), float(res.pvalue)


def text_features(texts: Sequence[str], vocab: Collection[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per report: word count ``(N,)`` and out-of-vocabulary rate ``(N,)``.

    A word (a run of letters, lower-cased) is out of vocabulary when the encoder's tokenizer has no
    whole-word entry for it, so it is split into pieces or unknown. NaN for a report with no words.
    """
    lengths = np.zeros(len(texts), dtype=np.int64)
    oov = np.full(len(texts), np.nan)
    for i, text in enumerate(texts):
        lengths[i] = len(text.split())
        words = _WORD.findall(text.lower())
        if words:
            oov[i] = sum(w not in vocab for w in words) / len(words)
    return lengths, oov


def tokenizer_vocab(tokenizer: Any) -> frozenset[str]:
    return frozenset(w.lower().removeprefix("Ġ").removeprefix("▁") for w in tokenizer.get_vocab())


# ---------------------------------------------------------------- reference statistics


def reference_from_arrays(
    probs: np.ndarray,
    lengths: np.ndarray,
    oov: np.ndarray,
    *,
    labels: Sequence[str],
    critical: Sequence[str],
    thresholds: np.ndarray,
    threshold_rule: str,
    source: str,
    y: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """The reference statistics as a JSON-able dict: numbers only, never text.

    ``probs`` is ``(N, L)``; ``y`` / ``mask`` ``(N, L)`` are given when the reports had labels.
    """
    n, k = probs.shape
    if len(labels) != k or len(thresholds) != k:
        raise ValueError(f"probs has {k} labels, labels {len(labels)}, thresholds {len(thresholds)}")
    pred = probs >= thresholds[None, :]  # (N, L)
    ref: dict[str, Any] = {
        "format": REFERENCE_FORMAT,
        "source": source,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n": int(n),
        "labels": list(labels),
        "critical": list(critical),
        "thresholds": [float(t) for t in thresholds],
        "threshold_rule": threshold_rule,
        "scores": {lab: np.round(probs[:, j], 6).tolist() for j, lab in enumerate(labels)},
        "predicted_prevalence": {
            lab: asdict(wilson(int(pred[:, j].sum()), n)) for j, lab in enumerate(labels)
        },
        "length_words": {
            "values": [int(x) for x in lengths],
            "mean": float(np.mean(lengths)) if n else None,
            "quantiles": _quantiles(lengths),
        },
        "oov_rate": {
            "values": [None if math.isnan(x) else round(float(x), 6) for x in oov],
            "mean": float(np.nanmean(oov)) if np.isfinite(oov).any() else None,
            "quantiles": _quantiles(oov[np.isfinite(oov)]),
        },
        "label_prevalence": None,
        "sensitivity": None,
    }
    if y is not None and mask is not None:
        ref["label_prevalence"] = {
            lab: float(y[mask[:, j] > 0, j].mean()) if (mask[:, j] > 0).any() else None
            for j, lab in enumerate(labels)
        }
        ref["sensitivity"] = {
            lab: asdict(_sensitivity(y[:, j], mask[:, j], pred[:, j])) for j, lab in enumerate(labels)
        }
    return ref


def _quantiles(x: np.ndarray) -> dict[str, float] | None:
    if len(x) == 0:
        return None
    qs = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    return {f"q{int(q * 100):02d}": float(v) for q, v in zip(qs, np.quantile(x, qs), strict=True)}


def _sensitivity(y: np.ndarray, mask: np.ndarray, pred: np.ndarray, *, level: float = 0.95) -> Proportion:
    pos = (y > 0.5) & (mask > 0)
    return wilson(int((pred & pos).sum()), int(pos.sum()), level=level)


def labels_of(
    reports: Sequence[Report], schema: LabelSchema, policy: UncertainPolicy | str
) -> tuple[np.ndarray, np.ndarray] | None:
    """Targets and mask ``(N, L)`` of the reports under ``policy``; None when no report has labels."""
    if not any(r.labels is not None for r in reports):
        return None
    return label_matrix(reports, schema, policy=UncertainPolicy(policy))


def reference_statistics(
    texts: Sequence[str],
    probs: np.ndarray,
    *,
    labels: Sequence[str],
    critical: Sequence[str],
    thresholds: np.ndarray,
    threshold_rule: str,
    vocab: Collection[str],
    source: str,
    y: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`reference_from_arrays` of report texts: their word counts and OOV rates under ``vocab``."""
    lengths, oov = text_features(texts, vocab)
    return reference_from_arrays(
        probs,
        lengths,
        oov,
        labels=labels,
        critical=critical,
        thresholds=thresholds,
        threshold_rule=threshold_rule,
        source=source,
        y=y,
        mask=mask,
    )


def reference_of_reports(
    reports: Sequence[Report],
    probs: np.ndarray,
    *,
    schema: LabelSchema,
    policy: UncertainPolicy | str,
    thresholds: np.ndarray,
    threshold_rule: str,
    vocab: Collection[str],
    source: str = "test split",
) -> dict[str, Any]:
    """The reference of scored reports (``probs`` ``(N, L)``), with their labels under ``policy`` when
    they have any: what a run stores as ``reference.json``. Numbers only, never text."""
    if probs.shape != (len(reports), len(schema)):
        raise DpradError(
            f"reference statistics: probs has shape {probs.shape}, expected ({len(reports)}, {len(schema)})"
        )
    lab = labels_of(reports, schema, policy)
    return reference_statistics(
        [r.text for r in reports],
        probs,
        labels=schema.labels,
        critical=schema.critical,
        thresholds=thresholds,
        threshold_rule=threshold_rule,
        vocab=vocab,
        source=source,
        y=None if lab is None else lab[0],
        mask=None if lab is None else lab[1],
    )


# ---------------------------------------------------------------- the comparison


def compare(
    reference: dict[str, Any],
    new: dict[str, Any],
    *,
    run: str = "",
    data: str = "",
    options: MonitorOptions = MonitorOptions(),
    notes: Sequence[str] = (),
) -> MonitorResult:
    """Compare two statistics dicts (both from :func:`reference_from_arrays`) and decide the alerts."""
    labels = list(reference["labels"])
    if list(new["labels"]) != labels:
        raise DpradError("monitor: the new data's labels do not match the reference's")
    o = options
    n_tests = len(labels) + 2  # score KS per label, length, OOV
    alerts: list[Alert] = []
    drifts: list[LabelDrift] = []
    for lab in labels:
        drift, label_alerts = _label_drift(lab, reference, new, n_tests, o)
        drifts.append(drift)
        alerts += label_alerts
    length = _feature("length_words", reference, new, n_tests, o)
    oov = _feature("oov_rate", reference, new, n_tests, o)
    for f, kind, what in (
        (length, "length_shift", "report length (words)"),
        (oov, "oov_shift", "out-of-vocabulary rate"),
    ):
        if f.severity != OK:
            alerts.append(
                Alert(
                    f.severity,
                    kind,
                    None,
                    f"{what}: mean {f.reference_mean:.3g} -> {f.new_mean:.3g} (PSI {f.psi:.2f}, KS p {f.ks_p_adj:.2g} adjusted)",
                )
            )
    checks, more_notes = _sensitivity_checks(reference, new, labels, o)
    alerts += [
        Alert(
            ALERT,
            "sensitivity_drop",
            c.label,
            f"{c.label}: sensitivity {c.reference.estimate:.3f} -> {c.new.estimate:.3f} "
            f"(drop {c.drop:.3f}, CI {c.drop_low:.3f} to {c.drop_high:.3f})",
        )
        for c in checks
        if c.severity == ALERT and c.reference is not None
    ]
    return MonitorResult(
        run=run,
        data=data,
        reference_source=str(reference.get("source", "")),
        n_reference=int(reference["n"]),
        n_new=int(new["n"]),
        threshold_rule=str(reference.get("threshold_rule", "")),
        labels=tuple(drifts),
        length=length,
        oov=oov,
        sensitivity=tuple(checks),
        alerts=tuple(alerts),
        notes=tuple(notes) + tuple(more_notes),
        options=o,
    )


def _label_drift(
    lab: str, reference: dict[str, Any], new: dict[str, Any], n_tests: int, o: MonitorOptions
) -> tuple[LabelDrift, list[Alert]]:
    """One label's score shift (PSI, KS) and predicted-prevalence shift (Newcombe), and their alerts."""
    alerts: list[Alert] = []
    z_adj_level = 1 - o.alpha / len(reference["labels"])
    r_scores = np.asarray(reference["scores"][lab], dtype=float)
    n_scores = np.asarray(new["scores"][lab], dtype=float)
    p = psi(r_scores, n_scores, bins=o.bins)
    stat, pval = ks(r_scores, n_scores)
    p_adj = min(1.0, pval * n_tests) if not math.isnan(pval) else float("nan")
    score_sev = _shift_severity(p, p_adj, o)
    if score_sev != OK:
        alerts.append(
            Alert(
                score_sev,
                "score_shift",
                lab,
                f"{lab}: score distribution shifted (PSI {p:.2f}, KS p {p_adj:.2g} adjusted)",
            )
        )
    rp, np_ = (
        Proportion(**reference["predicted_prevalence"][lab]),
        Proportion(**new["predicted_prevalence"][lab]),
    )
    rp_r, np_r = wilson(rp.k, rp.n, level=o.level), wilson(np_.k, np_.n, level=o.level)
    diff, low, high = newcombe_diff(rp_r, np_r)
    _, a_low, a_high = newcombe_diff(
        wilson(rp.k, rp.n, level=z_adj_level), wilson(np_.k, np_.n, level=z_adj_level)
    )
    prev_sev = ALERT if (a_low > 0 or a_high < 0) and abs(diff) >= o.min_prevalence_shift else OK
    if prev_sev != OK:
        alerts.append(
            Alert(
                ALERT,
                "prevalence_shift",
                lab,
                f"{lab}: predicted prevalence {rp.estimate:.3f} -> {np_.estimate:.3f} "
                f"(difference {diff:+.3f}, {o.level:.0%} CI {low:+.3f} to {high:+.3f})",
            )
        )
    drift = LabelDrift(lab, p, stat, pval, p_adj, score_sev, rp_r, np_r, diff, low, high, prev_sev)
    return drift, alerts


def _shift_severity(p: float, p_adj: float, o: MonitorOptions) -> str:
    if math.isnan(p) or math.isnan(p_adj) or p_adj >= o.alpha:
        return OK
    if p >= o.psi_alert:
        return ALERT
    return WARNING if p >= o.psi_warning else OK


def _values(stat: dict[str, Any]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in stat["values"]], dtype=float)


def _feature(
    name: str, reference: dict[str, Any], new: dict[str, Any], n_tests: int, o: MonitorOptions
) -> FeatureDrift:
    r = _values(reference[name])
    n = _values(new[name])
    r, n = r[np.isfinite(r)], n[np.isfinite(n)]
    p = psi(r, n, bins=o.bins)
    stat, pval = ks(r, n)
    p_adj = min(1.0, pval * n_tests) if not math.isnan(pval) else float("nan")
    mean_r = float(r.mean()) if len(r) else float("nan")
    mean_n = float(n.mean()) if len(n) else float("nan")
    return FeatureDrift(name, mean_r, mean_n, p, stat, pval, p_adj, _shift_severity(p, p_adj, o))


def _sensitivity_checks(
    reference: dict[str, Any], new: dict[str, Any], labels: Sequence[str], o: MonitorOptions
) -> tuple[list[SensitivityCheck], list[str]]:
    if new.get("sensitivity") is None:
        return [], []
    notes: list[str] = []
    ref_sens = reference.get("sensitivity")
    if ref_sens is None:
        notes.append("the reference has no labels (live traffic): sensitivity is reported, not compared")
    critical = set(reference.get("critical") or ())
    prevalence = reference.get("label_prevalence") or {
        lab: reference["predicted_prevalence"][lab]["estimate"] for lab in labels
    }
    new_props = {lab: Proportion(**new["sensitivity"][lab]) for lab in labels}
    ref_props = {lab: Proportion(**ref_sens[lab]) for lab in labels} if ref_sens else {}
    rare = {lab: prevalence.get(lab) is not None and prevalence[lab] < o.rare_prevalence for lab in labels}
    watched = [
        lab
        for lab in labels
        if (rare[lab] or lab in critical)
        and lab in ref_props
        and min(ref_props[lab].n, new_props[lab].n) >= o.min_positives
    ]
    level = 1 - o.alpha / max(1, len(watched))
    out: list[SensitivityCheck] = []
    for lab in labels:
        nw = new_props[lab]
        rf = ref_props.get(lab)
        if rf is None:
            out.append(
                SensitivityCheck(lab, rare[lab], lab in critical, None, nw, None, None, None, False, OK)
            )
            continue
        checked = lab in watched
        note = ""
        if (rare[lab] or lab in critical) and not checked:
            note = f"fewer than {o.min_positives} positives (reference {rf.n}, new {nw.n}): not checked"
        drop, low, high = newcombe_diff(
            wilson(nw.k, nw.n, level=level), wilson(rf.k, rf.n, level=level)
        )  # reference - new
        sev = ALERT if checked and low > 0 else OK
        out.append(
            SensitivityCheck(lab, rare[lab], lab in critical, rf, nw, drop, low, high, checked, sev, note)
        )
    return out, notes
