"""Two CPU processes (gloo) running distributed_private_step end where one process running private_step ends,
at report level and at patient level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from opacus import GradSampleModule

from dprad.data.dataset import PoissonSampler
from dprad.data.sampling import PatientPoissonSampler
from dprad.privacy.distributed import distributed_private_step, rank_and_world, shard
from dprad.privacy.dp_step import private_step
from dprad.privacy.noise import NoiseSource

N, STEPS, Q, CLIP, SIGMA = 48, 4, 0.4, 0.5, 0.7
WORLD = 2


def data() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(N, 6)).astype(np.float32))  # (N, D)
    y = torch.from_numpy((rng.random((N, 3)) < 0.4).astype(np.float32))  # (N, L)
    groups = rng.integers(0, 16, size=N)  # 16 patients, about 3 reports each
    return x, y, groups


def model() -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net


def train(unit: str, rank: int, world: int) -> list[torch.Tensor]:
    """STEPS DP steps; world > 1: this rank's share and the distributed step; world == 1: private_step."""
    x, y, groups = data()
    gsm = GradSampleModule(model(), batch_first=True, loss_reduction="sum")
    params = [p for p in gsm.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.3, momentum=0.9)
    rng = np.random.default_rng(42)  # the same sampler seed on every rank
    patient = unit == "patient"
    sampler = PatientPoissonSampler(groups, Q, rng) if patient else PoissonSampler(N, Q, rng)
    unit_groups = groups if patient else None
    expected = Q * sampler.n
    gen = NoiseSource.from_seed(7).stream("gradient")

    def loss_fn(idx: np.ndarray) -> torch.Tensor:
        logits = gsm(x[idx])  # (B, L)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx], reduction="none").sum(-1)

    for _ in range(STEPS):
        idx = sampler.sample()
        if world == 1:
            mbs = [idx[:5], idx[5:]] if len(idx) > 5 else [idx]  # accumulation across micro-batches
            mbs = [m for m in mbs if len(m)]
            private_step(params, opt, mbs, loss_fn, max_grad_norm=CLIP, noise_multiplier=SIGMA,
                         expected_batch_size=expected, noise=gen, groups=unit_groups)  # fmt: skip
        else:
            mine = shard(idx, rank=rank, world_size=world, groups=unit_groups)
            mbs = [mine[:3], mine[3:]] if len(mine) > 3 else [mine]
            mbs = [m for m in mbs if len(m)]
            distributed_private_step(params, opt, mbs, loss_fn, max_grad_norm=CLIP, noise_multiplier=SIGMA,
                                     expected_batch_size=expected, noise=gen, groups=unit_groups)  # fmt: skip
    return [p.detach().clone() for p in params]


def worker(rank: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=WORLD)
    try:
        assert rank_and_world() == (rank, WORLD)
        torch.save({u: train(u, rank, WORLD) for u in ("report", "patient")}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(worker, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    start = [p.detach() for p in model().parameters()]
    for unit in ("report", "patient"):
        single = train(unit, 0, 1)
        for a, b in zip(ranks[0][unit], ranks[1][unit], strict=True):
            assert torch.equal(a, b), unit  # every rank holds the same model
        for a, s, p0 in zip(ranks[0][unit], single, start, strict=True):
            torch.testing.assert_close(a, s, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(s, p0)  # the steps moved every parameter
    # patient and report level really differ (the units are not interchangeable)
    assert not torch.allclose(ranks[0]["report"][0], ranks[0]["patient"][0])


def test_shard_covers_the_batch_and_keeps_patients_whole() -> None:
    _, _, groups = data()
    idx = np.flatnonzero(np.random.default_rng(1).random(N) < 0.6)
    parts = [shard(idx, rank=r, world_size=3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == idx.tolist()
    parts = [shard(idx, rank=r, world_size=3, groups=groups) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == idx.tolist()
    owners = [set(groups[p].tolist()) for p in parts]
    assert all(not (owners[a] & owners[b]) for a in range(3) for b in range(a + 1, 3))
    assert rank_and_world() == (0, 1)
    with pytest.raises(ValueError, match="rank"):
        shard(idx, rank=3, world_size=3)
