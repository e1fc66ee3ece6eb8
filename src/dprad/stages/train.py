"""Training as a short composition of typed stages: plan -> open the run directory -> build the mode's
model -> fit (the loop) -> finish (ledger, thresholds, metrics, model).

Several processes: ``torchrun --nproc-per-node N -m dprad train DATA --epsilon E --out RUN``. Each rank
plans the same run, joins the process group for the run (``stages.world``), trains its share of every
Poisson batch (``distributed.distributed_private_step``), and rank 0 alone writes the run directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dprad.config import RunConfig
from dprad.data.reports import Report
from dprad.errors import DpradError
from dprad.modes import get_mode
from dprad.nn.model import trainable_parameters
from dprad.privacy.mechanism import DpSgd, check_sampler
from dprad.privacy.noise import NoiseSource
from dprad.run.plan import RunPlan
from dprad.stages.finish import CRITICAL_SENSITIVITY, TrainResult, build_ledger, finish
from dprad.stages.fit import StepInfo, fit
from dprad.stages.plan import CanaryHook, plan_run, planned_steps, prepare, resolve
from dprad.stages.rundir import RunDir
from dprad.stages.select import EpochSelection
from dprad.stages.world import SOLO, World, env_world_size, joined


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    reports: Sequence[Report] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    overwrite: bool = False,
    canaries: CanaryHook | None = None,
    noise: NoiseSource | None = None,
    on_features: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train one run into ``out``; resumes from ``out/checkpoint.pt`` when it holds the same config.
    ``noise``: the run's DP randomness (default: ``RunDir.noise``, a secret key or the stated seed);
    whatever is passed, the ledger records its ``describe()``. ``on_features(done, total)``: the frozen
    encoder's feature pass, chunk by chunk (a head, or an LP-FT probe)."""
    plan = plan_run(cfg, reports, canaries=canaries)
    return train_plan(plan, out, on_step=on_step, overwrite=overwrite, noise=noise, on_features=on_features)


def train_plan(
    plan: RunPlan,
    out: str | Path,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    overwrite: bool = False,
    noise: NoiseSource | None = None,
    on_features: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train a planned run. Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls this with the same
    plan; rank 0 alone writes ``out`` and returns the metrics, the others return the ledger only."""
    size = env_world_size()
    if size > 1:
        check_distributable(plan, size)
    with joined(plan.cfg.train.device) as world:
        return _train(
            plan, out, world, on_step=on_step, overwrite=overwrite, noise=noise, on_features=on_features
        )


def fit_probe(
    probe: RunPlan,
    notes: list[str],
    *,
    noise: NoiseSource,
    feature_dir: Path | None = None,
    on_features: Callable[[int, int], None] | None = None,
) -> torch.nn.Module:
    """Phase 1 of LP-FT: train the head mode on ``probe`` (its own steps, noise and seeds) and return the
    trained head. It is not checkpointed: it takes seconds after one feature pass, and a resumed run
    retrains it to the same weights (the same seeds, and the same secret ``noise``, kept beside the
    checkpoint) before phase 2 loads its checkpoint. Under torchrun every rank trains it alike (same draws,
    same noise): one release, computed on every rank."""
    head = get_mode(probe.mode)(probe, notes=notes)  # the probe's plan is the head mode's
    head.feature_dir, head.on_features = feature_dir, on_features
    head.build()
    fit(
        probe, head, probe.privacy(), noise=noise, run_dir=None, world=SOLO
    )  # steps are reported for the fine-tuning phase
    eps = probe.accounting  # computed once: the ledger's probe part reads the same
    notes.append(
        f"LP-FT phase 1: linear probe trained for {probe.steps} steps"
        + (
            f" (DP-SGD, noise multiplier {probe.noise_multiplier:.4g}, its own epsilon {eps.epsilon:.4g})"
            if eps
            else ""
        )
    )
    return head.trainable  # the trained FeatureHead


def check_distributable(plan: RunPlan, size: int) -> None:
    """Several processes train DP-SGD with LoRA or full fine-tuning; anything else is refused up front."""
    if not plan.private:
        raise DpradError(
            f"WORLD_SIZE={size}: multi-process training is DP-SGD only (pass --epsilon or --noise-multiplier), "
            "or train a non-private run on one process"
        )
    if not get_mode(plan.mode).distributable:
        raise DpradError(
            f"WORLD_SIZE={size}: --mode {plan.mode} trains on frozen features in one process; multi-process "
            "training is for --mode lora or full (or run without torchrun)"
        )


def _train(
    plan: RunPlan,
    out: str | Path,
    world: World,
    *,
    on_step: Callable[[StepInfo], None] | None,
    overwrite: bool,
    noise: NoiseSource | None,
    on_features: Callable[[int, int], None] | None = None,
) -> TrainResult:
    world.check_same("run plan", plan.to_dict())
    run_dir = RunDir(out)
    error = None
    if world.main:
        try:
            run_dir.open(plan.to_dict(), overwrite=overwrite)
        except DpradError as err:
            error = str(err)
    world.raise_if_any(error)  # a refused run directory stops every rank, not rank 0 alone
    # the run's DP randomness: rank 0's (secret) key, shared so that every rank draws the same batches
    if noise is None:
        noise = world.share(run_dir.noise(plan.cfg.privacy.noise_seed) if world.main else None)
    threads = torch.get_num_threads()
    try:
        if plan.cfg.train.threads:
            torch.set_num_threads(plan.cfg.train.threads)
        with torch.random.fork_rng():
            torch.manual_seed(plan.cfg.train.seed)
            notes = list(plan.notes)
            mode = get_mode(plan.mode)(plan, notes=notes)
            # rank 0 alone writes the run directory, its feature store included
            mode.feature_dir = run_dir.features if world.main else None
            mode.on_features = on_features
            if plan.probe is not None:  # LP-FT phase 1: the head mode's probe, then fine-tuning from it
                probe = fit_probe(
                    plan.probe,
                    notes,
                    noise=noise.child("probe"),
                    feature_dir=mode.feature_dir,
                    on_features=on_features,
                )
                mode.start_from(probe)
            mode.build()
            privacy = plan.privacy()
            if world.distributed:
                assert isinstance(privacy, DpSgd)  # check_distributable
                privacy = privacy.on(rank=world.rank, world_size=world.size)
                world.broadcast_module(mode.trainable)  # one initial model, as DDP does
                if not world.main:  # its own dropout stream; rank 0 continues the single-process one
                    torch.manual_seed(
                        int(np.random.SeedSequence([plan.cfg.train.seed, world.rank]).generate_state(1)[0])
                    )
                notes.append(
                    f"trained by {world.size} processes (torch.distributed, {world.backend}): every rank drew the "
                    "same Poisson batch, clipped its share, and the clipped sums plus one noise draw (rank 0's) "
                    "were all-reduced, the same DP-SGD step as on one process"
                )
            selection = None if world.distributed else EpochSelection.for_run(plan, mode, notes)
            fitted = fit(
                plan,
                mode,
                privacy,
                noise=noise,
                run_dir=run_dir,
                on_step=on_step,
                on_epoch=selection,
                world=world,
            )
            if selection is not None:
                selection.finish(fitted.steps_taken(plan.steps), plan.steps, notes)
                fitted.history["val_loss_per_epoch"] = selection.history
            if world.main:
                result = finish(plan, mode, privacy, fitted, run_dir, notes, noise=noise)
            else:  # the same ledger, no scoring and no file: rank 0 writes the run
                ledger = build_ledger(
                    plan, privacy, fitted, trainable_parameters(mode.trainable), noise=noise
                )
                result = TrainResult(run_dir.path, ledger, {})
    finally:
        torch.set_num_threads(threads)  # no process-global side effect outlives the run
    if world.main:
        run_dir.close()
    return result


__all__ = [
    "CRITICAL_SENSITIVITY",
    "StepInfo",
    "TrainResult",
    "check_distributable",
    "check_sampler",
    "plan_run",
    "planned_steps",
    "prepare",
    "resolve",
    "train",
    "train_plan",
]
