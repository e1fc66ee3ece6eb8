"""What a run decided before training: the frozen :class:`RunPlan` that planning (``dprad.stages.plan``)
produces and that modes, the loop and the ledger read. ``config.json`` is ``plan.to_dict()``."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from dprad.config import RunConfig
from dprad.data.schemas import LabelSchema
from dprad.data.splits import Splits
from dprad.errors import PrivacyInvariantError
from dprad.privacy import Accounting, DpSgd, NonPrivate, epsilon_of


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before training: resolved config, data, n, q, steps, sigma, delta.

    What is derived from it (the privacy object and its patient groups, each phase's epsilon, the ledger's
    parts) is computed once per plan and kept on it (``functools.cached_property``: a frozen dataclass's
    instance dictionary, not its fields); a plan changed by ``dataclasses.replace`` (a federated site's
    rounds) is a new plan that computes its own."""

    cfg: RunConfig
    schema: LabelSchema
    splits: Splits
    model_dir: str
    model_type: str
    n: int  # training units: reports, or patients when the unit of privacy is the patient
    sample_rate: float  # Poisson q (private) or batch / n (non-private)
    steps: int
    noise_multiplier: float | None
    notes: tuple[str, ...] = ()
    canaries: Any = None  # an audit CanarySet mixed into the training split, or None
    threshold_epsilon: float | None = None  # DP thresholds: their share of epsilon, and their noise
    threshold_sigma: float | None = None
    unit: str = "report"
    # LP-FT (lora / full with train.probe): phase 1, the head mode's plan on the same data and units, with
    # its own steps, sample rate, noise and seeds; both phases and the thresholds compose in one ledger
    probe: RunPlan | None = None

    @property
    def private(self) -> bool:
        return self.cfg.private

    @property
    def mode(self) -> str:
        return self.cfg.train.mode

    @property
    def display_mode(self) -> str:
        """The mode as the ledger names it: ``dp-head`` for a private head, ``head`` otherwise."""
        return f"dp-{self.mode}" if self.private else self.mode

    def privacy(self) -> DpSgd | NonPrivate:
        """The privacy object the loop trains with; the same numbers go into the ledger's event. Built
        once per plan (its patient groups too)."""
        return self._privacy

    @functools.cached_property
    def _privacy(self) -> DpSgd | NonPrivate:
        p, t = self.cfg.privacy, self.cfg.train
        if self.private:
            assert self.noise_multiplier is not None and p.max_grad_norm is not None and p.delta is not None
            from dprad.data.sampling import patient_groups

            return DpSgd(
                releases=(*self.probe_releases(), *threshold_releases(self.threshold_sigma)),
                unit=self.unit,
                groups=patient_groups([r.patient_id for r in self.splits.train])
                if self.unit == "patient"
                else None,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=p.max_grad_norm,
                sample_rate=self.sample_rate,
                steps=self.steps,
                delta=p.delta,
                n=self.n,
                accountant=p.accountant,
            )
        assert t.batch_size is not None
        return NonPrivate(batch_size=t.batch_size, steps=self.steps, n=self.n)

    @functools.cached_property
    def accounting(self) -> Accounting | None:
        """The epsilon of this plan's own DP-SGD steps alone (None: not private), computed once per plan."""
        return self.privacy().accounting()

    @functools.cached_property
    def ledger_parts(self) -> tuple[dict[str, Any], ...]:
        """A private run's releases as the ledger's ``parts``, each with its own epsilon and the numbers it
        is recomputed from: the LP-FT probe, training, the DP thresholds (empty when not private). Read
        from what planning calibrated, and computed once per plan."""
        privacy = self.privacy()
        if not isinstance(privacy, DpSgd) or self.accounting is None:
            return ()
        parts: list[dict[str, Any]] = []
        if self.probe is not None:
            if self.probe.accounting is None:
                raise PrivacyInvariantError("a private run's LP-FT probe is not private")
            parts.append(
                {
                    "part": "linear probe (DP-SGD, LP-FT phase 1)",
                    "epsilon": self.probe.accounting.epsilon,
                    **_phase_numbers(self.probe.phase_dict()),
                }
            )
        parts.append(
            {
                "part": "fine-tuning (DP-SGD, LP-FT phase 2)"
                if self.probe is not None
                else "training (DP-SGD)",
                "epsilon": self.accounting.epsilon,
                **_phase_numbers(self.phase_dict()),
            }
        )
        for release in threshold_releases(self.threshold_sigma):
            parts.append(
                {
                    "part": "thresholds (DP: noisy validation score histograms)",
                    "epsilon": epsilon_of(release, delta=privacy.delta, accountant=privacy.accountant),
                    "noise_multiplier": self.threshold_sigma,
                }
            )
        return tuple(parts)

    def probe_releases(self) -> tuple[Any, ...]:
        """Phase 1's DP-SGD event when this run fine-tunes from a private probe (composed with training)."""
        if self.probe is None or not self.private:
            return ()
        privacy = self.probe.privacy()
        assert isinstance(privacy, DpSgd)
        return (privacy.event(),)

    def to_dict(self) -> dict[str, Any]:
        """``config.json``: the resolved config, plus a ``derived`` section recomputed on every load."""
        return {
            **self.cfg.to_dict(),
            "derived": {
                "model_dir": self.model_dir,
                "model_type": self.model_type,
                "schema": self.schema.name,
                "train_size": self.n,
                "unit": self.unit,
                "sample_rate": self.sample_rate,
                "steps": self.steps,
                "noise_multiplier": self.noise_multiplier,
                "canaries": 0 if self.canaries is None else len(self.canaries.reports),
                "threshold_epsilon": self.threshold_epsilon,
                "threshold_noise_multiplier": self.threshold_sigma,
                "probe": None if self.probe is None else self.probe.phase_dict(),
            },
        }

    def phase_dict(self) -> dict[str, Any]:
        """This plan as one training phase: its own schedule and noise (config.json, the ledger's parts)."""
        t, p = self.cfg.train, self.cfg.privacy
        return {
            "mode": self.mode,
            "epochs": t.epochs,
            "lr": t.lr,
            "batch_size": t.batch_size,
            "seed": t.seed,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": p.max_grad_norm if self.private else None,
        }


def _phase_numbers(phase: dict[str, Any]) -> dict[str, Any]:
    """A training phase's own accounting inputs: its part of the ledger can be recomputed from them."""
    keys = ("noise_multiplier", "sample_rate", "steps", "max_grad_norm", "epochs", "lr", "batch_size")
    return {k: phase[k] for k in keys}


def threshold_releases(sigma: float | None) -> tuple[Any, ...]:
    """The DP thresholds' release as a dp-accounting event (a Gaussian on the score histograms)."""
    if sigma is None:
        return ()
    import dp_accounting

    return (dp_accounting.GaussianDpEvent(sigma),)
