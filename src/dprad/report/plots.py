"""The report's figures, drawn with matplotlib's object API on an Agg canvas (no pyplot, no global state).

Every figure plots numbers read from run directories (:mod:`dprad.report.collect`); each function returns
``None`` when the runs hold nothing to draw, and the page then says so.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import FuncFormatter

from dprad.report.collect import Run
from dprad.run.results import Interval

DPI = 100
CMAP = colormaps["viridis"].with_extremes(bad="#dddddd")  # a copy: the registry's map is untouched
COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)


@dataclass(frozen=True)
class Plot:
    id: str  # the <img> element's id in the page
    title: str
    caption: str
    alt: str
    data_uri: str  # data:image/png;base64,...
    key: tuple[tuple[str, str], ...] = ()  # (short column label, run name) where the figure uses short labels


def to_data_uri(fig: Figure) -> str:
    FigureCanvasAgg(fig)  # attaches an Agg canvas to this figure only
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def run_order(run: Run) -> tuple[str, str, int, float, int, str]:
    """Sort key: dataset, series, private runs by increasing eps, non-private last."""
    return (run.dataset, run.series, int(not run.private), run.epsilon, run.seed or 0, run.name)


PLAIN = FuncFormatter(lambda v, _pos: f"{v:g}")  # 0.1, 1, 10 instead of 10^-1, 10^0, 10^1


def _log_eps_axis(ax: Axes, eps: Sequence[float]) -> None:
    """Log-scale eps axis spanning the private runs (0.01 to 100 when there are none), plain numbers."""
    ax.set_xscale("log")
    ax.set_xlim(*((min(eps) / 3, max(eps) * 3) if eps else (0.01, 100.0)))
    ax.xaxis.set_major_formatter(PLAIN)


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _err(iv: Interval) -> tuple[float, float]:
    assert iv.estimate is not None and iv.low is not None and iv.high is not None
    return max(iv.estimate - iv.low, 0.0), max(iv.high - iv.estimate, 0.0)


def _datasets(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(r.dataset for r in sorted(runs, key=run_order)))


# ---------------------------------------------------------------------------------------------------
# privacy-utility curve


def privacy_utility(runs: Sequence[Run], *, metric: str = "weighted_f1") -> Plot | None:
    """Weighted F1 (95% CI band) against spent eps on a log axis, one line per model · mode, one panel per
    training dataset; non-private runs are horizontal reference lines (full fine-tuning dotted)."""
    have = [r for r in runs if r.evaluation is not None and r.evaluation.metric(metric).known]
    if not have:
        return None
    fig, no_ci = utility_figure(have, metric)
    caption = (
        "Points: private runs at the ε they spent, with 95% patient-level bootstrap intervals (bars and band). "
        "Dashed lines: non-private runs of the same model and mode (dotted: full fine-tuning), with their "
        "interval shaded. The y axis spans the plotted values and their intervals, not 0 to 1. Each run's F1 "
        "is at the thresholds its row of the headline table names."
    )
    if no_ci:
        caption += (
            " Hollow points and lines marked 'no CI' come from metrics.json at the shipped thresholds "
            "(no evaluation.json)."
        )
    if any(not r.at_shipped for r in have):
        caption += " Some runs are NOT at the thresholds they ship: " + "; ".join(
            f"{r.name} {r.at}" for r in have if not r.at_shipped
        )
    return Plot(
        "plot-privacy-utility",
        "Privacy-utility curve",
        caption,
        "weighted F1 against epsilon for every run",
        to_data_uri(fig),
    )


def utility_figure(have: Sequence[Run], metric: str = "weighted_f1") -> tuple[Figure, bool]:
    """The privacy-utility figure of runs that all have ``metric``, and whether any of them had no CI. Each
    panel's y axis spans its runs' values and intervals, with a margin."""
    datasets = _datasets(have)
    fig = Figure(figsize=(9.5, 4.6 * len(datasets)))
    axes = fig.subplots(len(datasets), 1, squeeze=False)[:, 0]
    series = list(dict.fromkeys(r.series for r in sorted(have, key=run_order)))
    no_ci = False
    for ax, dataset in zip(axes, datasets, strict=True):
        mine = sorted((r for r in have if r.dataset == dataset), key=run_order)
        private = [r for r in mine if r.private and math.isfinite(r.epsilon)]
        _log_eps_axis(ax, [r.epsilon for r in private])
        for s in series:
            color = _color(series.index(s))
            pts = [r for r in private if r.series == s]
            if pts:
                no_ci |= _private_series(ax, pts, metric, color=color, label=s)
            for r in (r for r in mine if not r.private and r.series == s):
                no_ci |= _reference_line(ax, r, metric, color=color, label=s)
        ax.set_ylim(*y_range([r.evaluation.metric(metric) for r in mine if r.evaluation]))
        ax.set_xlabel("ε spent (log scale; smaller = stronger privacy)")
        ax.set_ylabel("weighted F1 on the test split")
        tested = sorted({Path(r.evaluation.data).name for r in mine if r.evaluation and r.evaluation.data})
        where = ", ".join(tested) if tested and tested != [dataset] else "its test split"
        ax.set_title(f"Privacy-utility trade-off: trained on {dataset}, tested on {where}", fontsize=11)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(loc="best", fontsize=8, framealpha=0.9)  # never over a data point
    return fig, no_ci


def y_range(values: Sequence[Interval]) -> tuple[float, float]:
    """A 0-to-1 metric's axis fitted to the estimates and their intervals: a margin of 8% of their spread
    (at least 0.02) either side, kept within 0 and 1 but for a sliver above 1 so that a point at 1 shows."""
    ys = [v for iv in values for v in (iv.estimate, iv.low, iv.high) if v is not None and math.isfinite(v)]
    if not ys:
        return 0.0, 1.0
    lo, hi = min(ys), max(ys)
    margin = max(0.08 * (hi - lo), 0.02)
    return max(lo - margin, 0.0), min(hi + margin, 1.0 + margin / 2)


def _private_series(ax: Axes, pts: Sequence[Run], metric: str, *, color: str, label: str) -> bool:
    """One model · mode's private runs: a line through the mean at each eps, every run's own point and CI
    (hollow without one). Returns whether any run had no CI."""
    xs = np.array([r.epsilon for r in pts])
    ivs = [r.evaluation.metric(metric) for r in pts if r.evaluation]
    ys = np.array([iv.estimate for iv in ivs], dtype=float)
    # several runs at one target eps (seeds): the line and band follow their mean at each eps
    levels = np.unique(np.round(xs, 6))
    at = [np.isclose(np.round(xs, 6), e) for e in levels]
    many = any(m.sum() > 1 for m in at)
    ax.plot(
        levels,
        [ys[m].mean() for m in at],
        "-",
        color=color,
        lw=1.8,
        label=f"{label} (DP{', mean over runs' if many else ''})",
    )
    has_ci = np.array([iv.has_ci for iv in ivs], dtype=bool)
    with_ci = [(x, iv) for x, iv in zip(xs, ivs, strict=True) if iv.has_ci]
    if with_ci:
        cx = xs[has_ci]
        band = [
            (
                e,
                np.mean([iv.low for x, iv in with_ci if np.isclose(x, e)]),
                np.mean([iv.high for x, iv in with_ci if np.isclose(x, e)]),
            )
            for e in np.unique(np.round(cx, 6))
        ]
        ax.fill_between(
            [b[0] for b in band], [b[1] for b in band], [b[2] for b in band], color=color, alpha=0.18, lw=0
        )
        ax.errorbar(
            cx,
            ys[has_ci],
            yerr=np.array([_err(iv) for _, iv in with_ci]).T,
            fmt="o",
            color=color,
            capsize=3,
            ms=6,
        )
    if not has_ci.all():
        ax.plot(xs[~has_ci], ys[~has_ci], "o", mfc="white", color=color, ms=7)
    return not has_ci.all()


def _reference_line(ax: Axes, r: Run, metric: str, *, color: str, label: str) -> bool:
    """A non-private run as a horizontal line (dotted: full fine-tuning), its CI shaded. Returns whether
    it had no CI."""
    assert r.evaluation is not None
    iv = r.evaluation.metric(metric)
    assert iv.estimate is not None  # only runs with a known value are plotted
    ax.axhline(
        iv.estimate,
        color=color,
        ls=":" if r.family == "full" else "--",
        lw=1.6,
        label=f"{label}, non-private{'' if iv.has_ci else ' (no CI)'}: {iv.estimate:.3f}",
    )
    if iv.low is not None and iv.high is not None and iv.has_ci:
        ax.axhspan(iv.low, iv.high, color=color, alpha=0.07, lw=0)
    return not iv.has_ci


# ---------------------------------------------------------------------------------------------------
# per-label heat maps


def run_keys(runs: Sequence[Run]) -> dict[str, str]:
    """Short column labels for figures, one per run in report order: R1, R2, ... (run name -> key); the
    page prints the key beside the figure."""
    return {r.name: f"R{i}" for i, r in enumerate(sorted(runs, key=run_order), start=1)}


def _column_label(r: Run, key: str) -> str:
    return f"{key}\n{'ε = ∞' if not r.private else f'ε = {r.epsilon:.3g}'}"


def label_heatmap(runs: Sequence[Run], dataset: str, index: int) -> Plot | None:
    """Per-label F1 and recall for every run on one dataset (columns by eps, labelled R1, R2, ... with a
    key to the run names), rare labels marked."""
    made = label_heatmap_figure(runs, dataset)
    if made is None:
        return None
    fig, key = made
    return Plot(
        f"plot-labels-{index}",
        f"Per-label F1 and recall: {dataset}",
        "Columns: the runs named in the key below the figure. n = positive test reports (the smallest across "
        "these runs). Labels marked ★rare (red) have fewer than 20 positives: their F1 and recall rest on "
        "very few reports and their intervals are wide. Grey: no value (no positive report, or not evaluated).",
        f"heat map of per-label F1 and recall on {dataset}",
        to_data_uri(fig),
        key,
    )


def label_heatmap_figure(
    runs: Sequence[Run], dataset: str
) -> tuple[Figure, tuple[tuple[str, str], ...]] | None:
    """The heat map of :func:`label_heatmap` and its key, (column label, run name) per column."""
    keys = run_keys(runs)
    mine = sorted((r for r in runs if r.dataset == dataset and r.evaluation is not None), key=run_order)
    mine = [r for r in mine if r.evaluation and r.evaluation.per_label]
    if not mine:
        return None
    labels = list(dict.fromkeys(lr.label for r in mine if r.evaluation for lr in r.evaluation.per_label))
    support: dict[str, int] = {}
    for r in mine:
        assert r.evaluation is not None
        for lr in r.evaluation.per_label:
            if lr.support is not None:
                support[lr.label] = min(support.get(lr.label, lr.support), lr.support)
    ncol = len(mine)
    fig = Figure(figsize=(min(3.2 + 2 * 0.62 * ncol, 13.5) + 2.2, 1.6 + 0.34 * len(labels)))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric in zip(axes, ("f1", "recall"), strict=True):
        im = _heat_panel(ax, mine, labels, metric)
        ax.set_xticks(range(ncol))
        ax.set_xticklabels([_column_label(r, keys[r.name]) for r in mine], fontsize=7)
        ax.set_title("F1" if metric == "f1" else "recall (sensitivity)", fontsize=11)
    _label_ticks(axes[0], labels, support, {c for r in mine for c in r.critical})
    fig.colorbar(im, ax=list(axes), shrink=0.6, pad=0.02)
    fig.suptitle(f"Per-label results on {dataset} (columns: increasing ε, non-private last)", fontsize=11)
    return fig, tuple((keys[r.name], r.name) for r in mine)


def _heat_panel(ax: Axes, mine: Sequence[Run], labels: list[str], metric: str) -> AxesImage:
    """One panel: a label x run grid of ``metric`` with its values written in (up to 16 columns)."""
    ncol = len(mine)
    grid = np.full((len(labels), ncol), np.nan)
    for j, r in enumerate(mine):
        assert r.evaluation is not None
        for lr in r.evaluation.per_label:
            value = getattr(lr, metric).estimate
            if value is not None:
                grid[labels.index(lr.label), j] = value
    im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap=CMAP, aspect="auto")
    for i in range(len(labels)):
        for j in range(ncol):
            if not math.isnan(grid[i, j]) and ncol <= 16:
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if grid[i, j] < 0.6 else "black",
                )
    return im


def _label_ticks(ax: Axes, labels: list[str], support: dict[str, int], critical: set[str]) -> None:
    """The labels down the left: critical and n marked, rare ones in bold red."""
    ticks = []
    for lab in labels:
        n = support.get(lab)
        mark = " ★rare" if n is not None and n < 20 else ""
        ticks.append(
            f"{lab}{' (critical)' if lab in critical else ''}  n={n if n is not None else '?'}{mark}"
        )
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(ticks, fontsize=8)
    for tick, lab in zip(ax.get_yticklabels(), labels, strict=True):
        n = support.get(lab)
        if n is not None and n < 20:
            tick.set_color("#b00020")
            tick.set_fontweight("bold")


# ---------------------------------------------------------------------------------------------------
# reliability diagrams


def reliability(runs: Sequence[Run]) -> Plot | None:
    """Pooled reliability diagram of every run with an evaluation.json calibration section."""
    mine = [
        r
        for r in sorted(runs, key=run_order)
        if r.evaluation and r.evaluation.calibration and r.evaluation.calibration.bins
    ]
    if not mine:
        return None
    ncols = min(4, len(mine))
    nrows = math.ceil(len(mine) / ncols)
    fig = Figure(figsize=(3.1 * ncols, 3.1 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, r in zip(axes, mine, strict=False):
        assert r.evaluation is not None and r.evaluation.calibration is not None
        cal = r.evaluation.calibration
        x = [b.mean_predicted for b in cal.bins]
        y = [b.observed_rate for b in cal.bins]
        ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--")
        ax.plot(x, y, "o-", color=COLORS[0], ms=4, lw=1.4)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ece = "?" if cal.pooled_ece is None else f"{cal.pooled_ece:.3f}"
        ax.set_title(f"{r.name}\n{r.mode}, ε = {r.eps_label.split(' ')[0]}, ECE {ece}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("predicted probability", fontsize=7)
        ax.set_ylabel("observed rate", fontsize=7)
    for ax in axes[len(mine) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return Plot(
        "plot-reliability",
        "Reliability diagrams",
        "All labels pooled, equal-mass bins as the evaluation wrote them. On the dashed diagonal a predicted "
        "30% means 30% of such reports are positive; below it the model is over-confident.",
        "reliability diagram per run",
        to_data_uri(fig),
    )


# ---------------------------------------------------------------------------------------------------
# subgroups


def subgroup_gap(runs: Sequence[Run]) -> Plot | None:
    """Per attribute: the weighted-F1 difference between the best and the worst subgroup, against eps."""
    mine = [r for r in sorted(runs, key=run_order) if r.evaluation and r.evaluation.subgroups]
    attributes = list(
        dict.fromkeys(s.attribute for r in mine if r.evaluation for s in r.evaluation.subgroups)
    )
    if not attributes:
        return None
    series = list(dict.fromkeys(r.series for r in mine))
    fig = Figure(figsize=(4.6 * len(attributes), 3.8))
    axes = fig.subplots(1, len(attributes), squeeze=False)[0]
    for ax, attribute in zip(axes, attributes, strict=True):
        _gap_panel(ax, mine, attribute, series)
    fig.tight_layout()
    return Plot(
        "plot-subgroups",
        "Subgroup gap against ε",
        "Gap = best minus worst subgroup's weighted F1 as evaluated (groups under the evaluation's minimum "
        "size left out when others remain; hollow markers: only small groups). No interval is drawn for the "
        "gap; each group's own 95% interval is in the table below. Dashed: non-private runs.",
        "subgroup weighted F1 gap against epsilon",
        to_data_uri(fig),
    )


def _gap(run: Run, attribute: str) -> tuple[float, bool] | None:
    assert run.evaluation is not None
    for s in run.evaluation.subgroups:
        if s.attribute != attribute:
            continue
        known = [g for g in s.groups if g.weighted_f1.known]
        big = [g for g in known if not g.small]
        use = big if len(big) >= 2 else known
        if len(use) < 2:
            return None
        values = [g.weighted_f1.estimate for g in use if g.weighted_f1.estimate is not None]
        return max(values) - min(values), len(big) >= 2
    return None


def _gap_panel(ax: Axes, runs: Sequence[Run], attribute: str, series: list[str]) -> None:
    private = [r for r in runs if r.private and math.isfinite(r.epsilon)]
    _log_eps_axis(ax, [r.epsilon for r in private])
    for s in series:
        color = _color(series.index(s))
        pts = [(r.epsilon, g) for r in private if r.series == s and (g := _gap(r, attribute)) is not None]
        if pts:
            ax.plot([x for x, _ in pts], [g[0] for _, g in pts], "-", color=color, lw=1.5, label=s)
            for x, (value, big) in pts:
                ax.plot([x], [value], "o", color=color, mfc=color if big else "white", ms=6)
        for r in runs:
            if not r.private and r.series == s:
                g = _gap(r, attribute)
                if g is not None:
                    ax.axhline(g[0], color=color, ls="--", lw=1.3, label=f"{s}, non-private")
    ax.set_ylim(bottom=0)
    ax.set_title(f"by {attribute}", fontsize=10)
    ax.set_xlabel("ε spent (log scale)", fontsize=8)
    ax.set_ylabel("weighted F1 gap (best − worst group)", fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------------------------
# audit


def audit(runs: Sequence[Run]) -> Plot | None:
    """Theoretical eps (the ledger's) beside the canary audit's empirical lower bound, per audited run."""
    mine = [
        r
        for r in sorted(runs, key=run_order)
        if r.audit and r.audit.canary and r.audit.canary.epsilon_lower_bound is not None
    ]
    if not mine:
        return None
    fig = Figure(figsize=(8, 0.55 * len(mine) + 1.6))
    ax = fig.subplots()
    y = np.arange(len(mine))
    theory = [r.epsilon if math.isfinite(r.epsilon) else np.nan for r in mine]
    lower = [float(r.audit.canary.epsilon_lower_bound or 0.0) for r in mine if r.audit and r.audit.canary]
    ax.barh(y - 0.2, np.nan_to_num(theory, nan=0.0), height=0.38, color=COLORS[0], label="ε from the ledger")
    ax.barh(y + 0.2, lower, height=0.38, color=COLORS[4], label="empirical lower bound (canaries)")
    for i, r in enumerate(mine):
        if not math.isfinite(r.epsilon):
            ax.text(0, i - 0.2, " ∞ (non-private)", va="center", fontsize=8)
        c = r.audit.canary if r.audit else None
        if c is not None and c.ceiling is not None:
            ax.plot([c.ceiling], [i + 0.2], "k|", ms=14)
    ax.set_yticks(y)
    ax.set_yticklabels([r.name for r in mine], fontsize=8)
    ax.set_xlabel("ε")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Audit: theory vs what an attacker could demonstrate (| = the audit's ceiling)", fontsize=10)
    ax.grid(True, axis="x", alpha=0.25)
    return Plot(
        "plot-audit",
        "Privacy audit",
        "A lower bound below the ledger's ε is consistent with the guarantee; the audit cannot prove more "
        "than its ceiling, whatever the true leakage.",
        "theoretical epsilon against empirical lower bound",
        to_data_uri(fig),
    )
