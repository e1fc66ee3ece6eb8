"""The report's attack sections beyond membership inference: attribute inference (does the model reveal a
removed finding better for training patients?) and model extraction (how many queries clone it?)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from dprad.report.collect import Run
from dprad.report.fmt import fmt_interval, fmt_num
from dprad.report.plots import COLORS, Plot, to_data_uri
from dprad.run.audit import AttributeRow

EXTRACTION_MEANS = (
    "A clone of a DP model is itself DP with respect to the training patients (post-processing): "
    "extraction threatens the hospital's model, its value and its work, not the patients. The keys' "
    "query budgets are what limit it."
)


def _attribute_row(r: Run, a: AttributeRow) -> dict[str, str]:
    flags = " (rare)" if a.rare else ""
    flags += " (critical)" if a.critical else ""
    return {
        "run": r.name,
        "ε (ledger)": r.eps_label,
        "label": f"{a.label}{flags}",
        "members": fmt_num(a.members, "d"),
        "non-members": fmt_num(a.nonmembers, "d"),
        "AUC [95% CI]": fmt_interval(a.auc),
        "TPR @ 1% FPR": fmt_interval(a.tpr_at_1pct_fpr),
        "control AUC (another split seed)": fmt_interval(a.control_auc) if a.control_auc else "not run",
        "note": a.note,
    }


def attribute_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    """Per audited run: the pooled result, then the rare and critical labels, then the rest."""
    out = []
    for r in runs:
        att = r.audit.attribute if r.audit else None
        if att is None:
            continue
        if att.pooled is not None:
            out.append(_attribute_row(r, att.pooled))
        rows = sorted(att.labels, key=lambda a: (not (a.rare or a.critical), a.label))
        out += [_attribute_row(r, a) for a in rows]
    return out


def extraction_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    out = []
    for r in runs:
        ex = r.audit.extraction if r.audit else None
        if ex is None:
            continue
        budgets = "; ".join(
            f"{k}: {fmt_num(total, 'd') if total else '∞'} total, {fmt_num(day, 'd') if day else '∞'} a day"
            for k, total, day in ex.key_budgets
        )
        for p in ex.points:
            out.append(
                {
                    "run": r.name,
                    "ε (ledger)": r.eps_label,
                    "queries (reports)": fmt_num(p.queries, "d"),
                    "clone agreement [95% CI]": fmt_interval(p.agreement),
                    "constant clone": fmt_num(ex.constant_agreement, ".3f"),
                    "clone weighted F1 [95% CI]": fmt_interval(p.clone_weighted_f1),
                    "evaluated on": ex.evaluated_on,
                    "client keys' budgets": budgets or "keys file not given",
                }
            )
    return out


def extraction_plot(runs: Sequence[Run]) -> Plot | None:
    """Clone agreement and clone weighted F1 against the number of queries, the keys' budgets marked."""
    mine = [r for r in runs if r.audit and r.audit.extraction and r.audit.extraction.points]
    if not mine:
        return None
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    for i, r in enumerate(mine):
        ex = r.audit.extraction if r.audit else None
        assert ex is not None
        n = np.array([p.queries for p in ex.points], dtype=float)
        for attr, style, what in (
            ("agreement", "-o", "agreement"),
            ("clone_weighted_f1", "--s", "weighted F1"),
        ):
            est = np.array([getattr(p, attr).estimate or np.nan for p in ex.points], dtype=float)
            lo = np.array([getattr(p, attr).low or np.nan for p in ex.points], dtype=float)
            hi = np.array([getattr(p, attr).high or np.nan for p in ex.points], dtype=float)
            yerr = np.nan_to_num(np.vstack([est - lo, hi - est]), nan=0.0)
            ax.errorbar(
                n,
                est,
                yerr=yerr,
                fmt=style,
                color=COLORS[i % len(COLORS)],
                ms=4,
                capsize=2,
                label=f"{r.name}: {what}",
            )
        for _, total, day in ex.key_budgets:
            for b in (total, day):
                if b:
                    ax.axvline(b, color="0.4", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("attacker queries (reports); dotted lines: client keys' budgets")
    ax.set_ylabel("clone vs served model")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Model extraction: a clone trained on the served answers", fontsize=10)
    return Plot(
        "plot-extraction",
        "Model extraction",
        EXTRACTION_MEANS,
        "clone agreement by queries",
        to_data_uri(fig),
    )
