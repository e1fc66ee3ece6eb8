"""What the federation's server knows, shared by its plain rounds (:mod:`dprad.federate.server`) and its
secure ones (:mod:`dprad.federate.secure_rounds`): its settings, how it reaches sites, and who is who."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from dprad.errors import DpradError
from dprad.federate.protocol import Payload, Reply
from dprad.privacy.thresholds import DEFAULT_GRID


@dataclass(frozen=True)
class FederationConfig:
    """The server's settings (``dprad federate server`` flags); every site brings its own epsilon."""

    schema: str = "chexpert14"
    rounds: int = 10
    min_clients: int = 2  # a round with fewer answers fails
    wait_for: int | None = None  # sites to wait for before the first round (default: min_clients)
    clients_per_round: int | None = None  # None: every site each round
    client_dp: float | None = None  # noise multiplier of client-level DP at the server
    client_clip: float = 1.0  # L2 clip of each site's update under client-level DP
    client_delta: float = 1e-5
    client_dp_min: int = 5  # client-level DP below this many sites per round is refused unless forced
    # a site whose delta is above this is refused at hello: delta < 1/n holds even for a 1-patient site at
    # delta 0.1, which no one should call private; the default admits sites of 10 or more patients
    max_delta: float = 1e-3
    force: bool = False
    seed: int = 0  # public: the tie-breaking draws of threshold selection (post-processing) only
    # client selection and client-level noise come from a secret key (privacy/noise.py); a number here
    # draws them from this stated seed instead (tests), which federation.json records but never holds
    noise_seed: int | None = None
    timeout: float = 900.0  # seconds a round waits for answers
    wait_timeout: float = 1800.0  # seconds to wait for the first --wait-for sites to connect
    n_boot: int = 200
    grid: tuple[float, ...] = field(default=DEFAULT_GRID)
    # secure aggregation (SecAgg+): the server learns only the weighted sum of the round's updates and of
    # the threshold histograms. None: on when at least three hospitals pass hello over Flower's transport
    secagg: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "grid": list(self.grid)}

    def record(self) -> dict[str, Any]:
        """The settings as ``federation.json`` records them: a stated noise seed is withheld."""
        return {**self.to_dict(), "noise_seed": None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FederationConfig:
        return cls(**{**d, "grid": tuple(d.get("grid", DEFAULT_GRID))})

    def check(self) -> None:
        for flag, value in (
            ("--rounds", self.rounds),
            ("--min-clients", self.min_clients),
            ("n_boot", self.n_boot),
        ):
            if value < 1:
                raise DpradError(f"{flag} {value} must be at least 1")
        positive = [("--timeout", self.timeout), ("wait_timeout", self.wait_timeout)]
        positive += [("--client-clip", self.client_clip), ("client_delta", self.client_delta)]
        positive += [] if self.client_dp is None else [("--client-dp", self.client_dp)]
        for flag, number in positive:
            if not (number > 0 and math.isfinite(number)):
                raise DpradError(f"{flag} {number} must be a positive number")
        if not self.client_delta < 1:
            raise DpradError(f"client_delta {self.client_delta} must be below 1")
        if not 0 < self.max_delta < 1:
            raise DpradError(f"--max-delta {self.max_delta} must be in (0, 1)")
        if self.clients_per_round is not None and self.clients_per_round < self.min_clients:
            raise DpradError(
                f"--clients-per-round {self.clients_per_round} is below --min-clients {self.min_clients}"
            )
        if self.client_dp is None or self.force:
            return
        per_round = self.clients_per_round or self.min_clients
        if per_round < self.client_dp_min:
            raise DpradError(
                f"--client-dp with {per_round} site(s) per round: noise of std {self.client_dp} x {self.client_clip} "
                f"lands on a sum of only {per_round} clipped updates and swamps them; refused below "
                f"--client-dp-min {self.client_dp_min} sites per round (raise --clients-per-round / --min-clients, "
                "or pass --force). Each hospital's patient-level DP-SGD protects its patients either way."
            )


class Transport(Protocol):
    """How the server reaches sites: ``sites`` waits for at least ``minimum`` of them; ``ask`` sends each
    named site its payload and returns its reply (a site that failed or timed out: a Reply with error)."""

    def sites(self, minimum: int, timeout: float) -> list[str]: ...

    def ask(self, kind: str, payloads: dict[str, Payload], timeout: float) -> dict[str, Reply]: ...


@dataclass
class Roster:
    """The server's view of who is who: accepted nodes and their site names, every node greeted, and
    what every site must share (the fingerprint of its encoder, mode and prior, and the start head)."""

    names: dict[str, str] = field(default_factory=dict)  # accepted node id -> site name
    seen: set[str] = field(default_factory=set)  # every node greeted, accepted or refused
    fingerprint: str = ""
    start: dict[str, np.ndarray] = field(default_factory=dict)
    # node id -> the site name its admitted key is bound to (Flower's SuperNode authentication); empty:
    # no admission list, names are whatever the sites say
    admitted: dict[str, str] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)  # nodes that declined a round for good (budget spent)
    units: dict[str, int] = field(default_factory=dict)  # node id -> training units stated at hello (public)
    taken: dict[str, int] = field(default_factory=dict)  # site name -> rounds it has taken (as last counted)
    agreed: dict[str, int] = field(default_factory=dict)  # site name -> rounds its epsilon was calibrated for


__all__ = ["FederationConfig", "Roster", "Transport"]
