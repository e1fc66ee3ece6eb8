"""The server's side of secure aggregation (SecAgg+, :mod:`dprad.federate.secure_sum`): whether a
federation sums securely, a round whose updates the server sees only as their units-weighted sum, and the
thresholds' histograms summed the same way. The plain rounds are in :mod:`dprad.federate.server`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from dprad.errors import DpradError
from dprad.federate.protocol import SecureAsk, SecureResult
from dprad.privacy.noise import NoiseSource

if TYPE_CHECKING:
    from dprad.federate.federation import FederationConfig, Roster, Transport


class SecureTransport(Protocol):
    """A transport that can also sum the sites' vectors securely (Flower's, with SecAgg+): ``nodes`` are
    each sent ``model`` and ``config`` and the server gets back only the weighted mean of their vectors."""

    def secure_mean(self, ask: SecureAsk) -> SecureResult: ...


def secure_transport(cfg: FederationConfig, transport: Transport, accepted: int) -> SecureTransport | None:
    """The transport to sum through securely, or None: off when asked, or by default below three
    hospitals or over the in-process transport (one process holds every site: nothing to hide)."""
    from dprad.federate.secure_sum import AUTO_SITES, check_sites

    can = hasattr(transport, "secure_mean")
    per_round = min(accepted, cfg.clients_per_round or accepted)
    if cfg.secagg is False or (cfg.secagg is None and (not can or per_round < AUTO_SITES)):
        return None
    if not can:
        raise DpradError(
            "--secagg: dprad federate local runs every hospital in this one process, so there is no server to "
            "hide an update from; secure aggregation runs over dprad federate server and client"
        )
    check_sites(per_round)
    return cast(SecureTransport, transport)


def describe_secure(on: bool, accepted: int) -> dict[str, Any]:
    """federation.json's account of the aggregation: what the server could see of each hospital."""
    if not on:
        return {
            "on": False,
            "server_sees": "each hospital's update and noisy threshold histograms (each under its own DP)",
        }
    from dprad.federate.secure_sum import HISTOGRAM_RANGE, QUANTIZATION, UPDATE_RANGE, threshold_for

    return {
        "on": True,
        "protocol": "SecAgg+ (Flower's SecAggPlusWorkflow and secaggplus_mod)",
        "server_sees": "only the units-weighted sum of the round's updates and the sum of the noisy "
        "histograms; in clear: who answered, each site's units (stated at hello), epsilon, delta and sigma",
        "threshold": f"{threshold_for(accepted)} of {accepted}: a hospital's vector is revealed only to "
        "a server colluding with that many hospitals; a round survives that many fewer answering",
        "quantization_levels": QUANTIZATION,
        "update_range": UPDATE_RANGE,
        "histogram_range": HISTOGRAM_RANGE,
    }


def secure_round(
    cfg: FederationConfig,
    transport: SecureTransport,
    r: int,
    chosen: list[str],
    model: dict[str, np.ndarray],
    noise: NoiseSource,
    roster: Roster,
) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]]:
    """One round through SecAgg+: the server learns the units-weighted mean of the updates (under
    client-level DP: the equal-weighted sum of updates each site clipped, to which it adds its noise)."""
    from dprad.federate.secure_sum import MIN_SITES, UPDATE_RANGE
    from dprad.privacy.client_level import flatten, noisy_mean_of_sum, unflatten

    names, dp = roster.names, cfg.client_dp is not None
    spent = [n for n in chosen if roster.taken.get(names[n], 0) >= roster.agreed.get(names[n], cfg.rounds)]
    asked = [n for n in chosen if n not in spent]
    record: dict[str, Any] = {
        "round": r,
        "asked": [names[n] for n in asked],
        "declined": {names[n]: "has taken every round its epsilon was calibrated for" for n in spent},
        "secure_aggregation": True,
    }
    if len(asked) < max(cfg.min_clients, MIN_SITES):
        raise DpradError(
            f"round {r}: {len(asked)} site(s) left with budget for a secure round, fewer than "
            f"{max(cfg.min_clients, MIN_SITES)} (--min-clients; a secure sum needs {MIN_SITES})"
        )
    res = transport.secure_mean(
        SecureAsk(
            kind="train",
            server_round=r,
            nodes=tuple(asked),
            model=model,
            config={"client_clip": cfg.client_clip} if dp else {},
            max_weight=1.0 if dp else float(max(roster.units[n] for n in asked)),
            value_range=max(UPDATE_RANGE, cfg.client_clip) if dp else UPDATE_RANGE,
            timeout=cfg.timeout,
        )
    )
    record["answered"] = {names[n]: roster.units[n] for n in res.answered}
    record["failed"] = {names[n]: why for n, why in res.failed.items()}
    if len(res.answered) < cfg.min_clients:
        raise DpradError(
            f"round {r}: {len(res.answered)} of {len(asked)} site(s) completed the secure round, fewer than "
            f"--min-clients {cfg.min_clients}"
        )
    mean = dict(zip(sorted(model), res.mean, strict=True))
    if dp:
        total = flatten(mean) * len(res.answered)  # the sum of the clipped updates
        step = noisy_mean_of_sum(
            total,
            clip=cfg.client_clip,
            noise_multiplier=cfg.client_dp or 0.0,
            denominator=len(chosen),
            noise=noise.stream(f"client-dp-{r}"),
        )
        new = unflatten(flatten(model) + step, model)
        record["update_norms"] = "clipped at each hospital before the secure sum: the server never sees them"
    else:
        new = {k: np.asarray(model[k], np.float64) + np.reshape(mean[k], np.shape(model[k])) for k in model}
    record["epsilon"] = {names[n]: m["epsilon"] for n, m in res.metrics.items() if "epsilon" in m}
    for n in res.answered:
        roster.taken[names[n]] = roster.taken.get(names[n], 0) + 1
    return new, record, spent


def secure_histograms(
    cfg: FederationConfig, secure: SecureTransport, nodes: Sequence[str], model: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, float]]]:
    """The sum over ``nodes`` of their noisy validation histograms (L, G+1) through SecAgg+ (equal
    weights: the mean times the number of sites), and each releasing site's clear numbers."""
    from dprad.federate.secure_sum import HISTOGRAM_RANGE

    res = secure.secure_mean(
        SecureAsk(
            kind="thresholds",
            server_round=0,
            nodes=tuple(nodes),
            model=model,
            config={"grid": ",".join(repr(float(g)) for g in cfg.grid)},  # legacy configs hold no lists
            max_weight=1.0,
            value_range=HISTOGRAM_RANGE,
            timeout=cfg.timeout,
        )
    )
    k = len(res.answered)  # equal weights: the sum is the mean times the number of sites
    pos, neg = np.asarray(res.mean[0]) * k, np.asarray(res.mean[1]) * k
    if not any(m.get("sigma", 0.0) for m in res.metrics.values()):  # exact counts: integers before rounding
        pos, neg = np.rint(pos), np.rint(neg)
    return pos, neg, res.metrics


__all__ = ["SecureTransport", "describe_secure", "secure_histograms", "secure_round", "secure_transport"]
