"""The federation's server loop, over any transport (Flower's deployment engine, or in-process).

hello (schema check, the shared public start) -> ``rounds`` rounds of local DP-SGD and averaging ->
thresholds from the sum of the sites' noisy histograms -> each site evaluates the global model on its own
test split and sends counts -> ``federation.json`` with each hospital's and the network's metrics, and the
global model in ``model/``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dprad import io
from dprad.errors import DpradError
from dprad.federate.protocol import Payload, Reply, as_model, model_of
from dprad.privacy.noise import NoiseSource, NoiseStream
from dprad.privacy.thresholds import DEFAULT_GRID

FEDERATION = "federation.json"


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
    force: bool = False
    seed: int = 0  # public: the tie-breaking draws of threshold selection (post-processing) only
    # client selection and client-level noise come from a secret key (privacy/noise.py); a number here
    # draws them from this stated seed instead (tests), which federation.json records but never holds
    noise_seed: int | None = None
    timeout: float = 900.0  # seconds a round waits for answers
    wait_timeout: float = 1800.0  # seconds to wait for the first --wait-for sites to connect
    n_boot: int = 200
    grid: tuple[float, ...] = field(default=DEFAULT_GRID)

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


def _average(replies: dict[str, Reply]) -> dict[str, np.ndarray]:
    """FedAvg: each site's parameters weighted by its training units."""
    units = [r.metrics["units"] for r in replies.values()]
    first = next(iter(replies.values())).arrays
    return {
        k: np.average(
            np.stack([np.asarray(r.arrays[k], dtype=np.float64) for r in replies.values()]),
            axis=0,
            weights=units,
        )
        for k in first
    }


def _client_dp_step(
    cfg: FederationConfig,
    model: dict[str, np.ndarray],
    replies: dict[str, Reply],
    asked: int,
    noise: NoiseStream,
) -> tuple[dict[str, np.ndarray], list[float]]:
    from dprad.privacy.client_level import flatten, noisy_mean_update, unflatten

    assert cfg.client_dp is not None
    base = flatten(model)
    updates = [flatten(r.arrays) - base for r in replies.values()]
    mean, norms = noisy_mean_update(
        updates, clip=cfg.client_clip, noise_multiplier=cfg.client_dp, denominator=asked, noise=noise
    )
    return unflatten(base + mean, model), norms


def _greet(
    cfg: FederationConfig, transport: Transport, nodes: Sequence[str], log: dict[str, Any]
) -> dict[str, dict[str, np.ndarray]]:
    """Hello to ``nodes``: the schema check (a site with another schema refuses before any training);
    returns each accepting node's start head, and records the sites in ``log``."""
    from dprad.data.schemas import load_schema

    labels = load_schema(cfg.schema).labels
    replies = transport.ask(
        "hello", {n: Payload(config={"labels": "\n".join(labels)}) for n in nodes}, cfg.timeout
    )
    for n, r in replies.items():
        if r.error:
            log["refused"][r.name or n] = r.error
        else:
            log["sites"][n] = {
                "name": r.name,
                "rounds_agreed": int(r.metrics["rounds"]),
                "private": bool(r.metrics.get("private", 0.0)),
            }
    return {n: model_of(r.arrays) for n, r in replies.items() if not r.error}


def _same_start(
    starts: dict[str, dict[str, np.ndarray]], first: dict[str, np.ndarray], names: dict[str, str]
) -> None:
    for n, s in starts.items():
        if set(s) != set(first) or any(
            np.shape(s[k]) != np.shape(first[k]) or not np.allclose(s[k], first[k]) for k in first
        ):
            raise DpradError(
                f"site {names[n]} starts from another head than the federation's: every site must use the "
                "same encoder, --rule-prior and --public-warm-start (the shared start is public)"
            )


def _hello(
    cfg: FederationConfig, transport: Transport, log: dict[str, Any]
) -> tuple[list[str], dict[str, np.ndarray]]:
    log["refused"], log["sites"] = {}, {}
    starts = _greet(cfg, transport, transport.sites(cfg.wait_for or cfg.min_clients, cfg.wait_timeout), log)
    if len(starts) < cfg.min_clients:
        raise DpradError(
            f"{len(starts)} site(s) accepted the schema '{cfg.schema}', fewer than --min-clients "
            f"{cfg.min_clients}: " + "; ".join(log["refused"].values())
        )
    named = [log["sites"][n]["name"] for n in starts]
    if len(set(named)) < len(named):
        raise DpradError(
            f"two sites share a --name ({', '.join(sorted(named))}): every hospital needs its own"
        )
    first = next(iter(starts.values()))
    _same_start(starts, first, {n: log["sites"][n]["name"] for n in starts})
    return list(starts), {k: np.asarray(v, dtype=np.float64) for k, v in first.items()}


def _rejoin(
    cfg: FederationConfig,
    transport: Transport,
    active: list[str],
    model0: dict[str, np.ndarray],
    log: dict[str, Any],
) -> list[str]:
    """Sites that connected since the last round (a restarted client is a new node of the same site
    name): greeted, checked, and put in place of their old node; returns the new active list."""
    known = set(log["sites"]) | set(log["refused"])
    new = [n for n in transport.sites(0, 0) if n not in known]
    if not new:
        return active
    starts = _greet(cfg, transport, new, log)
    _same_start(starts, model0, {n: log["sites"][n]["name"] for n in starts})
    for n in starts:
        name = log["sites"][n]["name"]
        active = [a for a in active if log["sites"][a]["name"] != name] + [n]
    return active


def _round(
    cfg: FederationConfig,
    transport: Transport,
    r: int,
    active: list[str],
    model: dict[str, np.ndarray],
    noise: NoiseSource,
    names: dict[str, str],
) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]]:
    """One round -> (the new global head, the round's record, the sites that declined for good)."""
    chosen = (
        active
        if cfg.clients_per_round is None
        else sorted(
            noise.stream(f"clients-{r}")
            .generator.choice(active, size=min(cfg.clients_per_round, len(active)), replace=False)
            .tolist()
        )
    )
    payload = Payload(arrays=as_model(model), config={"round": r})
    replies = transport.ask("train", {n: payload for n in chosen}, cfg.timeout)
    answered = {
        n: Reply(arrays=model_of(x.arrays), metrics=x.metrics) for n, x in replies.items() if not x.error
    }
    record: dict[str, Any] = {
        "round": r,
        "asked": [names[n] for n in chosen],
        "answered": {names[n]: int(x.metrics["units"]) for n, x in answered.items()},
        "declined": {names[n]: x.error for n, x in replies.items() if x.declined},
        "failed": {names[n]: x.error for n, x in replies.items() if x.error and not x.declined},
    }
    if len(answered) < cfg.min_clients:
        raise DpradError(
            f"round {r}: {len(answered)} of {len(chosen)} site(s) answered, fewer than --min-clients "
            f"{cfg.min_clients} ({'; '.join(f'{k}: {v}' for k, v in {**record['declined'], **record['failed']}.items())})"
        )
    if cfg.client_dp is None:
        new = _average(answered)
    else:
        new, norms = _client_dp_step(cfg, model, answered, len(chosen), noise.stream(f"client-dp-{r}"))
        record["update_norms"] = {names[n]: v for n, v in zip(answered, norms, strict=True)}
    record["epsilon"] = {names[n]: x.metrics["epsilon"] for n, x in replies.items() if "epsilon" in x.metrics}
    return new, record, [n for n, x in replies.items() if x.declined]


def _thresholds(
    cfg: FederationConfig,
    transport: Transport,
    nodes: Sequence[str],
    model: dict[str, np.ndarray],
    names: dict[str, str],
) -> dict[str, Any]:
    from dprad.privacy.thresholds import select_thresholds

    payload = Payload(arrays={**as_model(model), "grid": np.asarray(cfg.grid)})
    replies = {
        n: x
        for n, x in transport.ask("thresholds", {n: payload for n in nodes}, cfg.timeout).items()
        if not x.error
    }
    if not replies:
        raise DpradError("no site released its threshold histograms: the global model has no thresholds")
    pos = np.sum([np.asarray(x.arrays["pos"]) for x in replies.values()], axis=0)  # (L, G+1)
    neg = np.sum([np.asarray(x.arrays["neg"]) for x in replies.values()], axis=0)
    n_labels = np.shape(pos)[0]
    std = math.sqrt(sum(x.metrics["sigma"] ** 2 for x in replies.values()) * n_labels)
    values = select_thresholds(
        pos, neg, cfg.grid, noise_std=std, rng=np.random.default_rng([cfg.seed, 0x7E5])
    )
    private = std > 0
    return {
        "fitted_on": "val (DP)" if private else "val",
        "rule": (
            f"max F1 over a {len(cfg.grid)}-point grid on the sum of {len(replies)} hospitals' "
            + (
                "noisy (Gaussian) validation score histograms, each paid for in its own ledger"
                if private
                else "exact validation score histograms (NOT private)"
            )
        ),
        "noise_std": std,
        "sites": [names[n] for n in replies],
        "epsilon": {names[n]: x.metrics["epsilon"] for n, x in replies.items() if "epsilon" in x.metrics},
        "delta": {names[n]: x.metrics["delta"] for n, x in replies.items() if "delta" in x.metrics},
        "values": values.tolist(),
    }


def _evaluate(
    cfg: FederationConfig,
    transport: Transport,
    nodes: Sequence[str],
    model: dict[str, np.ndarray],
    thresholds: dict[str, Any],
    labels: Sequence[str],
    names: dict[str, str],
) -> dict[str, Any]:
    from dprad.metrics.counts import count_evaluation

    payload = Payload(
        arrays={**as_model(model), "thresholds": np.asarray(thresholds["values"])},
        config={"n_boot": cfg.n_boot, "rule": thresholds["rule"]},
    )
    replies = transport.ask("evaluate", {n: payload for n in nodes}, cfg.timeout)
    ok = {n: x for n, x in replies.items() if not x.error}
    out: dict[str, Any] = {"sites": {}, "failed": {names[n]: x.error for n, x in replies.items() if x.error}}
    for n, x in ok.items():
        out["sites"][names[n]] = {
            **count_evaluation(x.arrays["counts"], x.arrays["resamples"], labels=labels),
            "reports": int(x.metrics["reports"]),
        }
    if ok:
        counts = sum(np.asarray(x.arrays["counts"]) for x in ok.values())
        resamples = sum(np.asarray(x.arrays["resamples"]) for x in ok.values())
        out["overall"] = {
            **count_evaluation(np.asarray(counts), np.asarray(resamples), labels=labels),
            "reports": sum(int(x.metrics["reports"]) for x in ok.values()),
            "bootstrap": "patients resampled within each hospital, resamples summed (stratified by hospital)",
        }
    return out


def _guarantees(log: dict[str, Any], nodes: Sequence[str], names: dict[str, str]) -> dict[str, Any]:
    """Each hospital's own patient-level guarantee as its replies stated it: epsilon (its ledger after its
    last release), delta, and the rounds it took part in."""
    out = {}
    for n in nodes:
        name = names[n]
        last = [r["epsilon"][name] for r in log["rounds"] if name in r.get("epsilon", {})]
        out[name] = {
            "private": log["sites"][n]["private"],
            "epsilon": log["thresholds"].get("epsilon", {}).get(name, last[-1] if last else None),
            "delta": log["thresholds"].get("delta", {}).get(name),
            "rounds": sum(name in r.get("answered", {}) for r in log["rounds"]),
            "rounds_agreed": log["sites"][n]["rounds_agreed"],
        }
    return out


def run_federation(cfg: FederationConfig, transport: Transport, out: Path) -> dict[str, Any]:
    """Run the whole federation and write ``out`` (``federation.json`` last); returns what it wrote."""
    import torch

    from dprad.data.schemas import load_schema
    from dprad.privacy.client_level import client_ledger

    cfg.check()
    noise = NoiseSource.for_run(cfg.noise_seed)  # client selection and client-level DP: never cfg.seed
    log: dict[str, Any] = {"config": cfg.record()}
    if cfg.client_dp is not None:
        log["noise"] = noise.describe()
    active, model = _hello(cfg, transport, log)
    model0 = dict(model)
    rounds: list[dict[str, Any]] = []
    for r in range(1, cfg.rounds + 1):
        active = _rejoin(cfg, transport, active, model0, log)
        names = {n: v["name"] for n, v in log["sites"].items()}
        if len(active) < cfg.min_clients:
            rounds.append(
                {"round": r, "stopped": f"{len(active)} site(s) left with budget, fewer than --min-clients"}
            )
            break
        model, record, done = _round(cfg, transport, r, active, model, noise, names)
        rounds.append(record)
        active = [n for n in active if n not in done]
    log["rounds"] = rounds
    names = {n: v["name"] for n, v in log["sites"].items()}
    latest = {name: n for n, name in names.items()}  # a restarted site: its newest node
    everyone = [n for n in names if latest[names[n]] == n]
    log["thresholds"] = _thresholds(cfg, transport, everyone, model, names)
    labels = load_schema(cfg.schema).labels
    log["evaluation"] = _evaluate(cfg, transport, everyone, model, log["thresholds"], labels, names)
    log["guarantees"] = _guarantees(log, everyone, names)
    if cfg.client_dp is not None:
        taken = {name: g["rounds"] for name, g in log["guarantees"].items()}
        log["client_level_dp"] = client_ledger(
            noise_multiplier=cfg.client_dp, clip=cfg.client_clip, delta=cfg.client_delta, rounds_by_site=taken
        )
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in model.items()}
    (out / "model").mkdir(parents=True, exist_ok=True)
    io.write_with(out / "model" / "global.pt", lambda tmp: torch.save(state, tmp))
    io.write_json(out / FEDERATION, log)
    return log


__all__ = ["FEDERATION", "FederationConfig", "Transport", "run_federation"]
