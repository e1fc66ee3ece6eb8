"""Patient-level bootstrap, vectorised: resample patients (not reports) B times, as (B, N) weights.

Every metric is computed from weighted counts, so one matrix product gives many resamples at once:
TP = W @ (y_true * y_pred) -> (B, L). AUROC and AUPRC are computed from score-sorted, tie-grouped
cumulative weights, also for many resamples together.

Memory does not grow with B x N: :class:`PatientResamples` draws the resamples block by block of rows
(sized from a fixed cell budget) from one saved generator state, so every pass over the blocks sees the
same rows that :func:`patient_weights` would hold at once. Confusion counts come from per-patient sums,
(b, P) @ (P, L), exact for 0/1 labels; only the ranking metrics expand a block to its reports, (b, N).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# cells of one block of resample weights, (rows, N) float32: 4 MiB, whatever B and N are
CELL_BUDGET = 1 << 20


def block_rows(n: int, *, cell_budget: int = CELL_BUDGET) -> int:
    """Resample rows per block: as many (rows, n) rows as the cell budget allows, at least one."""
    return max(1, cell_budget // max(n, 1))


@dataclass(frozen=True)
class PatientResamples:
    """B patient-level resamples of N reports, held as the generator state that draws them: each call
    of :meth:`blocks` draws the same rows again, block by block, so two evaluations (or a point and its
    comparison) share resamples without a (B, N) matrix."""

    group: np.ndarray  # (N,) each report's patient, 0..P-1
    n_patients: int
    n_boot: int
    state: dict[str, Any]  # the bit generator's state before the first draw
    bit_generator: type[np.random.BitGenerator]

    def __len__(self) -> int:
        return self.n_boot

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, patient draw counts (b, P) float32) for consecutive blocks of at most ``rows``
        resamples. The draws are those of one (B, P) call: numpy's bounded integers continue the same
        stream across calls (tests/metrics/test_bootstrap_blocks.py pins it)."""
        bits = self.bit_generator()
        bits.state = copy.deepcopy(self.state)
        rng = np.random.Generator(bits)
        p = self.n_patients
        for lo in range(0, self.n_boot, rows):
            b = min(rows, self.n_boot - lo)
            draws = rng.integers(0, p, size=(b, p))  # (b, P)
            flat = (np.arange(b)[:, None] * p + draws).ravel()  # one bincount for all rows
            yield lo, np.bincount(flat, minlength=b * p).reshape(b, p).astype(np.float32)  # (b, P)

    def dense(self) -> np.ndarray:
        """(B, N) float32: how many times each report's patient was drawn in each resample."""
        out = np.empty((self.n_boot, len(self.group)), dtype=np.float32)
        for lo, counts in self.blocks(block_rows(len(self.group))):
            out[lo : lo + len(counts)] = counts[:, self.group]
        return out


def patient_resamples(
    patient_ids: Sequence[str], n_boot: int, *, random_state: int | np.random.Generator = 0
) -> PatientResamples:
    """The resamples of :func:`patient_weights`, drawn lazily. A generator passed in is advanced past
    every draw, as :func:`patient_weights` would advance it."""
    rng = np.random.default_rng(random_state)
    _, group = np.unique(np.asarray(patient_ids), return_inverse=True)
    n_patients = int(group.max()) + 1 if len(group) else 0
    out = PatientResamples(
        group.astype(np.int64),
        n_patients,
        n_boot,
        copy.deepcopy(dict(rng.bit_generator.state)),
        type(rng.bit_generator),
    )
    if isinstance(random_state, np.random.Generator):  # the caller's stream goes on after the draws
        rows = block_rows(n_patients)
        for lo in range(0, n_boot, rows):
            rng.integers(0, n_patients, size=(min(rows, n_boot - lo), n_patients))  # (b, P), discarded
    return out


def patient_weights(
    patient_ids: Sequence[str], n_boot: int, *, random_state: int | np.random.Generator = 0
) -> np.ndarray:
    """(B, N) float32: how many times each report's patient was drawn in each resample. Holds B x N
    cells: an evaluation passes :func:`patient_resamples` to :func:`weighted_label_metrics` instead."""
    return patient_resamples(patient_ids, n_boot, random_state=random_state).dense()


def weighted_label_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    y_pred: np.ndarray,
    weights: np.ndarray | PatientResamples,
    mask: np.ndarray | None = None,
    *,
    cell_budget: int = CELL_BUDGET,
) -> dict[str, np.ndarray]:
    """All per-label metrics for each weight row: dict of (B, L) arrays (NaN where undefined).

    ``weights``: (B, N) report weights, or :class:`PatientResamples` (same numbers, drawn in blocks of
    ``cell_budget`` cells). Either way the ranking metrics expand at most ``cell_budget`` weights at once.
    """
    y = y_true.astype(np.float32)
    p = y_pred.astype(np.float32)
    m = np.ones_like(y) if mask is None else mask.astype(np.float32)
    cells = (y * p * m, (1 - y) * p * m, y * (1 - p) * m, (1 - y) * (1 - p) * m)  # 4 x (N, L)
    n, n_labels = y.shape
    rows = block_rows(n, cell_budget=cell_budget)
    if isinstance(weights, PatientResamples):
        group, n_boot, dtype = weights.group, weights.n_boot, np.dtype(np.float32)
        per_patient = [_patient_sums(c, group, weights.n_patients) for c in cells]  # 4 x (P, L)
        blocks: Iterator[tuple[int, np.ndarray]] = weights.blocks(rows)
    else:
        group, n_boot = np.arange(n), weights.shape[0]
        dtype = np.result_type(weights.dtype, np.float32)
        per_patient = list(cells)  # the identity grouping: (N, L)
        blocks = ((lo, weights[lo : lo + rows]) for lo in range(0, n_boot, rows))
    ranks = [_Ranking.of(y[:, j], y_score[:, j], np.flatnonzero(m[:, j] > 0), group) for j in range(n_labels)]
    counts = [np.empty((n_boot, n_labels), dtype=dtype) for _ in cells]  # tp, fp, fn, tn: (B, L)
    auroc = np.full((n_boot, n_labels), np.nan)
    auprc = np.full((n_boot, n_labels), np.nan)
    for lo, w in blocks:  # w: (b, P) patient counts, or (b, N) report weights
        hi = lo + len(w)
        for count, c in zip(counts, per_patient, strict=True):
            count[lo:hi] = w @ c  # (b, L)
        for j, rank in enumerate(ranks):
            auroc[lo:hi, j], auprc[lo:hi, j] = rank.metrics(w, chunk=min(64, rows))
    out = metrics_from_counts(*counts)
    out["auroc"], out["auprc"] = auroc, auprc
    return out


def _patient_sums(cells: np.ndarray, group: np.ndarray, n_patients: int) -> np.ndarray:
    """(N, L) -> (P, L): each patient's reports summed (exact in float32 for counts below 2**24)."""
    sums = [np.bincount(group, weights=c, minlength=n_patients) for c in cells.T]  # L x (P,) float64
    return np.stack(sums, axis=1).astype(np.float32) if sums else np.zeros((n_patients, 0), np.float32)


def metrics_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-label precision, recall, specificity, F1 (0 where undefined) and support from confusion counts:
    each input and output (..., L). The one definition every evaluation (scores or counts) uses."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "recall": np.where(tp + fn > 0, tp / (tp + fn), 0.0),
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), 0.0),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
            "support": tp + fn,
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }


@dataclass(frozen=True)
class _Ranking:
    """One label's reports in descending score order, with their tie groups: what weighted AUROC and
    average precision need besides the weights."""

    columns: np.ndarray  # (K,) the weight column of each kept report, in descending score order
    y_sorted: np.ndarray  # (K,) float32
    starts: np.ndarray  # (G,) first position of each group of equal scores
    ties: bool

    @classmethod
    def of(cls, y: np.ndarray, s: np.ndarray, keep: np.ndarray, group: np.ndarray) -> _Ranking:
        order = keep[np.argsort(-s[keep], kind="mergesort")]  # descending score, stable
        s_sorted = s[order]
        starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1] if len(order) else np.zeros(0, np.int64)
        return cls(group[order], y[order].astype(np.float32), starts, len(starts) < len(order))

    def metrics(self, w: np.ndarray, *, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Weighted AUROC and average precision for every row of ``w`` ((b, P) or (b, N), gathered
        through ``columns``), ties handled as scikit-learn does; rows in chunks whose (chunk, K)
        temporaries stay in cache."""
        b = w.shape[0]
        if len(self.columns) == 0:
            return np.full(b, np.nan), np.full(b, np.nan)
        auroc, auprc = np.empty(b), np.empty(b)
        for lo in range(0, b, chunk):
            w_sorted = w[lo : lo + chunk][:, self.columns].astype(np.float32, copy=False)  # (C, K)
            wpos = w_sorted * self.y_sorted  # (C, K) positive weight at each position
            wneg = w_sorted - wpos
            if self.ties:  # (C, G): weights summed over each group of equal scores
                wpos = np.add.reduceat(wpos, self.starts, axis=1)
                wneg = np.add.reduceat(wneg, self.starts, axis=1)
            ptot, ntot = wpos.sum(1), wneg.sum(1)  # (C,)
            fp_cum = np.cumsum(wneg, axis=1)
            tp_cum = np.cumsum(wpos, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                # AUROC: each positive beats the negatives in lower groups (later in descending order), ties half
                auroc[lo : lo + chunk] = (wpos * (ntot[:, None] - fp_cum + 0.5 * wneg)).sum(1) / (ptot * ntot)
                precision = tp_cum / np.maximum(tp_cum + fp_cum, 1e-30)
                auprc[lo : lo + chunk] = (wpos * precision).sum(1) / ptot
                auroc[lo : lo + chunk][(ptot == 0) | (ntot == 0)] = np.nan
                auprc[lo : lo + chunk][ptot == 0] = np.nan
        return auroc, auprc


def headline(per_label: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weighted / macro / micro F1 and macro AUROC from per-label arrays: each (B,)."""
    support = per_label["support"]
    f1 = per_label["f1"]
    tp, fp, fn = per_label["tp"].sum(1), per_label["fp"].sum(1), per_label["fn"].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        weighted = np.where(support.sum(1) > 0, (f1 * support).sum(1) / support.sum(1), 0.0)
        micro = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return {
        "weighted_f1": weighted,
        "macro_f1": f1.mean(1),
        "micro_f1": micro,
        "macro_auroc": _nanmean_rows(per_label["auroc"]),
    }


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over the defined (non-NaN) entries; NaN where a row has none."""
    ok = ~np.isnan(x)
    count = ok.sum(1)
    return np.where(count > 0, np.where(ok, x, 0.0).sum(1) / np.maximum(count, 1), np.nan)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "ci_low": self.low, "ci_high": self.high}


def interval(point: float, samples: np.ndarray, *, level: float = 0.95) -> Interval:
    """Percentile interval of the bootstrap samples around the point estimate (NaN samples ignored)."""
    ok = samples[~np.isnan(samples)]
    if len(ok) == 0 or np.isnan(point):
        return Interval(float(point), float("nan"), float("nan"))
    a = (1 - level) / 2
    return Interval(float(point), float(np.quantile(ok, a)), float(np.quantile(ok, 1 - a)))


def paired_difference(
    point_a: float, point_b: float, samples_a: np.ndarray, samples_b: np.ndarray, *, level: float = 0.95
) -> dict[str, Any]:
    """B - A with a bootstrap CI and a two-sided p-value for 'no difference' (same resamples for both)."""
    diff = samples_b - samples_a
    ok = diff[~np.isnan(diff)]
    ci = interval(point_b - point_a, ok, level=level)
    p = float(min(1.0, 2 * min((ok <= 0).mean(), (ok >= 0).mean()))) if len(ok) else float("nan")
    return {
        "a": point_a,
        "b": point_b,
        "difference": ci.estimate,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "p_value": p,
    }
