"""dprad's DP randomness as it was before secret noise (up to commit fc1467b): every draw a function of
``train.seed`` (the Poisson coins from ``default_rng(seed)``, the gradient noise from a torch generator
seeded ``seed + 1``, the thresholds' histogram noise from ``default_rng(seed + 2)``, LP-FT's probe from its
own seed stream). Used only to rebuild, at test time, the weights of the committed pre-fix runs
(tests/fixtures/run-before-19): weights are never committed, and today's code draws secret noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dprad.privacy.noise import NoiseSource, NoiseStream
from dprad.stages.plan import PROBE_STREAM


class LegacyStream(NoiseStream):
    """One of the pre-fix generators behind the ``NoiseStream`` interface, drawing as the old code drew."""

    def __init__(self, generator: np.random.Generator | None = None, torch_seed: int | None = None) -> None:
        self.generator = generator if generator is not None else np.random.default_rng(0)
        self.torch = torch.Generator().manual_seed(torch_seed) if torch_seed is not None else None

    def gaussian(self, shape: int | tuple[int, ...], *, std: float) -> np.ndarray:
        return self.generator.normal(0.0, std, size=shape)  # one plain draw a value

    def gaussian_like(self, tensors: Sequence[torch.Tensor], *, std: float) -> list[torch.Tensor]:
        return [torch.normal(0.0, std, size=t.shape, generator=self.torch, device=t.device) for t in tensors]

    def state(self) -> dict[str, Any]:
        return {
            "numpy": self.generator.bit_generator.state,
            "torch": None if self.torch is None else self.torch.get_state(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.generator.bit_generator.state = state["numpy"]
        if self.torch is not None:
            self.torch.set_state(state["torch"])


@dataclass(frozen=True)
class LegacySource(NoiseSource):
    seed: int = 0

    @classmethod
    def of(cls, seed: int) -> LegacySource:
        return cls(bytes(32), "written-seed", seed)

    def stream(self, purpose: str) -> NoiseStream:
        if purpose == "sampler":
            return LegacyStream(np.random.default_rng(self.seed))
        if purpose == "gradient":
            return LegacyStream(torch_seed=self.seed + 1)
        if purpose == "thresholds":
            return LegacyStream(np.random.default_rng(self.seed + 2))
        raise KeyError(purpose)

    def child(self, purpose: str) -> NoiseSource:
        if purpose != "probe":
            raise KeyError(purpose)
        return LegacySource.of(int(np.random.SeedSequence([self.seed, PROBE_STREAM]).generate_state(1)[0]))

    def describe(self) -> dict[str, Any]:
        return {}  # what pre-fix ledgers hold: no record of where the noise came from
