"""The messages of a federation, one handler per kind, run at a site; the same handlers answer Flower's
ClientApp and the in-process transport, so both train the same model.

A message is arrays plus a small config (numbers, and from the server its label names); a reply is arrays
plus numbers, plus the site's chosen name in its first reply. Nothing in either is report text, a report
or patient id, a per-example value or a label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dprad.federate.site import Declined, Site

KINDS = ("hello", "train", "thresholds", "evaluate", "refused")


@dataclass(frozen=True)
class Payload:
    """One message's content: named arrays and a config of numbers (or, from the server, strings)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A site's answer; ``error`` set when it declined or failed (then nothing else is meaningful)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    name: str = ""
    error: str = ""
    declined: bool = False
    info: dict[str, str] = field(default_factory=dict)  # short public strings (the hello's fingerprint)


@dataclass(frozen=True)
class SecureAsk:
    """One secure round asked of ``nodes``: each is sent ``model`` and ``config`` and answers with a vector
    and an integer weight (at most ``max_weight``) whose values lie within ``±value_range``; the server
    learns only their weighted mean (:mod:`dprad.federate.secure_sum`)."""

    kind: str  # "train" (updates) or "thresholds" (noisy histograms)
    server_round: int
    nodes: tuple[str, ...]
    model: dict[str, np.ndarray]
    config: dict[str, Any]
    max_weight: float
    value_range: float
    timeout: float


@dataclass(frozen=True)
class SecureResult:
    """What the server learns from one secure round: the weighted mean of the answering sites' vectors,
    who answered, who failed (the reason Flower gave), and each answering site's clear numbers."""

    mean: list[np.ndarray]
    answered: list[str]
    failed: dict[str, str]
    metrics: dict[str, dict[str, float]]


MODEL = "model/"  # the prefix of the model's parameters among a message's arrays (beside grid, thresholds)


def as_model(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Model parameters (a head, or LoRA adapters and head) as a message's arrays."""
    return {f"{MODEL}{k}": np.asarray(v) for k, v in params.items()}


def model_of(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model parameters among a message's arrays (inverse of :func:`as_model`)."""
    return {k.removeprefix(MODEL): v for k, v in arrays.items() if k.startswith(MODEL)}


def _params(p: Payload) -> dict[str, np.ndarray]:
    return model_of(p.arrays)


def _hello(site: Site, p: Payload) -> Reply:
    """Every check that can be made before anything is trained or released: the schema, the site's own
    readiness (thresholds planned, a test split, delta < 1/n), and, at the server, its delta, its
    fingerprint (encoder, mode, prior) and its start head against the others'."""
    labels = tuple(str(p.config.get("labels", "")).split("\n"))
    site.check_schema(labels)
    site.check_ready()
    return Reply(
        arrays=as_model(site.start()),
        metrics={
            "rounds": site.info.rounds,
            "rounds_taken": site.rounds_taken,
            "private": float(site.info.private),
            "units": site.plan.n,  # its training-set size, public to DP-SGD: the weight of its updates
            **_spent(site, planned=True),
        },
        name=site.info.name,
        info={"fingerprint": site.fingerprint()},
    )


def _refused(site: Site, p: Payload) -> Reply:
    site.note_refused(str(p.config.get("reason", "refused by the federation's server")))
    return Reply(name=site.info.name)


def _spent(site: Site, *, planned: bool = False) -> dict[str, float]:
    """The site's own epsilon so far and its delta (numbers about its DP parameters, not its data); with
    ``planned``, only its delta (at hello nothing is spent)."""
    if planned:
        delta = site.plan.cfg.privacy.delta
        return {"delta": float(delta)} if site.info.private and delta is not None else {}
    ledger = site.current_ledger()
    if not ledger.private or ledger.epsilon is None or ledger.delta is None:
        return {}
    return {"epsilon": float(ledger.epsilon), "delta": float(ledger.delta)}


def _train(site: Site, p: Payload) -> Reply:
    params, units = site.train_round(int(p.config["round"]), _params(p))
    return Reply(arrays=as_model(params), metrics={"units": units, **_spent(site)}, name=site.info.name)


def _thresholds(site: Site, p: Payload) -> Reply:
    grid = tuple(float(g) for g in np.asarray(p.arrays["grid"]))
    pos, neg, sigma = site.histograms(_params(p), grid=grid)
    return Reply(
        arrays={"pos": pos, "neg": neg}, metrics={"sigma": sigma, **_spent(site)}, name=site.info.name
    )


def _evaluate(site: Site, p: Payload) -> Reply:
    counts, resamples = site.evaluate(
        _params(p), np.asarray(p.arrays["thresholds"]), n_boot=int(p.config.get("n_boot", 200))
    )
    site.finish(_params(p), np.asarray(p.arrays["thresholds"]), str(p.config.get("rule", "")))
    return Reply(
        arrays={"counts": counts, "resamples": resamples},
        metrics={"reports": len(site.plan.splits.test)},
        name=site.info.name,
    )


HANDLERS: dict[str, Callable[[Site, Payload], Reply]] = {
    "hello": _hello,
    "train": _train,
    "thresholds": _thresholds,
    "evaluate": _evaluate,
    "refused": _refused,
}


def handle(site: Site, kind: str, payload: Payload) -> Reply:
    """Answer one message; a declined round or a refused schema is an answer, not a crash."""
    try:
        return HANDLERS[kind](site, payload)
    except Declined as err:
        return Reply(name=site.info.name, error=str(err), declined=True)


__all__ = [
    "HANDLERS",
    "KINDS",
    "Payload",
    "Reply",
    "SecureAsk",
    "SecureResult",
    "as_model",
    "handle",
    "model_of",
]
