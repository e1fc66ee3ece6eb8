"""The privacy object a run trains with: it owns the sampler, the per-sample-gradient wrapping, the step
and the dp-accounting event, so that "the sampler used is the sampler the accountant assumed" holds by
construction: the event is built from the same ``sample_rate`` the sampler draws with, and epsilon is
computed from that event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from dprad.data.dataset import PoissonSampler, ShuffleSampler
from dprad.data.sampling import PatientPoissonSampler
from dprad.errors import PrivacyInvariantError
from dprad.privacy.accounting import (
    Accounting,
    compute_epsilon,
    dpsgd_event,
    epsilon_of,
    event_to_dict,
    with_releases,
)
from dprad.privacy.dp_step import LossFn, plain_step, private_step
from dprad.privacy.noise import NoiseStream


class Sampler(Protocol):
    name: str
    rng: np.random.Generator

    def sample(self) -> np.ndarray: ...


class Privacy(Protocol):
    """What the training loop needs from a privacy regime (private or not)."""

    private: bool
    steps: int

    def sampler(self, rng: np.random.Generator) -> Sampler: ...

    def wrap(self, module: nn.Module) -> nn.Module: ...

    def shard(self, indices: np.ndarray) -> np.ndarray: ...

    def step(
        self,
        params: Sequence[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        batches: Sequence[np.ndarray],
        loss_fn: LossFn,
        *,
        noise: NoiseStream,
        realised: int,
    ) -> float: ...

    def accounting(self, steps: int | None = None) -> Accounting | None: ...


@dataclass(frozen=True)
class DpSgd:
    """DP-SGD: Poisson sampling at ``sample_rate`` over ``n`` units, per-unit clipping to
    ``max_grad_norm``, Gaussian noise ``noise_multiplier * max_grad_norm``, ``steps`` steps."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    delta: float
    n: int
    accountant: str = "pld"
    unit: str = "report"
    private: bool = True
    # the run's other DP releases, composed with training in the total (e.g. the DP thresholds' event)
    releases: tuple[Any, ...] = ()
    # patient-level DP: (N_reports,) patient index of every training report; n is then the patient count
    groups: np.ndarray | None = None
    # several processes (torch.distributed): every rank draws the same batch, clips its share of it, and
    # the clipped sums plus one noise draw (rank 0's) are all-reduced: the same mechanism as one process
    rank: int = 0
    world_size: int = 1

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.n

    @property
    def unit_groups(self) -> np.ndarray | None:
        return self.groups if self.unit == "patient" else None

    def on(self, *, rank: int, world_size: int) -> DpSgd:
        """This mechanism run by rank ``rank`` of ``world_size`` processes (same sampler seed on each)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        return replace(self, rank=rank, world_size=world_size)

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's share of the logical batch ``indices`` (all of it on one process); a patient's
        reports stay together, so per-patient clipping is local to one rank."""
        if self.world_size == 1:
            return indices
        from dprad.privacy.distributed import shard

        return shard(indices, rank=self.rank, world_size=self.world_size, groups=self.unit_groups)

    def sampler(self, rng: np.random.Generator) -> PoissonSampler | PatientPoissonSampler:
        if self.unit == "patient":
            if self.groups is None:
                raise PrivacyInvariantError(
                    "DpSgd(unit='patient') has no patient groups: its sampler cannot draw patients"
                )
            sampler = PatientPoissonSampler(self.groups, self.sample_rate, rng)
            if sampler.n != self.n:  # the accountant's n is the number of patients sampled over
                raise PrivacyInvariantError(
                    f"DpSgd(unit='patient'): the accountant counts n={self.n} patients, but the sampler's "
                    f"groups hold {sampler.n}: the sampler used would not be the one the accountant assumes"
                )
            return sampler
        return PoissonSampler(self.n, self.sample_rate, rng)

    def wrap(self, module: nn.Module) -> nn.Module:
        from opacus import GradSampleModule

        return GradSampleModule(module, batch_first=True, loss_reduction="sum")

    def step(
        self,
        params: Sequence[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        batches: Sequence[np.ndarray],
        loss_fn: LossFn,
        *,
        noise: NoiseStream,
        realised: int,
    ) -> float:
        del realised  # the private step divides by the *expected* batch size: the realised one would leak
        step: Callable[..., float] = private_step
        if self.world_size > 1:  # ``batches``: this rank's share; every rank calls once per step
            from dprad.privacy.distributed import distributed_private_step, rank_and_world

            if rank_and_world() != (self.rank, self.world_size):  # else the all-reduce would be skipped
                raise RuntimeError(
                    f"DpSgd on rank {self.rank} of {self.world_size}, but torch.distributed says {rank_and_world()}"
                )
            step = distributed_private_step
        return step(
            params,
            optimizer,
            batches,
            loss_fn,
            max_grad_norm=self.max_grad_norm,
            noise_multiplier=self.noise_multiplier,
            expected_batch_size=self.expected_batch_size,
            noise=noise,
            groups=self.unit_groups,
        )

    def event(self, steps: int | None = None) -> Any:
        return dpsgd_event(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps if steps is None else steps,
        )

    def total_event(self) -> Any:
        return with_releases(self.event(), self.releases)

    def event_dict(self) -> dict[str, Any]:
        return event_to_dict(self.total_event())

    def total_accounting(self) -> Accounting:
        """Epsilon of the whole run: training composed with its other releases."""
        if not self.releases:
            return self.accounting()
        eps = epsilon_of(self.total_event(), delta=self.delta, accountant=self.accountant)
        return Accounting(eps, self.accountant)

    def accounting(self, steps: int | None = None) -> Accounting:
        return compute_epsilon(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps if steps is None else steps,
            delta=self.delta,
            accountant=self.accountant,
        )


@dataclass(frozen=True)
class NonPrivate:
    """Ordinary mini-batch training: fixed-size batches from a reshuffled permutation, no clipping or noise."""

    batch_size: int
    steps: int
    n: int
    private: bool = False

    def sampler(self, rng: np.random.Generator) -> ShuffleSampler:
        return ShuffleSampler(self.n, self.batch_size, rng)

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    def shard(self, indices: np.ndarray) -> np.ndarray:
        return indices  # one process only: train() refuses distributed non-private runs

    def step(
        self,
        params: Sequence[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        batches: Sequence[np.ndarray],
        loss_fn: LossFn,
        *,
        noise: NoiseStream,
        realised: int,
    ) -> float:
        del noise
        return plain_step(params, optimizer, batches, loss_fn, batch_size=realised)

    def accounting(self, steps: int | None = None) -> None:
        return None


def check_sampler(sampler: object, *, private: bool) -> None:
    """The accountant assumes Poisson sampling: a private run with any other sampler is refused."""
    from dprad.errors import DpradError

    if private and not isinstance(sampler, PoissonSampler | PatientPoissonSampler):
        raise DpradError(
            f"a private run must use Poisson sampling (the accountant assumes it), not '{getattr(sampler, 'name', sampler)}'"
        )


__all__ = ["DpSgd", "NonPrivate", "Privacy", "Sampler", "check_sampler"]
