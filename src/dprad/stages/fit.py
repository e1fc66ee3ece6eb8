"""Stage 2, the loop: sample, micro-batch, step, account, checkpoint. No mode or privacy branches here:
the mode says how to compute a loss, the privacy object how to turn losses into a step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from dprad.modes.base import Mode
from dprad.privacy.mechanism import DpSgd, NonPrivate, check_sampler
from dprad.privacy.noise import NoiseSource, NoiseStream
from dprad.run.plan import RunPlan
from dprad.stages.rundir import RunDir
from dprad.stages.world import SOLO, World


@dataclass(frozen=True)
class StepInfo:
    step: int
    steps: int
    epoch: float
    loss: float
    epsilon: float | None
    examples_per_s: float


class EpochHook(Protocol):
    """Called at step 0 and at each epoch's end (``stages.select.EpochSelection``); its state travels in
    the checkpoint so that a resumed run continues it."""

    def __call__(self, step: int, epoch: float) -> bool: ...  # True: stop training here

    def state(self) -> dict[str, Any]: ...

    def load(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Fitted:
    history: dict[str, Any]  # step_loss, batch_size (realised, per step), epsilon_per_epoch
    sampler: str  # the sampler the loop drew with (the ledger records it)
    steps: int | None = None  # the steps taken when an epoch hook stopped the loop early (None: the plan's)

    def steps_taken(self, planned: int) -> int:
        """The steps this run took: ``planned`` unless an epoch hook stopped it early."""
        return planned if self.steps is None else self.steps


def _checkpoint(
    done: int,
    mode: Mode,
    optimizer: torch.optim.Optimizer,
    sampler: Any,
    noise: NoiseStream,
    torch_rngs: list[torch.Tensor],
    history: dict[str, Any],
    on_epoch: EpochHook | None,
) -> dict[str, Any]:
    """Everything a resumed run needs to continue as if it had never stopped. It holds the DP streams'
    states (their keys): the checkpoint is private and deleted when the run finishes."""
    return {
        "step": done,
        "trainable": dict(mode.trainable.state_dict()),
        "optimizer": optimizer.state_dict(),
        "sampler_rng": sampler.rng.bit_generator.state,
        "sampler_perm": getattr(sampler, "_perm", None),
        "noise_rng": noise.state(),
        "torch_rng": torch.get_rng_state(),
        "torch_rng_ranks": torch_rngs,  # dropout streams, one per rank
        "history": history,
        "on_epoch": None if on_epoch is None else on_epoch.state(),
    }


def fit(
    plan: RunPlan,
    mode: Mode,
    privacy: DpSgd | NonPrivate,
    *,
    noise: NoiseSource,
    run_dir: RunDir | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: EpochHook | None = None,
    world: World = SOLO,
) -> Fitted:
    """Train ``mode`` for the plan's steps. Under ``world`` (several processes) every rank runs this loop
    with the same sampler seed, trains on its ``privacy.shard`` of each batch, and ends with the same
    model; rank 0 alone reads and writes checkpoints (the others receive its checkpoint).

    ``noise``: the run's DP randomness (``privacy.noise``). A private run draws its Poisson batches and its
    gradient noise from it, never from ``train.seed``, which is written in ``config.json``; a non-private
    run's batch order is public and follows ``train.seed``."""
    t = plan.cfg.train
    module = privacy.wrap(mode.trainable)  # per-sample gradient hooks when private
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = mode.optimizer(params)
    coins = noise.stream("sampler").generator if privacy.private else np.random.default_rng(t.seed)
    sampler = privacy.sampler(coins)
    check_sampler(sampler, private=privacy.private)
    gradient_noise = noise.stream("gradient")  # drawn on rank 0 only when distributed
    loss_fn = mode.loss_fn(module)
    # batch_size: reports per step; batch_units: privacy units (patients or reports) per step, whose mean
    # is the expected batch size q * n the accountant assumed
    history: dict[str, Any] = {"step_loss": [], "batch_size": [], "batch_units": [], "epsilon_per_epoch": []}
    groups = getattr(privacy, "groups", None)
    start = 0
    state = None
    if run_dir is not None and world.main and run_dir.checkpoint.exists():
        state = run_dir.load_checkpoint()
    state = world.share(state)  # every rank resumes from rank 0's checkpoint
    if state is not None:
        mode.trainable.load_state_dict(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        if state["sampler_perm"] is not None:
            sampler._perm = state["sampler_perm"]  # type: ignore[union-attr]
        gradient_noise.load(state["noise_rng"])
        per_rank = state.get("torch_rng_ranks") or [state["torch_rng"]]
        if len(per_rank) == world.size:  # else (another world size) ranks > 0 keep their own stream
            torch.set_rng_state(per_rank[world.rank])
        elif world.main:
            torch.set_rng_state(state["torch_rng"])
        start, history = int(state["step"]), state["history"]
        if on_epoch is not None and state.get("on_epoch") is not None:
            on_epoch.load(state["on_epoch"])
    per_epoch = 1 / plan.sample_rate
    if on_epoch is not None and start == 0:
        on_epoch(0, 0.0)
    stopped = None
    tick = time.perf_counter()
    for step in range(start, plan.steps):
        idx = sampler.sample()  # (B,) indices into the training split; B varies under Poisson sampling
        mine = privacy.shard(idx)  # (B_rank,) this rank's share (all of idx on one process); may be empty
        loss = privacy.step(  # the loss summed over the whole batch (all ranks)
            params, optimizer, mode.batches(mine), loss_fn, noise=gradient_noise, realised=len(idx)
        )
        history["step_loss"].append(round(loss / max(len(idx), 1), 6))
        history["batch_size"].append(len(idx))
        history["batch_units"].append(len(idx) if groups is None else len(np.unique(groups[idx])))
        done = step + 1
        eps_now = None
        epoch_end = math.floor(done / per_epoch) > math.floor(step / per_epoch) or done == plan.steps
        if privacy.private and epoch_end:
            eps_now = privacy.accounting(done).epsilon  # type: ignore[union-attr]
            history["epsilon_per_epoch"].append(
                {"epoch": round(done / per_epoch, 3), "step": done, "epsilon": eps_now}
            )
        if on_epoch is not None and epoch_end and on_epoch(done, done / per_epoch) and done < plan.steps:
            if privacy.private:  # the ledger accounts the plan's steps: a private run never stops early
                raise RuntimeError("an epoch hook stopped a private run")
            stopped = done
            break
        if run_dir is not None and done % t.checkpoint_every == 0 and done < plan.steps:
            torch_rngs = world.gather(torch.get_rng_state())  # collective: every rank, at the same steps
            if world.main:  # rank 0 alone writes the run directory
                run_dir.save_checkpoint(
                    _checkpoint(done, mode, optimizer, sampler, gradient_noise, torch_rngs, history, on_epoch)
                )
        if on_step is not None:
            rate = (done - start) * plan.sample_rate * plan.n / max(time.perf_counter() - tick, 1e-9)
            on_step(StepInfo(done, plan.steps, done / per_epoch, history["step_loss"][-1], eps_now, rate))
    name = sampler.name
    if world.distributed:
        name += (
            f"; one draw shared by {world.size} processes (torch.distributed {world.backend}), each clipping "
            "its share, one noise draw per step"
        )
    return Fitted(history, name, stopped)
