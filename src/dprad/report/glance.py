"""The report's first screen: one plain sentence per run (its guarantee, its weighted F1 with the 95%
interval, the thresholds it is at), and one legend for what the sentences share: how each run's shipped
thresholds were chosen, and which runs are the non-private references.

Rendering only: every number is read from the runs' files by :mod:`dprad.report.collect`. The words for
the thresholds a run's numbers are at (``Run.at``) are the ones the headline table and the model card
quote too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dprad.report.collect import Run
from dprad.report.fmt import fmt_interval, fmt_num


def fmt_eps(run: Run) -> str:
    """The eps a reader should quote: the target when the run spent at most it, with the spent value."""
    if not run.private:
        return "∞ (non-private)"
    target = run.ledger.target_epsilon
    if target is not None and run.epsilon <= target:
        quoted, spent = fmt_num(target, "g"), fmt_num(run.epsilon, ".4g")
        return quoted if spent == quoted else f"{quoted} (spent {spent})"
    return fmt_num(run.epsilon, ".4g")


def weighted_f1(run: Run) -> str:
    """The run's weighted F1 as every place quotes it, followed by which thresholds it is at."""
    if run.evaluation is None:
        return "not evaluated"
    return f"{fmt_interval(run.evaluation.metric('weighted_f1'))} {run.at}"


@dataclass(frozen=True)
class Headline:
    name: str
    who: str  # mode, model, training data
    text: str  # one sentence: the guarantee, then weighted F1 [95% CI] at its thresholds
    private: bool


def headline(run: Run) -> Headline:
    who = f"{run.mode}, {run.model}, trained on {run.dataset}"
    f1 = weighted_f1(run)
    if not run.private:
        return Headline(run.name, who, f"no privacy guarantee, ε = ∞; weighted F1 {f1}.", False)
    led = run.ledger
    text = f"ε = {fmt_eps(run)}, δ = {fmt_num(led.delta, '.0e')} per {led.privacy_unit}; weighted F1 {f1}."
    return Headline(run.name, who, text, True)


@dataclass(frozen=True)
class Legend:
    """What every sentence shares, said once."""

    thresholds: tuple[tuple[str, tuple[str, ...]], ...]  # (how they were chosen, the runs that ship such)
    references: tuple[str, ...]  # the non-private runs
    private: bool  # any private run


def _how(run: Run) -> str:
    fitted = run.thresholds.fitted_on
    if fitted is None:
        return "0.5 for every label, none fitted"
    if "(DP)" in fitted:
        return "fitted on the validation split under DP and paid inside the run's ε, whose share follows its name"
    return "fitted on the validation split without DP, so not covered by any guarantee"


def _named(run: Run) -> str:
    """A run's name, with the share of its ε that choosing its thresholds (or itself) cost, where paid."""
    if run.selection is None or run.thresholds.fitted_on is None or "(DP)" not in run.thresholds.fitted_on:
        return run.name
    return f"{run.name} ε = {fmt_num(run.selection[0], '.3g')}"


def legend(runs: Sequence[Run]) -> Legend:
    groups: dict[str, list[str]] = {}
    for r in runs:
        groups.setdefault(_how(r), []).append(_named(r))
    return Legend(
        tuple((how, tuple(names)) for how, names in groups.items()),
        tuple(r.name for r in runs if not r.private),
        any(r.private for r in runs),
    )
