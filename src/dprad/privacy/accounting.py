"""Privacy accounting and noise calibration over dp-accounting events.

One DP-SGD step on a Poisson sample (each unit in with probability ``q``) with per-unit clipping to ``C``
and Gaussian noise of std ``sigma * C`` is the dp-accounting event ``PoissonSampled(q, Gaussian(sigma))``;
a run is that event composed ``steps`` times. Accountants are looked up by name:

- ``pld`` (default): privacy-loss distributions, Google's dp-accounting. Tight.
- ``rdp``: Rényi DP with orders extended to 20,000, so that eps = 0.01 is reachable (opacus's default
  orders stop at 63, which bottoms out near eps = 0.1 at delta = 1e-5; eps = 0.01 wants orders near 2,000).
  Large orders are integers: dp-accounting's series for fractional orders fails to converge there.
- ``prv``: opacus's PRV accountant (DP-SGD events only). It can fail numerically at some
  (sigma, q, steps, delta); dprad then falls back to PLD and the ledger says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dprad.errors import DpradError

RDP_ORDERS = tuple(
    float(x)
    for x in np.concatenate(
        [np.linspace(1.1, 10.9, 50), np.arange(11, 100), np.unique(np.geomspace(100, 20_000, 24).astype(int))]
    )
)


def _pld() -> Any:
    from dp_accounting import pld

    return pld.PLDAccountant()


# Calibration searches at a coarse PLD discretisation, then confirms at full precision (the ledger's
# epsilon is always the full-precision one). dp-accounting's PLD is pessimistic, so a coarse grid
# over-states epsilon by about its interval: the coarse sigma is on the safe side, and an interval of
# 1/1000 of the target keeps it within about 0.1% of the target. bench/calibration_speed.py measures it.
COARSE_PLD_SHARE = 1e-3


def _coarse_pld(target_epsilon: float) -> Any:
    from dp_accounting import pld

    interval = min(1e-2, max(1e-4, COARSE_PLD_SHARE * target_epsilon))  # 1e-4: dp-accounting's default
    return pld.PLDAccountant(value_discretization_interval=interval)


def _rdp() -> Any:
    from dp_accounting import rdp

    return rdp.RdpAccountant(orders=list(RDP_ORDERS))


# name -> a fresh dp-accounting accountant; "prv" is opacus's and is handled in compute_epsilon
DP_ACCOUNTANTS: dict[str, Callable[[], Any]] = {"pld": _pld, "rdp": _rdp}
ACCOUNTANTS = (*DP_ACCOUNTANTS, "prv")


@dataclass(frozen=True)
class Accounting:
    """An epsilon together with the accountant that actually produced it."""

    epsilon: float
    accountant: str
    note: str = ""


def check_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise DpradError(f"--accountant '{name}' is not one of {', '.join(ACCOUNTANTS)}")
    return name


def _check(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> None:
    if not 0 < sample_rate <= 1:
        raise DpradError(f"sample rate q={sample_rate} must be in (0, 1]")
    if not 0 < delta < 1:
        raise DpradError(f"--delta {delta} must be in (0, 1)")
    if steps < 0:
        raise DpradError(f"steps={steps} must be >= 0")
    if noise_multiplier < 0:
        raise DpradError(f"--noise-multiplier {noise_multiplier} must be >= 0")


def dpsgd_event(*, noise_multiplier: float, sample_rate: float, steps: int) -> Any:
    """The dp-accounting event of ``steps`` Poisson-sampled Gaussian steps (no step: no release, as
    :func:`compute_epsilon` says; e.g. a federation's site that released only its threshold histograms)."""
    import dp_accounting

    if steps == 0:
        return dp_accounting.NoOpDpEvent()
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)),
        steps,
    )


def event_to_dict(event: Any) -> dict[str, Any]:
    """A dp-accounting event as plain JSON: {"type": class name, field: value | nested event}."""
    import attr

    out: dict[str, Any] = {"type": type(event).__name__}
    for f in attr.fields(type(event)):
        v = getattr(event, f.name)
        if attr.has(type(v)):
            out[f.name] = event_to_dict(v)
        elif isinstance(v, list | tuple):
            out[f.name] = [event_to_dict(x) if attr.has(type(x)) else x for x in v]
        else:
            out[f.name] = v
    return out


def event_from_dict(d: dict[str, Any]) -> Any:
    """Inverse of :func:`event_to_dict`, so that a ledger's event can be re-accounted."""
    import dp_accounting

    cls = getattr(dp_accounting, d["type"], None) or getattr(dp_accounting.dp_event, d["type"])
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if k == "type":
            continue
        if isinstance(v, dict) and "type" in v:
            kwargs[k] = event_from_dict(v)
        elif isinstance(v, list):
            kwargs[k] = [event_from_dict(x) if isinstance(x, dict) else x for x in v]
        else:
            kwargs[k] = v
    return cls(**kwargs)


def epsilon_of(event: Any, *, delta: float, accountant: str = "pld") -> float:
    """Epsilon of any dp-accounting event under the named dp-accounting accountant."""
    if accountant not in DP_ACCOUNTANTS:
        raise DpradError(f"accountant '{accountant}' cannot account general events (use pld or rdp)")
    acc = DP_ACCOUNTANTS[accountant]()
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def compute_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "pld"
) -> Accounting:
    """Epsilon spent by ``steps`` Poisson-sampled Gaussian steps at ``delta``."""
    _check(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    check_accountant(accountant)
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
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta
        )
        return Accounting(fallback.epsilon, "pld", note=f"{note}; fell back to PLD")
    event = dpsgd_event(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    return Accounting(epsilon_of(event, delta=delta, accountant=accountant), accountant)


def with_releases(training: Any, releases: tuple[Any, ...]) -> Any:
    """The whole run's event: training composed with the other releases (e.g. DP thresholds)."""
    import dp_accounting

    return dp_accounting.ComposedDpEvent([training, *releases]) if releases else training


def calibrate_noise(
    *,
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
    releases: tuple[Any, ...] = (),
    coarse: bool = True,
) -> float:
    """The smallest noise multiplier whose run spends at most ``target_epsilon`` (and within 1% of it),
    counting the other ``releases`` of the run (composed with training) when given.

    ``coarse`` (PLD): search at a coarse discretisation, then confirm (and if need be correct) the result
    at full precision; ``coarse=False`` searches at full precision throughout (slower, same guarantee).

    PLD and RDP use dp-accounting's own ``calibrate_dp_mechanism`` over the whole event; PRV (opacus)
    is bisected on log(sigma) with the same accounting call the ledger makes.
    """
    if releases and accountant not in DP_ACCOUNTANTS:
        raise DpradError(
            f"--accountant {accountant} accounts one DP-SGD run alone; this run composes it with other "
            "releases (DP thresholds, an LP-FT probe): use pld or rdp"
        )
    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise DpradError(f"--epsilon {target_epsilon} must be a positive number")
    _check(noise_multiplier=1.0, sample_rate=sample_rate, steps=steps, delta=delta)
    check_accountant(accountant)
    if steps == 0:
        raise DpradError("the run has 0 planned steps: nothing to calibrate")

    def event(sigma: float) -> Any:
        return with_releases(
            dpsgd_event(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps), releases
        )

    coarse = coarse and accountant == "pld"

    def eps(sigma: float) -> float:
        if coarse:
            acc = _coarse_pld(target_epsilon)
            acc.compose(event(sigma))
            return float(acc.get_epsilon(delta))
        if releases:
            return epsilon_of(event(sigma), delta=delta, accountant=accountant)
        return compute_epsilon(
            noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
        ).epsilon

    hi = 1.0
    while eps(hi) > target_epsilon:
        hi *= 4
        if hi > 1e6:
            raise DpradError(f"--epsilon {target_epsilon} is out of reach: sigma would exceed 1e6")
    lo = hi / 4
    while eps(lo) <= target_epsilon:  # bracket from below; tiny sigmas are costly for PLD, so stop early
        if lo < 0.05:
            if coarse and epsilon_of(event(lo), delta=delta) > target_epsilon:  # confirm at full precision
                return calibrate_noise(
                    target_epsilon=target_epsilon,
                    sample_rate=sample_rate,
                    steps=steps,
                    delta=delta,
                    accountant=accountant,
                    releases=releases,
                    coarse=False,
                )
            return lo
        lo, hi = lo / 4, lo
    if accountant in DP_ACCOUNTANTS:
        import dp_accounting

        sigma = float(
            dp_accounting.calibrate_dp_mechanism(
                (lambda: _coarse_pld(target_epsilon)) if coarse else DP_ACCOUNTANTS[accountant],
                event,
                target_epsilon,
                delta,
                bracket_interval=dp_accounting.ExplicitBracketInterval(lo, hi),
                tol=1e-4 * lo,
            )
        )
        if not coarse:
            return sigma
        return _confirm(sigma, eps_full=lambda s: epsilon_of(event(s), delta=delta), target=target_epsilon)
    return _bisect(lo, hi, eps=eps, target=target_epsilon)


def _bisect(lo: float, hi: float, *, eps: Callable[[float], float], target: float) -> float:
    """Bisection on log(sigma) between eps(lo) > target >= eps(hi) (eps decreases in sigma); stops when
    eps is within 0.5% below the target. Returns a sigma that never overspends."""
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        e = eps(mid)
        if e > target:
            lo = mid
        else:
            hi = mid
            if e >= target * 0.995:
                break
    return hi


def _confirm(sigma: float, *, eps_full: Callable[[float], float], target: float) -> float:
    """A sigma found at a coarse discretisation, checked at full precision: returned when its full-precision
    epsilon is at most ``target`` and within 1% of it, else bisected at full precision near it."""
    e = eps_full(sigma)
    if target * 0.99 <= e <= target:
        return sigma
    lo, hi = sigma, sigma  # bracket: eps(lo) > target >= eps(hi), eps decreasing in sigma
    while e > target:  # coarse sigma too small (cannot happen with a pessimistic grid, checked anyway)
        lo, hi = hi, hi * 1.01
        e = eps_full(hi)
    if lo == hi:
        lo = sigma / 1.01
        while eps_full(lo) <= target:
            hi, lo = lo, lo / 1.01
    return _bisect(lo, hi, eps=eps_full, target=target)


# --------------------------------------------------------------------------------------------------------
# single Gaussian releases (thresholds, least squares) and their exact composition with training


def gaussian_epsilon(noise_multiplier: float, *, delta: float) -> float:
    """Exact epsilon at ``delta`` of one Gaussian mechanism with std / sensitivity ``noise_multiplier``."""
    from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss

    if noise_multiplier <= 0:
        return math.inf
    loss = GaussianPrivacyLoss(noise_multiplier, sensitivity=1.0)
    lo, hi = 0.0, 1.0
    while loss.get_delta_for_epsilon(hi) > delta:
        lo, hi = hi, hi * 2
    if loss.get_delta_for_epsilon(lo) <= delta:
        return lo
    for _ in range(100):  # smallest epsilon with delta(epsilon) <= delta; hi always satisfies it
        mid = 0.5 * (lo + hi)
        if loss.get_delta_for_epsilon(mid) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * hi:
            break
    return hi


def gaussian_noise_multiplier(*, epsilon: float, delta: float) -> float:
    """The smallest noise multiplier of one Gaussian mechanism spending at most ``epsilon`` at ``delta``."""
    from dp_accounting.pld.common import DifferentialPrivacyParameters
    from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss

    if not epsilon > 0 or not math.isfinite(epsilon):
        raise DpradError(f"--epsilon {epsilon} must be a positive number")
    if not 0 < delta < 1:
        raise DpradError(f"--delta {delta} must be in (0, 1)")
    sigma = float(
        GaussianPrivacyLoss.from_privacy_guarantee(
            DifferentialPrivacyParameters(epsilon, delta), sensitivity=1.0
        ).standard_deviation
    )
    while gaussian_epsilon(sigma, delta=delta) > epsilon:  # guard the search's tolerance: never overspend
        sigma *= 1.0 + 1e-6
    return sigma


def _flatten(event: Any, count: int = 1) -> list[tuple[Any, int]]:
    import dp_accounting

    if isinstance(event, dp_accounting.ComposedDpEvent):
        return [x for e in event.events for x in _flatten(e, count)]
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return _flatten(event.event, count * event.count)
    return [(event, count)]


def compose_epsilon(events: Sequence[Any], delta: float) -> float:
    """Epsilon at ``delta`` of the sequential composition of dp-accounting events (training's, the
    thresholds', ...). Gaussian parts merge exactly into one Gaussian; the rest goes through PLD."""
    import dp_accounting
    from dp_accounting import pld

    if not 0 < delta < 1:
        raise DpradError(f"--delta {delta} must be in (0, 1)")
    inv_var, others = 0.0, []
    for event, count in (x for e in events for x in _flatten(e)):
        if isinstance(event, dp_accounting.NoOpDpEvent) or count == 0:
            continue
        if isinstance(event, dp_accounting.NonPrivateDpEvent):
            return math.inf
        if isinstance(event, dp_accounting.GaussianDpEvent):
            if event.noise_multiplier <= 0:
                return math.inf
            inv_var += count / event.noise_multiplier**2
        else:
            others.append(dp_accounting.SelfComposedDpEvent(event, count) if count > 1 else event)
    sigma = 1.0 / math.sqrt(inv_var) if inv_var > 0 else 0.0
    if not others:
        return gaussian_epsilon(sigma, delta=delta) if inv_var > 0 else 0.0
    acc = pld.PLDAccountant()
    for event in others:
        acc.compose(event)
    if inv_var > 0:
        acc.compose(dp_accounting.GaussianDpEvent(sigma))
    return float(acc.get_epsilon(delta))


def default_delta(n: int) -> float:
    """The largest power of ten at most 1/(10 n): comfortably below 1/n, as the DP literature asks."""
    if n < 1:
        raise DpradError("the training split is empty: no delta can be chosen")
    return float(10 ** math.floor(math.log10(0.1 / n)))
