"""Privacy accounting, noise calibration and the privacy ledger.

One DP-SGD step on a Poisson sample (each report in with probability ``q``) with per-report clipping to
``C`` and Gaussian noise of std ``sigma * C`` is the dp-accounting event
``PoissonSampled(q, Gaussian(sigma))``; a run is that event composed ``steps`` times. Three accountants:

- ``pld`` (default): privacy-loss distributions, Google's dp-accounting. Tight.
- ``rdp``: Rényi DP with orders extended to 20,000, so that eps = 0.01 is reachable (opacus's default
  orders stop at 63, which bottoms out near eps = 0.1 at delta = 1e-5; eps = 0.01 wants orders near 2,000).
  Large orders are integers: dp-accounting's series for fractional orders fails to converge there.
- ``prv``: opacus's PRV accountant. It can fail numerically at some (sigma, q, steps, delta); dprad then
  falls back to PLD and the ledger says so.
"""

from __future__ import annotations

import math
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dprad.errors import DpradError

ACCOUNTANTS = ("pld", "rdp", "prv")
RDP_ORDERS = tuple(
    float(x)
    for x in np.concatenate(
        [np.linspace(1.1, 10.9, 50), np.arange(11, 100), np.unique(np.geomspace(100, 20_000, 24).astype(int))]
    )
)


@dataclass(frozen=True)
class Accounting:
    """An epsilon together with the accountant that actually produced it."""

    epsilon: float
    accountant: str
    note: str = ""


def _check(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> None:
    if not 0 < sample_rate <= 1:
        raise DpradError(f"sample rate q={sample_rate} must be in (0, 1]")
    if not 0 < delta < 1:
        raise DpradError(f"--delta {delta} must be in (0, 1)")
    if steps < 0:
        raise DpradError(f"steps={steps} must be >= 0")
    if noise_multiplier < 0:
        raise DpradError(f"--noise-multiplier {noise_multiplier} must be >= 0")


def _event(noise_multiplier: float, sample_rate: float, steps: int) -> Any:
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)),
        steps,
    )


def _dp_accountant(name: str) -> Any:
    from dp_accounting import pld, rdp

    if name == "pld":
        return pld.PLDAccountant()
    if name == "rdp":
        return rdp.RdpAccountant(orders=list(RDP_ORDERS))
    raise DpradError(f"--accountant '{name}' is not one of {', '.join(ACCOUNTANTS)}")


def compute_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "pld"
) -> Accounting:
    """Epsilon spent by ``steps`` Poisson-sampled Gaussian steps at ``delta``."""
    _check(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    if accountant not in ACCOUNTANTS:
        raise DpradError(f"--accountant '{accountant}' is not one of {', '.join(ACCOUNTANTS)}")
    if steps == 0:
        return Accounting(0.0, accountant)
    if noise_multiplier == 0:
        return Accounting(math.inf, accountant)
    if accountant == "prv":
        from opacus.accountants import PRVAccountant

        try:
            prv = PRVAccountant()
            prv.history = [(noise_multiplier, sample_rate, steps)]
            eps = float(prv.get_epsilon(delta=delta))
            if math.isfinite(eps) and eps >= 0:
                return Accounting(eps, "prv")
            note = f"PRV returned {eps}"
        except Exception as err:  # noqa: BLE001 - any numerical failure falls back, and is recorded
            note = f"PRV failed ({type(err).__name__}: {err})"
        fallback = compute_epsilon(
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            delta=delta,
            accountant="pld",
        )
        return Accounting(fallback.epsilon, "pld", note=f"{note}; fell back to PLD")
    acc = _dp_accountant(accountant)
    acc.compose(_event(noise_multiplier, sample_rate, steps))
    return Accounting(float(acc.get_epsilon(delta)), accountant)


def calibrate_noise(
    *, target_epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str = "pld"
) -> float:
    """The smallest noise multiplier whose run spends at most ``target_epsilon`` (and within 1% of it)."""
    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise DpradError(f"--epsilon {target_epsilon} must be a positive number")
    _check(noise_multiplier=1.0, sample_rate=sample_rate, steps=steps, delta=delta)
    if steps == 0:
        raise DpradError("the run has 0 planned steps: nothing to calibrate")

    def eps(sigma: float) -> float:
        return compute_epsilon(
            noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
        ).epsilon

    lo, hi = 0.1, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 4
        if hi > 1e6:
            raise DpradError(f"--epsilon {target_epsilon} is out of reach: sigma would exceed 1e6")
    while eps(lo) <= target_epsilon and lo > 1e-3:
        lo, hi = lo / 4, lo
    # bisection on log(sigma): eps(sigma) is decreasing; stop when eps is within 0.5% below the target
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        e = eps(mid)
        if e > target_epsilon:
            lo = mid
        else:
            hi = mid
            if e >= target_epsilon * 0.995:
                break
    return hi


def default_delta(n: int) -> float:
    """The largest power of ten at most 1/(10 n): comfortably below 1/n, as the DP literature asks."""
    if n < 1:
        raise DpradError("the training split is empty: no delta can be chosen")
    return float(10 ** math.floor(math.log10(0.1 / n)))


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("dprad", "torch", "transformers", "peft", "opacus", "dp-accounting", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def guarantee_statement(ledger: PrivacyLedger, *, model_name: str, val_size: int) -> str:
    """One plain-language paragraph for a governance board."""
    if not ledger.private:
        return (
            f"This model was trained WITHOUT differential privacy on {ledger.dataset_size} reports. "
            "It carries no formal privacy guarantee: it may memorise and reveal details of the reports it was "
            "trained on, and should not be shared outside the institution that holds them."
        )
    return (
        f"This model was trained with DP-SGD ({ledger.mode}) on {ledger.dataset_size} reports and satisfies "
        f"({ledger.epsilon:.4g}, {ledger.delta:.1e})-differential privacy with respect to the addition or "
        f"removal of any single report in its training split: each of the {ledger.steps} steps drew a Poisson "
        f"sample (each report in with probability {ledger.sample_rate:.4g}), clipped every report's gradient to "
        f"norm {ledger.max_grad_norm:g} and added Gaussian noise of standard deviation "
        f"{ledger.noise_multiplier:.4g} x {ledger.max_grad_norm:g}; the {ledger.accountant.upper() if ledger.accountant else ''} "
        f"accountant computed epsilon. The unit of privacy is one report: a patient with k reports is protected "
        f"at roughly k times that epsilon (group privacy). Not covered: the base model {model_name} and its own "
        f"pre-training data, the {val_size} validation reports (used without DP for model selection and "
        "thresholds), and the label schema and hyper-parameters chosen by people who had seen the data."
    )
