"""What a federation needs from a mode: its trainable parameters out and in, and a site's inputs per split.

A federated site (``dprad.federate.site``) trains and scores a mode through :class:`~dprad.modes.base.Mode`
and reads or writes nothing else of it but this :class:`Distributable` contract: it never reaches into a
mode's attributes. The modes that federate (head, lora) implement it. Not to be confused with
``Mode.distributable``: whether several torchrun processes can share one run's DP-SGD steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from torch import nn

from dprad.errors import DpradError

if TYPE_CHECKING:
    from dprad.modes.base import Mode


@dataclass(frozen=True)
class SplitInputs:
    """One split as a mode trains and scores it: targets and mask (N, L), and for a mode on frozen features
    the rows it reads (N, D); ``features`` is None for a mode that reads token ids."""

    targets: np.ndarray  # (N, L)
    mask: np.ndarray  # (N, L)
    features: np.ndarray | None = None  # (N, D)


@runtime_checkable
class Distributable(Protocol):
    """A mode a federation can train: a round sets the global parameters, trains, and gets them back."""

    def get_parameters(self) -> dict[str, np.ndarray]:
        """What a round sends: the trainable state, name -> array (copies, on the CPU)."""
        ...

    def set_parameters(self, params: Mapping[str, np.ndarray]) -> None:
        """Hold ``params`` (the global model); refuses parameters that are not this mode's."""
        ...

    def split_inputs(self, split: str) -> SplitInputs:
        """The site's inputs of one of the plan's splits (``train``, ``val``, ``test``)."""
        ...

    def site_inputs(self) -> dict[str, np.ndarray]:
        """What a site keeps once, after :meth:`build`, so that a round needs no encoder (arrays for an
        ``.npz``); empty for a mode that keeps none."""
        ...

    def build_on(self, stored: Mapping[str, np.ndarray]) -> nn.Module:
        """Build from what :meth:`site_inputs` returned (an empty mapping: build as usual)."""
        ...


def as_distributable(mode: Mode) -> Distributable:
    """``mode`` as a federation sees it; refuses a mode that does not federate."""
    if not isinstance(mode, Distributable):
        raise DpradError(f"--mode {mode.name} is not federated")
    return mode


__all__ = ["Distributable", "SplitInputs", "as_distributable"]
