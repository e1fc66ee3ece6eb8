"""The privacy ledger: what ``privacy.json`` says about one run, and the board's plain-language statement."""

from __future__ import annotations

import platform
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from dprad.errors import DpradError


@dataclass(frozen=True)
class PrivacyLedger:
    """What ``privacy.json`` says about one run. Every number is the run's own."""

    private: bool
    privacy_unit: str
    dataset_size: int
    target_epsilon: float | None
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    max_grad_norm: float | None
    sample_rate: float | None
    expected_batch_size: float | None
    logical_batch_size: str | None
    steps: int
    epochs: float
    sampler: str
    accountant: str | None
    accountant_note: str
    mode: str
    trainable_parameters: int
    protected: list[str] = field(default_factory=list)
    not_protected: list[str] = field(default_factory=list)
    library_versions: dict[str, str] = field(default_factory=dict)
    statement: str = ""
    # the dp-accounting event the epsilon was computed from (event_to_dict), so anyone can recompute it
    event: dict[str, Any] | None = None
    # the releases that make up the total epsilon, e.g. [{"part": "training", "epsilon": ...}, ...]
    parts: list[dict[str, Any]] = field(default_factory=list)
    canaries: int = 0  # audit canaries mixed into the training split (never in reported metrics)
    # where the run's DP draws came from (privacy/noise.py:NoiseSource.describe): {"source": "os-entropy" |
    # "stated-seed", "generator": ..., "gaussian": ...}. Empty in ledgers written before noise was secret:
    # those runs drew their noise from a seed written in config.json (see ``noise_source``)
    noise: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "privacy.json") -> PrivacyLedger:
        """A ledger as ``to_dict`` wrote it. Fields added since a run was written take their defaults;
        a missing required field or an unknown key is an error (a ledger is never read half-understood)."""
        if not isinstance(d, dict):
            raise DpradError(f"{source}: not a privacy ledger (expected a JSON object)")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise DpradError(f"{source}: not a dprad privacy ledger (unknown key(s) {unknown})")
        missing = sorted(
            n
            for n, f in known.items()
            if n not in d and f.default is MISSING and f.default_factory is MISSING
        )
        if missing:
            raise DpradError(f"{source}: not a complete privacy ledger (missing {missing})")
        return cls(**d)

    @property
    def spent_epsilon(self) -> float:
        """The epsilon the run spent: ``math.inf`` for a non-private run."""
        return float(self.epsilon) if self.private and self.epsilon is not None else float("inf")

    def part_epsilon(self, *words: str) -> tuple[float, str] | None:
        """The first of ``parts`` whose name mentions one of ``words`` (e.g. "threshold"), and its name."""
        for p in self.parts:
            name = str(p.get("part") or "")
            if p.get("epsilon") is not None and any(w in name.lower() for w in words):
                return float(p["epsilon"]), name
        return None


# ``PrivacyLedger.noise_source`` values
NOISE_SECRET = "os-entropy"  # keyed with OS entropy never written down: the guarantee's assumption holds
NOISE_STATED = "stated-seed"  # privacy.noise_seed: reproducible, and only as private as the seed is secret
NOISE_WRITTEN = "written-seed"  # ledgers written before secret noise: the seed ships in config.json


def noise_source(ledger: PrivacyLedger) -> str:
    """Where a private run's DP draws came from: NOISE_SECRET, NOISE_STATED or NOISE_WRITTEN (a ledger
    written before dprad drew secret noise: its noise was seeded from ``train.seed`` in config.json)."""
    source = str(ledger.noise.get("source") or NOISE_WRITTEN)
    if source not in (NOISE_SECRET, NOISE_STATED, NOISE_WRITTEN):
        raise DpradError(f"privacy.json: unknown noise source {source!r}")
    return source


def noise_warning(ledger: PrivacyLedger) -> str | None:
    """The sentence a private run whose noise is not secret must carry in the first lines of its model card,
    its export refusal and its serving refusal; None when the noise is secret (or the run is not private)."""
    if not ledger.private:
        return None
    source = noise_source(ledger)
    if source == NOISE_STATED:
        return (
            "Its DP noise was drawn from a stated seed (privacy.noise_seed): anyone who knows that seed can regenerate "
            "the noise and subtract it, so the guarantee below holds only while the seed stays secret. "
            "Retrain without a stated seed before sharing."
        )
    if source == NOISE_WRITTEN:
        return (
            "Its DP noise was seeded from a value written in its own config.json (dprad before secret noise): "
            "whoever holds the run or its export can regenerate the noise, and against them the guarantee "
            "below does not hold. Retrain with this version of dprad before sharing."
        )
    return None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("dprad", "torch", "transformers", "peft", "opacus", "dp-accounting", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def guarantee_statement(ledger: PrivacyLedger, *, model_name: str, thresholds: str = "val") -> str:
    """One plain-language paragraph for a governance board. The only count it quotes is the number of
    training units n, which DP-SGD treats as public (it fixes the sample rate and each step's scale) and
    which the statement names as released outside the guarantee."""
    unit = ledger.privacy_unit
    if not ledger.private:
        return (
            f"This model was trained WITHOUT differential privacy on {ledger.dataset_size} reports. "
            "It carries no formal privacy guarantee: it may memorise and reveal details of the reports it was "
            "trained on, and should not be shared outside the institution that holds them."
        )
    parts = "; ".join(f"{p['part']}: epsilon {p['epsilon']:.4g}" for p in ledger.parts)
    if thresholds == "dp":
        th = (
            "Its per-label decision thresholds were chosen on the validation reports under DP "
            f"(noisy score histograms) and are included in epsilon ({parts}). "
        )
        not_covered = ""
    else:
        th = ""
        not_covered = (
            "the validation reports (used WITHOUT DP to choose thresholds), " if thresholds == "val" else ""
        )
    group = (
        "The unit of privacy is one report: a patient with k reports is protected at roughly k times that "
        "epsilon (group privacy). "
        if unit == "report"
        else "The unit of privacy is one patient: all of a patient's reports together. "
    )
    warning = noise_warning(ledger)
    noise = (
        f"{warning} "
        if warning
        else "Every random draw of the mechanism (the Poisson samples and the noise) came from a secret key "
        "drawn from the operating system's entropy and written nowhere that is shipped. "
    )
    return (
        f"This model was trained with DP-SGD ({ledger.mode}) on {ledger.dataset_size} {unit}s and satisfies "
        f"({ledger.epsilon:.4g}, {ledger.delta:.1e})-differential privacy with respect to the addition or "
        f"removal of any single {unit} in its training split: each of the {ledger.steps} steps drew a Poisson "
        f"sample (each {unit} in with probability {ledger.sample_rate:.4g}), clipped every {unit}'s gradient to "
        f"norm {ledger.max_grad_norm:g} and added Gaussian noise of standard deviation "
        f"{ledger.noise_multiplier:.4g} x {ledger.max_grad_norm:g}; the {ledger.accountant.upper() if ledger.accountant else ''} "
        f"accountant computed epsilon. {noise}{th}{group}Not covered: the base model {model_name} and its own "
        f"pre-training data, {not_covered}the reports sent to the model after release, and the label schema "
        "and hyper-parameters chosen by people who had seen the data. Released outside the guarantee: the "
        f"number of training {unit}s ({ledger.dataset_size}), which DP-SGD treats as public (it sets the "
        "sample rate and the scale of each step)."
    )
