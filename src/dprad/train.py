"""Training as a short composition of typed stages: plan -> open the run directory -> build the mode's
model -> fit (the loop) -> finish (ledger, thresholds, metrics, model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from dprad.config import RunConfig
from dprad.data.reports import Report
from dprad.modes import get_mode
from dprad.privacy.mechanism import check_sampler
from dprad.stages.finish import CRITICAL_SENSITIVITY, TrainResult, finish
from dprad.stages.fit import StepInfo, fit
from dprad.stages.plan import CanaryHook, RunPlan, plan_run, planned_steps, prepare, resolve
from dprad.stages.rundir import RunDir


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    reports: Sequence[Report] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    overwrite: bool = False,
    canaries: CanaryHook | None = None,
) -> TrainResult:
    """Train one run into ``out``; resumes from ``out/checkpoint.pt`` when it holds the same config."""
    plan = plan_run(cfg, reports, canaries=canaries)
    return train_plan(plan, out, on_step=on_step, overwrite=overwrite)


def train_plan(
    plan: RunPlan,
    out: str | Path,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    run_dir = RunDir(out)
    run_dir.open(plan.to_dict(), overwrite=overwrite)
    threads = torch.get_num_threads()
    try:
        if plan.cfg.train.threads:
            torch.set_num_threads(plan.cfg.train.threads)
        with torch.random.fork_rng():
            torch.manual_seed(plan.cfg.train.seed)
            notes = list(plan.notes)
            mode = get_mode(plan.mode)(plan, notes=notes)
            mode.build()
            privacy = plan.privacy()
            fitted = fit(plan, mode, privacy, run_dir=run_dir, on_step=on_step)
            result = finish(plan, mode, privacy, fitted, run_dir, notes)
    finally:
        torch.set_num_threads(threads)  # no process-global side effect outlives the run
    run_dir.close()
    return result


__all__ = [
    "CRITICAL_SENSITIVITY",
    "StepInfo",
    "TrainResult",
    "check_sampler",
    "plan_run",
    "planned_steps",
    "prepare",
    "resolve",
    "train",
    "train_plan",
]
