"""What a run decided before training: the frozen :class:`RunPlan` that planning (``dprad.stages.plan``)
produces and that modes, the loop and the ledger read. ``config.json`` is ``plan.to_dict()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dprad.config import RunConfig
from dprad.data.schemas import LabelSchema
from dprad.data.splits import Splits
from dprad.privacy import DpSgd, NonPrivate


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before training: resolved config, data, n, q, steps, sigma, delta."""

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
        """The privacy object the loop trains with; the same numbers go into the ledger's event."""
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


def threshold_releases(sigma: float | None) -> tuple[Any, ...]:
    """The DP thresholds' release as a dp-accounting event (a Gaussian on the score histograms)."""
    if sigma is None:
        return ()
    import dp_accounting

    return (dp_accounting.GaussianDpEvent(sigma),)
