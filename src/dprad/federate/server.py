"""The federation's server loop, over any transport (Flower's deployment engine, or in-process).

hello (schema check, the shared public start) -> ``rounds`` rounds of local DP-SGD and averaging ->
thresholds from the sum of the sites' noisy histograms -> each site evaluates the global model on its own
test split and sends counts -> ``federation.json`` with each hospital's and the network's metrics, and the
global model in ``model/``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dprad import io
from dprad.errors import DpradError
from dprad.federate.federation import FederationConfig, Roster, Transport
from dprad.federate.protocol import Payload, Reply, as_model, model_of
from dprad.federate.secure_rounds import (
    SecureTransport,
    describe_secure,
    secure_histograms,
    secure_round,
    secure_transport,
)
from dprad.privacy.noise import NoiseSource, NoiseStream

FEDERATION = "federation.json"


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


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return set(a) == set(b) and all(np.shape(a[k]) == np.shape(b[k]) and np.allclose(a[k], b[k]) for k in b)


def _reference(ok: dict[str, Reply]) -> tuple[str, dict[str, np.ndarray]]:
    """The fingerprint and start most accepted sites share (ties: the first node's)."""
    groups: list[tuple[str, dict[str, np.ndarray], int]] = []
    for r in ok.values():
        fp, start = r.info.get("fingerprint", ""), model_of(r.arrays)
        i = next((i for i, g in enumerate(groups) if g[0] == fp and _same(start, g[1])), None)
        if i is None:
            groups.append((fp, start, 1))
        else:
            groups[i] = (fp, groups[i][1], groups[i][2] + 1)
    fp, start, _ = max(groups, key=lambda g: g[2])  # max keeps the first of equal counts
    return fp, start


def _checked(
    cfg: FederationConfig, replies: dict[str, Reply], admitted: dict[str, str]
) -> tuple[dict[str, Reply], dict[str, str]]:
    """The hello replies split into accepted and refused (node -> reason): the site's own refusal, a name
    other than the one its admitted key is bound to, or a delta above the federation's --max-delta."""
    ok, refused = {}, {}
    for n, r in replies.items():
        delta = r.metrics.get("delta")
        bound = admitted.get(n) if admitted else r.name
        if r.error:
            refused[n] = r.error
        elif bound != r.name:
            refused[n] = (
                f"a node admitted as {bound!r} presents the name {r.name!r}: one hospital cannot answer as "
                "another; refused at hello"
            )
        elif delta is not None and delta > cfg.max_delta:
            refused[n] = (
                f"site {r.name}: its delta {delta:g} is above the federation's --max-delta {cfg.max_delta:g} "
                "(a delta that large does not protect its patients); refused at hello"
            )
        else:
            ok[n] = r
    return ok, refused


def _greet(
    cfg: FederationConfig,
    transport: Transport,
    nodes: Sequence[str],
    log: dict[str, Any],
    roster: Roster,
    *,
    first: bool,
) -> list[str]:
    """Hello to ``nodes``: every check that needs no training (schema, the site's own readiness and
    delta, the shared fingerprint and start), before any site trains or releases anything. Refused nodes
    are told why (their clients stop); returns the accepted nodes, recorded in ``log`` and ``roster``."""
    from dprad.data.schemas import load_schema

    labels = load_schema(cfg.schema).labels
    replies = transport.ask(
        "hello", {n: Payload(config={"labels": "\n".join(labels)}) for n in nodes}, cfg.timeout
    )
    roster.seen.update(nodes)
    ok, refused = _checked(cfg, replies, roster.admitted)
    if first and ok:
        named = [r.name for r in ok.values()]
        if len(set(named)) < len(named):
            raise DpradError(
                f"two sites share a --name ({', '.join(sorted(named))}): every hospital needs its own"
            )
        roster.fingerprint, roster.start = _reference(ok)
    for n in list(ok):
        r = ok[n]
        if r.info.get("fingerprint", "") != roster.fingerprint or not _same(model_of(r.arrays), roster.start):
            refused[n] = (
                f"site {r.name} starts from another model than the federation's: every site must use the "
                "same encoder, --mode, --max-length, --rule-prior and --public-warm-start (the shared start "
                "is public); refused at hello"
            )
            del ok[n]
    for n, reason in refused.items():
        log["refused"][replies[n].name or n] = reason
    if refused:  # tell them: their clients stop with the reason instead of waiting
        transport.ask(
            "refused", {n: Payload(config={"reason": refused[n]}) for n in refused}, min(cfg.timeout, 30.0)
        )
    for n, r in ok.items():
        entry = log["sites"].setdefault(r.name, {"nodes": []})
        entry.update(
            rounds_agreed=int(r.metrics["rounds"]),
            rounds_taken_at_hello=int(r.metrics.get("rounds_taken", 0)),
            private=bool(r.metrics.get("private", 0.0)),
        )
        entry["nodes"].append(n)
        roster.names[n] = r.name
        roster.units[n] = int(r.metrics.get("units", 0))
        roster.taken[r.name] = int(r.metrics.get("rounds_taken", 0))
        roster.agreed[r.name] = int(r.metrics["rounds"])
    return list(ok)


def _hello(
    cfg: FederationConfig, transport: Transport, log: dict[str, Any], roster: Roster
) -> tuple[list[str], dict[str, np.ndarray]]:
    log["refused"], log["sites"] = {}, {}
    nodes = transport.sites(cfg.wait_for or cfg.min_clients, cfg.wait_timeout)
    accepted = _greet(cfg, transport, nodes, log, roster, first=True)
    if len(accepted) < cfg.min_clients:
        raise DpradError(
            f"{len(accepted)} site(s) passed the hello checks (schema '{cfg.schema}', thresholds, delta, "
            f"encoder), fewer than --min-clients {cfg.min_clients}; nothing was trained: "
            + "; ".join(log["refused"].values())
        )
    return accepted, {k: np.asarray(v, dtype=np.float64) for k, v in roster.start.items()}


def _connected(transport: Transport, nodes: list[str]) -> list[str]:
    """``nodes`` less those the transport no longer lists (a SuperNode gone past its heartbeats, e.g. a
    hospital that stopped its client): nobody waits --timeout for a node known to be gone."""
    listed = set(transport.sites(0, 0))
    return [n for n in nodes if n in listed]


def _rejoin(
    cfg: FederationConfig, transport: Transport, active: list[str], log: dict[str, Any], roster: Roster
) -> list[str]:
    """Sites that connected since the last round (a restarted client is a new node of the same site):
    greeted, checked, and put in place of their old node (one site, its nodes listed under its name).
    An accepted node that was gone and is back (an admitted hospital's node keeps its id across restarts)
    takes part again unless it declined for good."""
    listed = transport.sites(0, 0)
    new = [n for n in listed if n not in roster.seen]
    present = {roster.names[a] for a in active}
    back = [n for n in listed if n in roster.names and n not in active and n not in roster.done]
    active = active + [n for n in back if roster.names[n] not in present]
    if not new:
        return active
    for n in _greet(cfg, transport, new, log, roster, first=False):
        name = roster.names[n]
        active = [a for a in active if roster.names[a] != name] + [n]
    return active


def _round(
    cfg: FederationConfig,
    transport: Transport,
    r: int,
    active: list[str],
    model: dict[str, np.ndarray],
    noise: NoiseSource,
    roster: Roster,
    secure: SecureTransport | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]]:
    """One round -> (the new global head, the round's record, the sites that declined for good)."""
    names = roster.names
    chosen = (
        active
        if cfg.clients_per_round is None
        else sorted(
            noise.stream(f"clients-{r}")
            .generator.choice(active, size=min(cfg.clients_per_round, len(active)), replace=False)
            .tolist()
        )
    )
    if secure is not None:
        return secure_round(cfg, secure, r, chosen, model, noise, roster)
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
    for n in answered:
        roster.taken[names[n]] = roster.taken.get(names[n], 0) + 1
    return new, record, [n for n, x in replies.items() if x.declined]


def _histograms(
    cfg: FederationConfig,
    transport: Transport,
    nodes: Sequence[str],
    model: dict[str, np.ndarray],
    secure: SecureTransport | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, float]]]:
    """The sum over sites of their (noisy) validation histograms, (L, G+1) each, and each releasing
    site's numbers (sigma, epsilon, delta); under secure aggregation the server sees only the sum."""
    if secure is None:
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
        return pos, neg, {n: x.metrics for n, x in replies.items()}
    return secure_histograms(cfg, secure, nodes, model)


def _thresholds(
    cfg: FederationConfig,
    transport: Transport,
    nodes: Sequence[str],
    model: dict[str, np.ndarray],
    names: dict[str, str],
    secure: SecureTransport | None = None,
) -> dict[str, Any]:
    from dprad.privacy.thresholds import select_thresholds

    pos, neg, released = _histograms(cfg, transport, nodes, model, secure)
    n_labels = np.shape(pos)[0]
    std = math.sqrt(sum(m["sigma"] ** 2 for m in released.values()) * n_labels)
    values = select_thresholds(
        pos, neg, cfg.grid, noise_std=std, rng=np.random.default_rng([cfg.seed, 0x7E5])
    )
    private = std > 0
    return {
        "fitted_on": "val (DP)" if private else "val",
        "rule": (
            f"max F1 over a {len(cfg.grid)}-point grid on the sum of {len(released)} hospitals' "
            + (
                "noisy (Gaussian) validation score histograms, each paid for in its own ledger"
                if private
                else "exact validation score histograms (NOT private)"
            )
        ),
        "noise_std": std,
        "sites": [names[n] for n in released],
        "secure_aggregation": secure is not None,
        "epsilon": {names[n]: m["epsilon"] for n, m in released.items() if "epsilon" in m},
        "delta": {names[n]: m["delta"] for n, m in released.items() if "delta" in m},
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
        site = log["sites"][name]
        last = [r["epsilon"][name] for r in log["rounds"] if name in r.get("epsilon", {})]
        out[name] = {
            "private": site["private"],
            "epsilon": log["thresholds"].get("epsilon", {}).get(name, last[-1] if last else None),
            "delta": log["thresholds"].get("delta", {}).get(name),
            "rounds": sum(name in r.get("answered", {}) for r in log["rounds"]),
            "rounds_agreed": site["rounds_agreed"],
        }
    return out


def run_federation(
    cfg: FederationConfig, transport: Transport, out: Path, *, admitted: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run the whole federation and write ``out`` (``federation.json`` last); returns what it wrote.
    ``admitted``: node id -> the site name its admitted key is bound to (a node presenting another name
    is refused at hello)."""
    import torch

    from dprad.data.schemas import load_schema
    from dprad.privacy.client_level import client_ledger

    cfg.check()
    noise = NoiseSource.for_run(cfg.noise_seed)  # client selection and client-level DP: never cfg.seed
    log: dict[str, Any] = {"config": cfg.record()}
    if cfg.client_dp is not None:
        log["noise"] = noise.describe()
    roster = Roster(admitted=dict(admitted or {}))
    active, model = _hello(cfg, transport, log, roster)
    names = roster.names
    secure = secure_transport(cfg, transport, len(active))
    log["secure_aggregation"] = describe_secure(secure is not None, len(active))
    rounds: list[dict[str, Any]] = []
    for r in range(1, cfg.rounds + 1):
        active = _connected(transport, _rejoin(cfg, transport, active, log, roster))
        if len(active) < cfg.min_clients:
            rounds.append(
                {"round": r, "stopped": f"{len(active)} site(s) left with budget, fewer than --min-clients"}
            )
            break
        started = time.monotonic()
        model, record, done = _round(cfg, transport, r, active, model, noise, roster, secure)
        record["seconds"] = round(time.monotonic() - started, 3)  # the round's wall time at the server
        rounds.append(record)
        active = [n for n in active if n not in done]
        roster.done.update(done)
    log["rounds"] = rounds
    latest = {name: n for n, name in names.items()}  # a restarted site: its newest node
    everyone = _connected(transport, list(latest.values()))
    log["thresholds"] = _thresholds(cfg, transport, everyone, model, names, secure)
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
