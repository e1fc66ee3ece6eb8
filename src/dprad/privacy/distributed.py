"""DP-SGD over several processes (``torch.distributed``): the same mechanism as one process, split up.

Every rank runs the *same* Poisson sampler (same seed), so every rank knows the whole logical batch; each
takes its share (``shard``), computes and clips the per-unit gradients of that share
(``dp_step.clip_and_accumulate``; a patient's reports always go to one rank, so per-patient clipping is
local), and the clipped sums are all-reduced (SUM). The Gaussian noise is drawn once, by rank 0 from its
generator, and added to rank 0's share before the all-reduce, so the reduced gradient is
``sum of clipped units + one noise draw`` on every rank, exactly the single-process step; every rank then
scales by the expected batch size and steps its own optimizer on identical gradients.

Noise from rank 0 (not an identically seeded generator on every rank): a rank whose generator drifted
(resumed from a different checkpoint, an extra draw) would otherwise add a second, correlated or
cancelling noise vector silently; here only one generator exists, and the other ranks' are never used.

Why not opacus's ``DistributedDPOptimizer``: it does the same reduction (noise on rank 0, all-reduce of
``p.grad``), but it inherits ``DPOptimizer``'s coupling of accumulation to its own data loader and its
virtual steps (which cannot take an empty Poisson share on one rank: no forward pass, no hook), it clips
rows of ``grad_sample`` only (no per-patient sums), and it issues one all-reduce per parameter; here the
clipped sums and the loss travel in one flat buffer and one collective per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from dprad.privacy.dp_step import LossFn, apply_step, clip_and_accumulate, gaussian_noise
from dprad.privacy.noise import NoiseStream


def rank_and_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def shard(indices: np.ndarray, *, rank: int, world_size: int, groups: np.ndarray | None = None) -> np.ndarray:
    """This rank's share of a logical batch that every rank sampled identically.

    Report level: every ``world_size``-th example, starting at ``rank``. Patient level (``groups[i]`` =
    patient of example ``i``): every ``world_size``-th *patient* of the batch, with all of their reports,
    so that each patient's gradient is summed and clipped on one rank.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    indices = np.asarray(indices)
    if groups is None:
        return indices[rank::world_size]
    patients = np.unique(groups[indices])  # (P_batch,) sorted
    mine = patients[rank::world_size]
    return indices[np.isin(groups[indices], mine)]


def distributed_private_step(
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batches: Sequence[np.ndarray],
    loss_fn: LossFn,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    noise: NoiseStream,
    groups: np.ndarray | None = None,
    group: dist.ProcessGroup | None = None,
) -> float:
    """One DP-SGD step over all ranks of ``group``; ``batches`` are *this rank's* micro-batches (of its
    ``shard``). Every rank must call it once per step, even with an empty share. ``noise`` is drawn on
    rank 0 only. ``expected_batch_size`` is the expected size of the whole logical batch (``q * n``, in
    reports or, with ``groups``, patients), not of one share. Returns the loss summed over all ranks.

    Collectives: one all-reduce of a flat float32 buffer (clipped sums + loss) per step; on NCCL the
    parameters (hence the buffer) must be on this rank's GPU, on gloo on the CPU.
    """
    rank, _ = rank_and_world(group)
    summed, loss = clip_and_accumulate(params, batches, loss_fn, max_grad_norm=max_grad_norm, groups=groups)
    if rank == 0:  # the one noise draw of the step, in the same order as the single-process step
        drawn = gaussian_noise(summed, std=noise_multiplier * max_grad_norm, noise=noise)
        summed = [acc + z for acc, z in zip(summed, drawn, strict=True)]
    device = summed[0].device if summed else torch.device("cpu")
    flat = torch.cat([s.reshape(-1) for s in summed] + [torch.tensor([loss], device=device)])  # (D + 1,)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    reduced = [
        t.view_as(s) for t, s in zip(flat[:-1].split([s.numel() for s in summed]), summed, strict=True)
    ]
    apply_step(params, optimizer, reduced, expected_batch_size=expected_batch_size)
    return float(flat[-1])
