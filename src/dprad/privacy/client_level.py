"""Client-level DP for a federation: the server clips each hospital's update and adds noise once.

The unit is a whole hospital: adding or removing one changes the sum of clipped updates by at most
``clip`` in L2, so Gaussian noise of std ``noise_multiplier * clip`` on the sum is one Gaussian mechanism
per round. The sum is divided by a fixed denominator (the number of sites asked that round, chosen before
any answer), never by the number that answered. Each hospital's client-level epsilon composes the rounds
it took part in; no amplification by sampling is claimed (sites are not Poisson-sampled), so the figure is
an upper bound on what the server's mechanism spends on that hospital.

Patient-level DP-SGD inside each hospital is the guarantee that serves patients; this one protects a
hospital's participation, and with 3-10 hospitals its noise is large against the signal (docs/how-to/choosing.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dprad.errors import DpradError
from dprad.privacy.accounting import epsilon_of, event_to_dict
from dprad.privacy.noise import NoiseStream


def flatten(params: dict[str, np.ndarray]) -> np.ndarray:
    """A head's arrays as one vector (P,), in sorted key order."""
    return np.concatenate([np.asarray(params[k], dtype=np.float64).ravel() for k in sorted(params)])


def unflatten(vector: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for k in sorted(like):
        shape, size = np.shape(like[k]), int(np.size(like[k]))
        out[k] = vector[at : at + size].reshape(shape).astype(np.asarray(like[k]).dtype)
        at += size
    return out


def noisy_mean_update(
    updates: Sequence[np.ndarray],
    *,
    clip: float,
    noise_multiplier: float,
    denominator: int,
    noise: NoiseStream,
) -> tuple[np.ndarray, list[float]]:
    """(sum of each update (P,) clipped to L2 norm ``clip``, plus N(0, (sigma clip)^2)) / ``denominator``,
    and each update's norm before clipping."""
    _check(clip=clip, noise_multiplier=noise_multiplier, summed=len(updates), denominator=denominator)
    norms = [float(np.linalg.norm(u)) for u in updates]
    total = np.zeros_like(updates[0]) if updates else np.zeros(0)
    for u, n in zip(updates, norms, strict=True):
        total = total + u * min(1.0, clip / max(n, 1e-12))
    return noisy_mean_of_sum(
        total, clip=clip, noise_multiplier=noise_multiplier, denominator=denominator, noise=noise
    ), norms


def noisy_mean_of_sum(
    total: np.ndarray, *, clip: float, noise_multiplier: float, denominator: int, noise: NoiseStream
) -> np.ndarray:
    """(``total`` (P,), a sum of updates each already clipped to L2 norm ``clip`` (at the sites, under
    secure aggregation), plus N(0, (sigma clip)^2)) / ``denominator``: the same Gaussian mechanism."""
    _check(clip=clip, noise_multiplier=noise_multiplier, summed=0, denominator=denominator)
    return (total + noise.gaussian(total.shape, std=noise_multiplier * clip)) / denominator


def _check(*, clip: float, noise_multiplier: float, summed: int, denominator: int) -> None:
    if not clip > 0 or not noise_multiplier > 0:
        raise DpradError(
            f"client-level DP: clip {clip} and noise multiplier {noise_multiplier} must be positive"
        )
    if denominator < 1 or summed > denominator:
        raise DpradError(f"client-level DP: {summed} updates over a fixed denominator {denominator}")


def client_event(noise_multiplier: float, rounds: int) -> Any:
    """One hospital's client-level event: a Gaussian per round it took part in."""
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)


def client_ledger(
    *, noise_multiplier: float, clip: float, delta: float, rounds_by_site: dict[str, int]
) -> dict[str, Any]:
    """The server's ledger of client-level DP: each hospital's epsilon for the rounds it took part in."""
    per_site = {}
    for site, rounds in rounds_by_site.items():
        event = client_event(noise_multiplier, rounds)
        eps = epsilon_of(event, delta=delta) if rounds else 0.0
        per_site[site] = {"rounds": rounds, "epsilon": eps, "event": event_to_dict(event)}
    return {
        "unit": "hospital (its whole contribution)",
        "noise_multiplier": noise_multiplier,
        "clip": clip,
        "delta": delta,
        "accountant": "pld (dp-accounting), Gaussian per round, no amplification by sampling",
        "per_site": per_site,
    }


__all__ = ["client_event", "client_ledger", "flatten", "noisy_mean_of_sum", "noisy_mean_update", "unflatten"]
