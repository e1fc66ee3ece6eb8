"""One hospital of a federation: its reports, its plan, its own DP-SGD and its own ledger.

A site is a run that trains in rounds. ``prepare_site`` plans it like ``dprad train`` (teacher labels,
patient splits, the rule prior, the public warm start), with the whole federation's schedule in the
plan: ``rounds`` rounds of ``steps_per_round`` Poisson-sampled DP-SGD steps each, the noise calibrated
so that every round plus the site's share of the DP thresholds spends exactly its own ``--epsilon``.
In the head mode the frozen encoder's features are computed once and kept in the site directory; each
round starts from the global parameters it is sent (a head, or LoRA adapters and head) and takes its
DP-SGD steps.

The site's ledger (``privacy.json``, a :class:`~dprad.privacy.ledger.PrivacyLedger`) is rewritten after
every round it computes, before the update leaves: the event composes the DP-SGD steps of every round
taken, and the thresholds' Gaussian once released. A round that would take the site past its budget is
declined. What leaves a site: model parameters, counts, and the noisy histograms; never text, ids or
labels.

Everything in the site directory stays at the hospital (``plan.pkl`` holds its reports).
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dprad import io
from dprad.config import RunConfig
from dprad.data.reports import Report
from dprad.errors import DpradError
from dprad.modes.base import Mode
from dprad.modes.distributable import as_distributable
from dprad.privacy.ledger import PrivacyLedger
from dprad.privacy.noise import NoiseSource
from dprad.run import files
from dprad.run.plan import RunPlan
from dprad.run.record import FEDERATED, Thresholds

SITE = "site.json"  # what the site agreed to: rounds, steps per round, its noise; written once
PLAN = "plan.pkl"  # the site's RunPlan (its reports included): never leaves the hospital
ARRAYS = "features.npz"  # head inputs, targets and masks per split
START_SEED = 0  # the head's initialisation before the public warm start, the same at every site
LEDGER_STATE = "rounds.json"  # the rounds this site took part in (its ledger is built from it)
# the site's secret DP key (privacy/noise.py), owner-only: every round's batches and noise and its threshold
# histograms are drawn from it. It never leaves the hospital: no message, update or file the server sees
# holds anything from which the site's draws can be regenerated
NOISE_KEY = files.NOISE_KEY
LOCK = "client.lock"  # held (flock) by the hospital's running client: its node answers only while held
REFUSED = "refused.json"  # the federation's reason for refusing this site at hello (read by its client)


class Declined(DpradError):
    """A site that will not take a round: its budget would be exceeded, or its schema differs."""


@dataclass(frozen=True)
class SiteInfo:
    """``site.json``: the schedule the site's noise was calibrated for."""

    name: str
    rounds: int  # the most rounds the site takes part in; its epsilon covers exactly these
    steps_per_round: int
    labels: tuple[str, ...]
    schema: str
    params: int  # trainable parameters of the mode's model: what each round sends
    private: bool
    mode: str = "head"  # head (a linear head on stored features) or lora (adapters + head, --no-probe)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = SITE) -> SiteInfo:
        from dataclasses import fields

        known = {f.name for f in fields(cls)}
        if set(d) - known or "labels" not in d:
            raise DpradError(
                f"{source}: not a site of this dprad version (keys {sorted(set(d) - known) or sorted(d)}): "
                "prepare it again with dprad federate client --overwrite"
            )
        try:
            return cls(**{**d, "labels": tuple(d["labels"])})
        except TypeError as err:
            raise DpradError(f"{source}: not a complete site description ({err})") from None


def prepare_site(
    cfg: RunConfig,
    out: Path,
    *,
    name: str,
    rounds: int,
    local_epochs: float | None,
    reports: Sequence[Report] | None = None,
) -> Site:
    """Plan the site and compute its features once. ``local_epochs`` per round (default: the head's
    epochs spread over the rounds, so a whole federation trains the epochs one run would). ``reports``:
    the site's reports when not read from ``cfg.data.path`` (``cfg.data.schema`` then names the schema)."""
    from dprad.modes import get_mode
    from dprad.stages.plan import plan_run

    kind = "head" if cfg.train.mode == "auto" else cfg.train.mode
    if kind not in ("head", "lora"):
        raise DpradError(
            f"dprad federate: --mode {cfg.train.mode} is not federated; use --mode head or --mode lora --no-probe"
        )
    if kind == "lora" and cfg.train.probe is not False:
        raise DpradError(
            "dprad federate --mode lora: every site starts from one public start, so pass --no-probe "
            "(LP-FT across a federation is not built; --mode head federates the probe itself)"
        )
    if rounds < 1:
        raise DpradError(f"--rounds {rounds} must be at least 1")
    cfg = cfg.with_(train=replace(cfg.train, mode=kind))
    total = (
        cfg.train.epochs or get_mode(kind).defaults(private=cfg.private, epsilon=cfg.privacy.epsilon).epochs
    )
    per_round = local_epochs if local_epochs is not None else total / rounds
    if not (per_round > 0 and math.isfinite(per_round)):
        raise DpradError(f"--local-epochs {local_epochs} must be a positive number")
    # planned once, for whole rounds: the plan counts every round's steps, the noise covers them all
    plan = plan_run(
        cfg.with_(train=replace(cfg.train, epochs=per_round * rounds)),
        reports,
        require_positives=False,
        rounds=rounds,
    )
    steps = plan.steps // rounds
    mode = get_mode(kind)(plan, notes=list(plan.notes))
    federated = as_distributable(mode)
    with torch.random.fork_rng():
        torch.manual_seed(START_SEED)  # one start for every site whatever its own --seed: it is public
        mode.build()
    start = federated.get_parameters()
    out.mkdir(parents=True, exist_ok=True)
    # a fresh site (a previous preparation's stored inputs too: a round builds on whatever is stored)
    for stale in (SITE, files.METRICS, files.PRIVACY, "messages.jsonl", NOISE_KEY, REFUSED, ARRAYS):
        (out / stale).unlink(missing_ok=True)
    if cfg.privacy.noise_seed is None:
        NoiseSource.secret().save(out / NOISE_KEY)
    shutil.rmtree(out / "updates", ignore_errors=True)
    arrays = federated.site_inputs()  # the head's inputs, once: a round needs no encoder (LoRA keeps none)
    if arrays:
        io.write_with(out / ARRAYS, lambda tmp: _savez(tmp, arrays))
    saved = pickle.dumps(replace(plan, notes=tuple(mode.notes)))
    io.write_with(out / PLAN, lambda tmp: _write_bytes(tmp, saved))
    io.write_with(out / "start.npz", lambda tmp: _savez(tmp, start))
    info = SiteInfo(
        name=name,
        rounds=rounds,
        steps_per_round=steps,
        labels=tuple(plan.schema.labels),
        schema=plan.schema.name,
        params=sum(int(np.size(v)) for v in start.values()),
        private=plan.private,
        mode=kind,
    )
    io.write_json(out / files.CONFIG, plan.to_dict())
    io.write_json(out / LEDGER_STATE, {"rounds": [], "thresholds_released": False})
    io.write_json(out / SITE, info.to_dict())  # last: its presence marks a prepared site
    return Site(out)


def client_running(path: Path) -> bool:
    """Whether the hospital's ``dprad federate client`` for the site at ``path`` is running: it holds an
    exclusive lock on ``client.lock`` for as long as it lives (the kernel drops it when the process dies,
    however it dies). A node answers only while it does."""
    import fcntl

    try:
        fd = os.open(path / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if this process took it
    return False


def hold_lock(path: Path) -> int:
    """Take the site's client lock (see :func:`client_running`); returns its descriptor, held until closed."""
    import fcntl

    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DpradError(f"{path}: another dprad federate client is running this site") from None
    return fd


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as f:  # a file object: np.savez would add ".npz" to a path without it
        np.savez(f, **arrays)  # type: ignore[arg-type]


class Site:
    """A prepared site directory; each method is one message's work."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / SITE).exists():
            raise DpradError(f"{self.path}: not a prepared dprad federation site (no {SITE})")
        self.info = SiteInfo.from_dict(files.read_object(self.path / SITE), source=str(self.path / SITE))
        self.state = files.read_object(self.path / LEDGER_STATE)
        self._plan: RunPlan | None = None
        self._ledger: PrivacyLedger | None = None  # the ledger as last written by this process

    @property
    def plan(self) -> RunPlan:
        if self._plan is None:
            self._plan = pickle.loads((self.path / PLAN).read_bytes())  # the site's own file, written by it
        return self._plan

    def noise(self) -> NoiseSource:
        """The site's DP randomness: its secret key, or the stated ``--noise-seed``."""
        seed = self.plan.cfg.privacy.noise_seed
        return NoiseSource.for_run(seed) if seed is not None else NoiseSource.load(self.path / NOISE_KEY)

    @property
    def rounds_taken(self) -> int:
        return len(self.state["rounds"])

    def start(self) -> dict[str, np.ndarray]:
        """The head every site starts from: the public warm start (or zeros), a function of public data."""
        with np.load(self.path / "start.npz") as z:
            return {k: z[k] for k in z.files}

    def check_schema(self, labels: tuple[str, ...]) -> None:
        if labels != self.info.labels:
            raise Declined(
                f"site {self.info.name}: its label schema ({self.info.schema}: {', '.join(self.info.labels)}) "
                f"differs from the federation's ({', '.join(labels)}); refused before any training"
            )

    def check_ready(self) -> None:
        """What the site can tell at hello about itself, before anything is trained or released: it can
        pay for the federated thresholds, evaluate, and its delta is below 1/n of its privacy units."""
        plan, name = self.plan, self.info.name
        if plan.private and not plan.threshold_sigma:
            raise Declined(
                f"site {name}: planned without DP thresholds (--thresholds dp; its validation split may be "
                "empty): it could not release its share of the federated thresholds; refused at hello"
            )
        if not plan.splits.test:
            raise Declined(f"site {name}: has no test split to evaluate on (see --split); refused at hello")
        delta = plan.cfg.privacy.delta
        if plan.private and delta is not None and not delta < 1 / max(plan.n, 1):
            raise Declined(
                f"site {name}: delta {delta:g} is not below 1/n = 1/{plan.n} of its privacy units "
                "(such a delta allows leaking whole records); refused at hello"
            )

    def fingerprint(self) -> str:
        """A digest of what must be equal across the federation's sites: the mode, the encoder (its files'
        names, sizes and leading bytes: no local path leaves), pooling, length, LoRA shape, prior and warm
        start. Equal fingerprints and equal start heads: the sites train the same model."""
        import hashlib

        from dprad.local_models import resolve_model_dir

        c = self.plan.cfg
        h = hashlib.sha256()
        for part in (
            self.info.mode,
            c.model.pooling,
            c.model.max_length,
            c.train.rule_prior,
            c.train.public_warm_start,
            (c.lora.r, c.lora.alpha, c.lora.target_modules, c.lora.layers)
            if self.info.mode == "lora"
            else None,
        ):
            h.update(repr(part).encode())
        try:
            model_dir: Path | None = resolve_model_dir(c.model.name)
        except DpradError:  # an encoder not found locally: its name stands for it
            model_dir = None
        if model_dir is None or not model_dir.is_dir():
            h.update(str(c.model.name).encode())
        else:
            for f in sorted(x for x in model_dir.rglob("*") if x.is_file()):
                h.update(f"{f.relative_to(model_dir)}:{f.stat().st_size}".encode())
                with f.open("rb") as fh:
                    h.update(fh.read(1 << 20))
        return h.hexdigest()[:32]

    def note_refused(self, reason: str) -> None:
        """The federation refused this site: its client reads the reason and stops."""
        io.write_json(self.path / REFUSED, {"reason": reason})

    def _mode(self, params: dict[str, np.ndarray]) -> Mode:
        """The site's mode, built on what the site stored (a head's inputs; nothing for LoRA), holding
        ``params``."""
        from dprad.modes import get_mode

        stored: dict[str, np.ndarray] = {}
        if (self.path / ARRAYS).is_file():
            with np.load(self.path / ARRAYS) as z:
                stored = {k: z[k] for k in z.files}
        mode = get_mode(self.info.mode)(self.plan, notes=[])
        federated = as_distributable(mode)
        with torch.random.fork_rng():
            torch.manual_seed(START_SEED)
            federated.build_on(stored)
        federated.set_parameters(params)
        return mode

    def train_round(
        self, server_round: int, params: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], int]:
        """One round of the site's DP-SGD from the global head -> (its new head, its training units)."""
        from dprad.stages.fit import fit

        if self.rounds_taken >= self.info.rounds:
            raise Declined(
                f"site {self.info.name}: declines round {server_round}: it has taken the {self.info.rounds} "
                f"round(s) its epsilon {self.plan.cfg.privacy.epsilon} was calibrated for, and one more would "
                "spend beyond its budget"
            )
        taken = self.rounds_taken
        mode = self._mode(params)
        seed = int(np.random.SeedSequence([self.plan.cfg.train.seed, 0xFED, taken]).generate_state(1)[0])
        plan = replace(
            self.plan,
            steps=self.info.steps_per_round,
            cfg=self.plan.cfg.with_(train=replace(self.plan.cfg.train, seed=seed)),
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            fitted = fit(plan, mode, plan.privacy(), noise=self.noise().child(f"round-{taken}"))
        out = as_distributable(mode).get_parameters()
        rounds = [*self.state["rounds"], {"round": server_round, "loss": fitted.history["step_loss"]}]
        self._save_state(rounds=rounds)  # counted before the update leaves the site
        updates = self.path / "updates"  # what this site sent, kept at the site (its own model, no data)
        updates.mkdir(exist_ok=True)
        io.write_with(updates / f"round-{server_round}.npz", lambda tmp: _savez(tmp, out))
        return out, self.plan.n

    def _save_state(self, **changes: Any) -> None:
        self.state = {**self.state, **changes}
        io.write_json(self.path / LEDGER_STATE, self.state)
        self._ledger = None
        io.write_json(self.path / files.PRIVACY, self.current_ledger().to_dict())

    def current_ledger(self) -> PrivacyLedger:
        """The ledger of every release so far (accounted once per process: PLD takes seconds)."""
        if self._ledger is None:
            self._ledger = self.ledger(
                rounds=self.rounds_taken, thresholds=bool(self.state["thresholds_released"])
            )
        return self._ledger

    def _history(self, rounds: int) -> dict[str, list[Any]]:
        """history.json of the first ``rounds`` rounds: every step's loss, and which rounds they were."""
        taken = self.state["rounds"][:rounds]
        return {"step_loss": [x for r in taken for x in r["loss"]], "rounds": [r["round"] for r in taken]}

    def ledger(self, *, rounds: int, thresholds: bool) -> PrivacyLedger:
        """The site's ledger after ``rounds`` rounds: the same :func:`build_ledger` a single run uses, over
        the steps it took (every round's Poisson steps compose into one DP-SGD event)."""
        from dprad.stages.finish import build_ledger
        from dprad.stages.fit import Fitted

        plan = replace(
            self.plan,
            steps=rounds * self.info.steps_per_round,
            threshold_sigma=self.plan.threshold_sigma if thresholds else None,
        )
        sampler = "Poisson (per patient)" if self.plan.unit == "patient" else "Poisson"
        fitted = Fitted(self._history(rounds), f"{sampler}; {rounds} federated round(s)")
        return build_ledger(plan, plan.privacy(), fitted, self.info.params, noise=self.noise())

    def histograms(
        self, params: dict[str, np.ndarray], *, grid: tuple[float, ...]
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """The site's share of the federated thresholds: its validation score histograms (L, G+1) with
        Gaussian noise of std sigma * sqrt(L), released once, and sigma (0 when not private)."""
        from dprad.privacy.thresholds import one_report_per_patient, score_histograms

        if self.state["thresholds_released"]:
            raise Declined(f"site {self.info.name}: has already released its threshold histograms once")
        mode = self._mode(params)
        inputs = as_distributable(mode).split_inputs("val")
        y, m, p = inputs.targets, inputs.mask, mode.probs("val")
        if self.plan.unit == "patient":
            val = self.plan.splits.val
            keep = one_report_per_patient([r.patient_id for r in val], [r.id for r in val])
            y, m, p = y[keep], m[keep], p[keep]
        pos, neg = score_histograms(y, p, m, grid)
        sigma = float(self.plan.threshold_sigma or 0.0)
        if self.plan.private and not sigma:
            raise DpradError(f"site {self.info.name}: planned without DP thresholds (--thresholds dp)")
        if sigma:
            noise = self.noise().stream("thresholds")
            std = sigma * math.sqrt(len(self.info.labels))
            pos, neg = pos + noise.gaussian(pos.shape, std=std), neg + noise.gaussian(neg.shape, std=std)
        self._save_state(thresholds_released=True)  # counted before the histograms leave
        return pos, neg, sigma

    def evaluate(
        self, params: dict[str, np.ndarray], thresholds: np.ndarray, *, n_boot: int = 200
    ) -> tuple[np.ndarray, np.ndarray]:
        """The global model on the site's test split: counts (L, 4) of TP, FP, FN, TN per label at
        ``thresholds``, and the same under ``n_boot`` patient-level bootstrap resamples (B, L, 4)."""
        from dprad.metrics.counts import bootstrap_counts

        mode = self._mode(params)
        test = self.plan.splits.test
        if not test:
            raise DpradError(f"site {self.info.name}: has no test split to evaluate on (see --split)")
        inputs = as_distributable(mode).split_inputs("test")
        y, m, p = inputs.targets, inputs.mask, mode.probs("test")
        return bootstrap_counts(y, p, m, thresholds, [r.patient_id for r in test], n_boot=n_boot)

    def finish(self, params: dict[str, np.ndarray], thresholds: np.ndarray, rule: str) -> None:
        """Write the site's run directory around the global model with the code a single run writes its
        own with (:func:`~dprad.run.write.write_finished_run`): ``dprad report``, ``predict`` and ``export``
        then read it like any run; ``metrics.json`` (the marker of a finished site) last but one,
        ``privacy.json`` (its ledger) last."""
        from dprad.privacy.accounting import gaussian_epsilon
        from dprad.run.write import write_finished_run

        mode = self._mode(params)
        plan = self.plan
        private = bool(self.state["thresholds_released"]) and plan.private
        shipped = Thresholds(
            tuple(float(t) for t in thresholds),
            "val (DP)" if private else "val",
            f"{FEDERATED}{rule}",
            epsilon=gaussian_epsilon(
                float(plan.threshold_sigma or 0), delta=float(plan.cfg.privacy.delta or 0)
            )
            if private
            else None,
        )
        probs_for = functools.cache(mode.probs)  # each split scored once

        write_finished_run(
            self.path,
            plan,
            probs_for=probs_for,
            thresholds=shipped,
            save_model=mode.save,
            history=self._history(self.rounds_taken),
            notes=[
                *plan.notes,
                f"federated: the global model of {self.rounds_taken} round(s) this site took part in",
            ],
            ledger=self.current_ledger(),
        )
