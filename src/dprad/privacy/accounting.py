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

from dprad.config import ACCOUNTANTS
from dprad.errors import DpradError, ParameterError

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


# name -> a fresh dp-accounting accountant; "prv" is opacus's and is handled in compute_epsilon. Together
# they implement ACCOUNTANTS, the config's vocabulary (tests/privacy/test_privacy.py keeps them equal)
DP_ACCOUNTANTS: dict[str, Callable[[], Any]] = {"pld": _pld, "rdp": _rdp}

# What dprad accounts. Outside these bounds an accountant runs out of memory or time, or the number it would
# print is no guarantee at all; each is refused in one line instead. Measured on a 2-core CPU shared with
# other jobs (seconds are wall clock there; memory is peak RSS), delta = 1e-5, dp-accounting's PLD at its
# default discretisation (1e-4) unless said otherwise.
#
# The least noise multiplier accounted, and the bottom of calibration's search. At sigma = 0.1 one step at
# q = 1e-4 already spends epsilon 53 (PLD), so no setting below it carries a guarantee worth stating, and a
# PLD's size grows as sigma falls: one step at q = 1e-4 took 7 s / 0.6 GB at sigma 0.1, 48 s / 1.0 GB at
# 0.05; 1,000 steps at q = 0.01 took 62 s / 4.4 GB at sigma 0.0625, and at 0.0156 (where a target epsilon
# of 1e9 used to search) ran 169 s before a 14.1 GiB allocation failed.
MIN_NOISE_MULTIPLIER = 0.1
# The top of calibration's search: epsilon 0.01 over 10^7 full-batch steps needs sigma near 1.5e6 / sqrt(10)
# (Gaussian composition), below this; a PLD at sigma 1e6 is a handful of points.
MAX_NOISE_MULTIPLIER = 1e6
# The most DP-SGD steps accounted (dprad's own runs take hundreds to thousands). PLD composes steps by
# FFT, so its cost follows the epsilon, not the count: 10^7 steps at sigma 1, q = 0.001 took 1 s / 0.45 GB.
# RDP's cost does not depend on it. Beyond 10^7 nothing was measured and no run needs it.
MAX_STEPS = 10_000_000
# opacus's PRV grows with the count: sigma 2, q = 0.01 took 8 s / 0.9 GB at 10^5 steps and 60 s / 5.7 GB
# at 10^6 (sigma 1, q = 0.01, 10^7 steps: a 16.9 GiB allocation failed). PLD is as tight: use it beyond.
MAX_PRV_STEPS = 100_000
# The largest epsilon accounted. A PLD's size follows the epsilon it represents (its support spans the
# privacy loss): epsilon 300 took 0.75 GB, 1,000-1,500 took 1.0-1.5 GB and 6-30 s, 5,000-8,000 took 1.8-5.9
# GB, and sigma 1 with q = 1 over 10^6 steps (epsilon ~5e5) asked for 7.5 GiB in one array. An epsilon
# above 1,000 bounds nothing. It is checked before the PLD runs with a cheap RDP bound (orders up to 64,
# 20-100 ms), which is never below the PLD's epsilon (within 1.02-1.7x of it where both exceed 10, up to 3x
# at sigma 0.1).
MAX_EPSILON = 1000.0
# The largest target epsilon calibrated: a target is met at a sigma whose epsilon is near it, and the search
# evaluates sigmas up to 4x below, so the target bounds the cost; beyond 100 a "guarantee" means nothing
# (e^100 as a likelihood ratio) and a target of 10,000 searched for minutes.
MAX_TARGET_EPSILON = 100.0
# RDP orders of the cheap bound above: the fractional and small integer orders of RDP_ORDERS (large
# epsilons are bounded at small orders; the large ones cost 0.7 s per bound).
BOUND_ORDERS = tuple(o for o in RDP_ORDERS if o <= 64)


@dataclass(frozen=True)
class Accounting:
    """An epsilon together with the accountant that actually produced it."""

    epsilon: float
    accountant: str
    note: str = ""


def check_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise ParameterError(
            parameter="accountant", value=name, problem=f"is not one of {', '.join(ACCOUNTANTS)}"
        )
    return name


def _check(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> None:
    if not 0 < sample_rate <= 1:
        raise DpradError(f"sample rate q={sample_rate} must be in (0, 1]")
    if not 0 < delta < 1:
        raise ParameterError(parameter="delta", value=delta, problem="must be in (0, 1)")
    if steps < 0:
        raise DpradError(f"steps={steps} must be >= 0")
    if noise_multiplier < 0:
        raise ParameterError(parameter="noise_multiplier", value=noise_multiplier, problem="must be >= 0")


def check_steps(steps: int, *, accountant: str = "pld") -> None:
    """At most MAX_STEPS DP-SGD steps (MAX_PRV_STEPS for opacus's PRV)."""
    most = MAX_PRV_STEPS if accountant == "prv" else MAX_STEPS
    if steps > most:
        use = "; use the pld accountant, as tight" if accountant == "prv" else ""
        raise ParameterError(
            parameter="steps",
            value=steps,
            problem=f"is more than the {most:,} DP-SGD steps the {accountant} accountant accounts in "
            f"reasonable time and memory{use} (a run's steps are epochs x reports / batch size)",
        )


def check_noise_multiplier(sigma: float) -> None:
    """A finite noise multiplier in [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER] (see their reasons)."""
    if not math.isfinite(sigma):
        raise ParameterError(parameter="noise_multiplier", value=sigma, problem="must be a finite number")
    if sigma < MIN_NOISE_MULTIPLIER:
        none = " (0 is no noise: a non-private run sets neither a noise multiplier nor a target epsilon)"
        raise ParameterError(
            parameter="noise_multiplier",
            value=sigma,
            problem=f"is below {MIN_NOISE_MULTIPLIER:g}, the least noise dprad accounts: with less, no setting "
            "carries a guarantee worth stating (one step at q = 0.0001 spends epsilon 53) and the accountant "
            f"runs out of memory{none if sigma == 0 else ''}",
        )
    if sigma > MAX_NOISE_MULTIPLIER:
        raise ParameterError(
            parameter="noise_multiplier",
            value=sigma,
            problem=f"is above {MAX_NOISE_MULTIPLIER:g}, the most noise dprad accounts (epsilon 0.01 over 10^7 "
            "full-batch steps needs less)",
        )


def _dpsgd_events(event: Any) -> list[tuple[float, int]]:
    """(noise multiplier, steps) of each Poisson-sampled Gaussian part of ``event`` (DP-SGD's)."""
    import dp_accounting

    out = []
    for part, count in _flatten(event):
        if isinstance(part, dp_accounting.PoissonSampledDpEvent) and isinstance(
            part.event, dp_accounting.GaussianDpEvent
        ):
            out.append((float(part.event.noise_multiplier), count))
    return out


def rdp_bound(event: Any, *, delta: float) -> float | None:
    """A cheap upper bound on ``event``'s epsilon (RDP at BOUND_ORDERS), or None for an event RDP cannot
    account. dp-accounting's warnings about orders it skips are silenced: the bound stays valid."""
    import logging

    import dp_accounting
    from dp_accounting import rdp

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        acc = rdp.RdpAccountant(orders=list(BOUND_ORDERS))
        acc.compose(event)
        return float(acc.get_epsilon(delta))
    except dp_accounting.UnsupportedEventError:
        return None
    finally:
        absl.setLevel(level)


def check_accountable(event: Any, *, delta: float, accountant: str = "pld") -> None:
    """Refuse, in one line and before any accountant runs, an event dprad does not account: a DP-SGD part
    with a noise multiplier or a step count out of bounds, or an epsilon above MAX_EPSILON by the RDP
    bound (an accountant would take minutes and gigabytes to state a number that bounds nothing)."""
    for sigma, steps in _dpsgd_events(event):
        check_noise_multiplier(sigma)
        check_steps(steps, accountant=accountant)
    bound = rdp_bound(event, delta=delta)
    if bound is not None and bound > MAX_EPSILON:
        parts = ", ".join(f"noise multiplier {s:.4g} over {t:,} steps" for s, t in _dpsgd_events(event))
        raise DpradError(
            f"epsilon would be above {MAX_EPSILON:g} ({parts or 'this event'}: the RDP accountant bounds it "
            f"at {bound:.4g}): no guarantee worth accounting; add noise (a larger noise multiplier), take fewer "
            "steps or sample fewer reports per step"
        )


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
    """Epsilon of any dp-accounting event under the named dp-accounting accountant; an event out of
    dprad's bounds (:func:`check_accountable`) is refused first."""
    if accountant not in DP_ACCOUNTANTS:
        raise DpradError(f"accountant '{accountant}' cannot account general events (use pld or rdp)")
    check_accountable(event, delta=delta, accountant=accountant)
    return _epsilon_of(event, delta=delta, accountant=accountant)


def _epsilon_of(event: Any, *, delta: float, accountant: str = "pld") -> float:
    acc = DP_ACCOUNTANTS[accountant]()
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def compute_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "pld"
) -> Accounting:
    """Epsilon spent by ``steps`` Poisson-sampled Gaussian steps at ``delta``; settings out of dprad's
    bounds (:func:`check_accountable`: a noise multiplier below 0.1, 0 included, more than 10^7 steps, an
    epsilon above 1,000) are refused in one line."""
    _check(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    check_accountant(accountant)
    if steps == 0:
        return Accounting(0.0, accountant)
    check_accountable(
        dpsgd_event(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps),
        delta=delta,
        accountant=accountant,
    )
    return _dpsgd_epsilon(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        accountant=accountant,
    )


def _dpsgd_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str
) -> Accounting:
    """:func:`compute_epsilon` without its checks (calibration's search stays inside the bounds)."""
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
        fallback = _dpsgd_epsilon(
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            delta=delta,
            accountant="pld",
        )
        return Accounting(fallback.epsilon, "pld", note=f"{note}; fell back to PLD")
    event = dpsgd_event(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    return Accounting(_epsilon_of(event, delta=delta, accountant=accountant), accountant)


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

    The search stays inside dprad's bounds (sigma in [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER], at most
    MAX_STEPS steps, a target of at most MAX_TARGET_EPSILON) and refuses, in one line, a target it cannot
    meet there. PLD and RDP use dp-accounting's own ``calibrate_dp_mechanism`` over the whole event; PRV
    (opacus) is bisected on log(sigma) with the same accounting call the ledger makes.
    """
    if releases and accountant not in DP_ACCOUNTANTS:
        raise ParameterError(
            parameter="accountant",
            value=accountant,
            problem="accounts one DP-SGD run alone; this run composes it with other releases (DP thresholds, "
            "an LP-FT probe): use pld or rdp",
        )
    _check_target(target_epsilon, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant)
    for sigma, count in (x for release in releases for x in _dpsgd_events(release)):  # an LP-FT probe
        check_noise_multiplier(sigma)
        check_steps(count, accountant=accountant)

    def event(sigma: float) -> Any:
        return with_releases(
            dpsgd_event(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps), releases
        )

    coarse = coarse and accountant == "pld"

    def full(sigma: float) -> float:
        if releases:
            return _epsilon_of(event(sigma), delta=delta, accountant=accountant)
        return _dpsgd_epsilon(
            noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
        ).epsilon

    def eps(sigma: float) -> float:
        bound = rdp_bound(event(sigma), delta=delta)
        if bound is not None and bound > MAX_EPSILON:  # more than any target: never handed to the PLD
            return math.inf
        if coarse:
            acc = _coarse_pld(target_epsilon)
            acc.compose(event(sigma))
            return float(acc.get_epsilon(delta))
        return full(sigma)

    bracket = _bracket(eps, target_epsilon)
    if bracket is None:
        raise ParameterError(
            parameter="epsilon",
            value=target_epsilon,
            problem=f"cannot be calibrated at q={sample_rate:g}, steps={steps}, delta={delta:g}: even the least "
            f"noise dprad accounts (noise multiplier {MIN_NOISE_MULTIPLIER:g}) spends only epsilon "
            f"{eps(MIN_NOISE_MULTIPLIER):.4g}; ask for less",
        )
    lo, hi = bracket
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
        return _confirm(sigma, eps_full=lambda s: _epsilon_of(event(s), delta=delta), target=target_epsilon)
    return _bisect(lo, hi, eps=eps, target=target_epsilon)


def _check_target(target: float, *, sample_rate: float, steps: int, delta: float, accountant: str) -> None:
    if not target > 0 or not math.isfinite(target):
        raise ParameterError(parameter="epsilon", value=target, problem="must be a positive number")
    if target > MAX_TARGET_EPSILON:
        raise ParameterError(
            parameter="epsilon",
            value=target,
            problem=f"is above {MAX_TARGET_EPSILON:g}, the largest target dprad calibrates: a guarantee that "
            "loose bounds nothing, and the search would take minutes and gigabytes (a run without privacy "
            "has no target epsilon)",
        )
    _check(noise_multiplier=1.0, sample_rate=sample_rate, steps=steps, delta=delta)
    check_accountant(accountant)
    if steps == 0:
        raise DpradError("the run has 0 planned steps: nothing to calibrate")
    check_steps(steps, accountant=accountant)


def _bracket(eps: Callable[[float], float], target: float) -> tuple[float, float] | None:
    """(lo, hi) with eps(lo) > target >= eps(hi) (eps decreases in sigma), by factors of 4 from sigma = 1
    and inside [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER]; None when even the least noise spends at
    most ``target``. Going down, each sigma tried is 4x below one that spends at most the target (at most
    MAX_TARGET_EPSILON), so the accountant never sees an epsilon far above it; going up, ``eps`` gives
    inf without running the accountant where the RDP bound exceeds MAX_EPSILON."""
    hi = 1.0
    while eps(hi) > target:
        if hi >= MAX_NOISE_MULTIPLIER:
            raise ParameterError(
                parameter="epsilon",
                value=target,
                problem=f"is out of reach: the noise multiplier would exceed {MAX_NOISE_MULTIPLIER:g}",
            )
        hi = min(hi * 4, MAX_NOISE_MULTIPLIER)
    lo = max(hi / 4, MIN_NOISE_MULTIPLIER)
    while eps(lo) <= target:
        if lo <= MIN_NOISE_MULTIPLIER:
            return None
        lo, hi = max(lo / 4, MIN_NOISE_MULTIPLIER), lo
    return lo, hi


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
        raise ParameterError(parameter="epsilon", value=epsilon, problem="must be a positive number")
    if not 0 < delta < 1:
        raise ParameterError(parameter="delta", value=delta, problem="must be in (0, 1)")
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
        raise ParameterError(parameter="delta", value=delta, problem="must be in (0, 1)")
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
