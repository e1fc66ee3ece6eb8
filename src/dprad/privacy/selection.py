"""The privacy cost of choosing: picking "the best run" of a sweep is itself a release.

Every candidate of a sweep trained on the same private reports. Releasing only the best of them, chosen by
a score, still depends on all of them, so the chosen model carries more than its own ledger's epsilon.
Three bounds, each returned as a :class:`SelectionCost` that names its method and says when it holds:

- ``composition``: basic composition over the K candidates that were trained: (sum eps_i, sum delta_i).
  Always valid for a fixed grid; loose.
- ``composition-pld``: the K candidates' DP-SGD events composed under the PLD accountant (dp-accounting),
  at the runs' delta. Valid for a fixed grid (every candidate run once) and much tighter than the sum.
- ``papernot-steinke``: Papernot & Steinke 2022, "Hyperparameter tuning with Renyi differential privacy"
  (ICLR 2022, arXiv 2110.03620). Valid only when the NUMBER of runs is random: K ~ truncated negative
  binomial (shape eta >= 0: 0 logarithmic, 1 geometric) or Poisson (shape ``inf``) with the given mean,
  each run's candidate drawn at random from the grid, and only the best run (and its score) released.
  Then, with eps(l) the pointwise maximum of the candidates' RDP curves (a random choice of candidate is
  a mixture, whose Renyi divergence is at most the largest candidate's, by joint quasi-convexity):

      TNB (Theorem 2):  eps'(l) = eps(l) + (1 + eta) min_lh [(1 - 1/lh) eps(lh) + log(1/gamma) / lh]
                                  + log(E[K]) / (l - 1)
      Poisson (Thm 6):  eps'(l) = eps(l) + mu * delta_hat(l) + log(mu) / (l - 1),
                        delta_hat(l) = delta of eps(.) at eps_hat = log(1 + 1/(l - 1))

  converted to (eps, delta) with dp-accounting's RDP conversion. Each candidate's curve is dp-accounting's
  RDP of its run: ``steps`` x PoissonSampled(q, Gaussian(sigma)).

What no bound here covers: a score computed on validation reports without DP is not private with respect
to those validation reports; the bounds protect the training reports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dprad.errors import DpradError
from dprad.privacy import RDP_ORDERS

METHODS = ("composition", "composition-pld", "papernot-steinke")


@dataclass(frozen=True)
class Candidate:
    """One private run that took part in the selection, as its ledger describes it."""

    name: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float  # the run's own spent epsilon (its ledger's)
    delta: float
    # the ledger's whole dp-accounting event as JSON (training composed with the run's other DP releases,
    # e.g. DP thresholds); None: the DP-SGD steps alone (noise multiplier, sample rate, steps)
    event: Mapping[str, Any] | None = None

    def dp_event(self) -> Any:
        """The run's dp-accounting event."""
        from dprad.privacy import dpsgd_event, event_from_dict

        if self.event is not None:
            return event_from_dict(dict(self.event))
        return dpsgd_event(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps
        )

    @classmethod
    def from_ledger(cls, name: str, ledger: Mapping[str, Any]) -> Candidate:
        """From a run's ``privacy.json``; a non-private run has no finite cost and is refused."""
        if not ledger.get("private"):
            raise DpradError(
                f"{name}: a non-private run cannot be a candidate of a private selection (its cost is infinite)"
            )
        missing = [
            k
            for k in ("noise_multiplier", "sample_rate", "steps", "epsilon", "delta")
            if ledger.get(k) is None
        ]
        if missing:
            raise DpradError(f"{name}: privacy.json lacks {', '.join(missing)}")
        return cls(
            name=name,
            noise_multiplier=float(ledger["noise_multiplier"]),
            sample_rate=float(ledger["sample_rate"]),
            steps=int(ledger["steps"]),
            epsilon=float(ledger["epsilon"]),
            delta=float(ledger["delta"]),
            event=ledger.get("event") if isinstance(ledger.get("event"), Mapping) else None,
        )


@dataclass(frozen=True)
class SelectionCost:
    """(epsilon, delta) of releasing the best of ``candidates``, under the bound ``method``."""

    method: str
    epsilon: float
    delta: float
    candidates: tuple[str, ...]
    largest_single_epsilon: float  # the most any one candidate spent on its own (its ledger)
    assumption: str  # when the bound holds, in plain words
    mean_repetitions: float | None = None  # papernot-steinke: E[K]
    shape: float | None = None  # papernot-steinke: eta (inf = Poisson)
    order: float | None = None  # the Renyi order that gave the bound (RDP-based methods)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = list(self.candidates)
        if self.shape is not None and math.isinf(self.shape):
            d["shape"] = "inf"
        return d


def rdp_curve(candidate: Candidate, orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
    """RDP of one run at each order: dp-accounting's RdpAccountant over the run's event (by default
    ``steps`` x PoissonSampled(q, Gaussian(sigma)); the ledger's whole event when it records one).

    At a few small fractional orders dp-accounting's series may not converge; it then returns inf there
    (a valid, conservative bound) and logs a warning per order, which is silenced here."""
    from dp_accounting import rdp

    acc = rdp.RdpAccountant(orders=list(orders))
    with _quiet_absl():
        acc.compose(candidate.dp_event())
    # dp-accounting has no public getter for the curve; _rdp is the accountant's (O,) RDP array
    return np.asarray(acc._rdp, dtype=np.float64).copy()  # (O,)


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """Drop dp-accounting's per-order convergence warnings for the duration of one call."""
    logger = logging.getLogger("absl")

    def no_convergence_warnings(record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()

    logger.addFilter(no_convergence_warnings)
    try:
        yield
    finally:
        logger.removeFilter(no_convergence_warnings)


def tnb_gamma(*, mean: float, shape: float) -> float:
    """The halting probability gamma of the truncated negative binomial with mean ``mean`` and shape eta."""
    from scipy.optimize import brentq

    if not mean >= 1:
        raise DpradError(f"mean number of repetitions {mean} must be >= 1")
    if mean == 1:
        return 1.0
    return float(
        brentq(lambda g: tnb_mean(gamma=g, shape=shape) - mean, 1e-300, 1 - 1e-15, xtol=1e-300, rtol=1e-14)
    )


def tnb_mean(*, gamma: float, shape: float) -> float:
    """E[K] for K ~ D_{eta, gamma} (Papernot & Steinke, Definition 1)."""
    if shape == 0:  # logarithmic
        return (1 - gamma) / (gamma * math.log(1 / gamma))
    return shape * (1 - gamma) / (gamma * (1 - gamma**shape))


def tuned_rdp(orders: np.ndarray, rdp: np.ndarray, *, mean: float, shape: float) -> np.ndarray:
    """RDP of running a mechanism with RDP curve ``rdp`` a random number of times and keeping the best."""
    orders = np.asarray(orders, dtype=np.float64)
    out = np.full_like(orders, np.inf)
    above = orders > 1  # the theorems need order > 1
    if math.isinf(shape):  # Poisson number of repetitions (Theorem 6)
        from dp_accounting.rdp.rdp_privacy_accountant import compute_delta

        for i in np.flatnonzero(above):
            delta_hat, _ = compute_delta(orders, rdp, math.log1p(1 / (orders[i] - 1)))
            out[i] = rdp[i] + mean * delta_hat + math.log(mean) / (orders[i] - 1)
    else:  # truncated negative binomial (Theorem 2): the lambda-hat term is minimised over all orders
        gamma = tnb_gamma(mean=mean, shape=shape)
        c = (1 + shape) * float(np.min((1 - 1 / orders) * rdp + math.log(1 / gamma) / orders))
        out[above] = rdp[above] + math.log(mean) / (orders[above] - 1) + c
    # RDP is non-decreasing in the order: a bound at a larger order also holds at a smaller one
    return np.minimum.accumulate(out[::-1])[::-1]


def selection_cost(
    candidates: Sequence[Candidate],
    *,
    method: str = "composition-pld",
    delta: float | None = None,
    mean_repetitions: float | None = None,
    shape: float = 1.0,
    orders: Sequence[float] = RDP_ORDERS,
) -> SelectionCost:
    """The privacy cost of releasing the best of ``candidates``.

    ``delta``: the target delta of the RDP / PLD methods (default: the largest candidate delta).
    ``mean_repetitions`` (papernot-steinke): E[K], default the number of candidates; ``shape``: eta of the
    truncated negative binomial (0 logarithmic, 1 geometric) or ``math.inf`` for Poisson.
    """
    if not candidates:
        raise DpradError("no private candidate to select from")
    if method not in METHODS:
        raise DpradError(f"selection method '{method}' is not one of {', '.join(METHODS)}")
    names = tuple(c.name for c in candidates)
    largest = max(c.epsilon for c in candidates)
    target_delta = delta if delta is not None else max(c.delta for c in candidates)
    if not 0 < target_delta < 1:
        raise DpradError(f"delta {target_delta} must be in (0, 1)")
    k = len(candidates)
    if method == "composition":
        return SelectionCost(
            method,
            float(sum(c.epsilon for c in candidates)),
            float(sum(c.delta for c in candidates)),
            names,
            largest,
            f"basic composition: all {k} candidates were trained once on the same reports and one was chosen",
        )
    if method == "composition-pld":
        import dp_accounting

        from dprad.privacy import epsilon_of

        event = dp_accounting.ComposedDpEvent([c.dp_event() for c in candidates])
        return SelectionCost(
            method,
            epsilon_of(event, delta=target_delta, accountant="pld"),
            target_delta,
            names,
            largest,
            f"PLD composition of the {k} candidates' DP-SGD runs: valid for a fixed grid, every candidate run once",
        )
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon as rdp_to_dp

    mean = float(mean_repetitions if mean_repetitions is not None else k)
    if shape < 0 or math.isnan(shape):
        raise DpradError(f"shape {shape} must be >= 0 (or inf for Poisson)")
    if not mean >= 1:
        raise DpradError(f"mean number of repetitions {mean} must be >= 1")
    order_arr = np.asarray(orders, dtype=np.float64)
    worst = np.max(np.stack([rdp_curve(c, orders) for c in candidates]), axis=0)  # (O,)
    eps, order = rdp_to_dp(order_arr, tuned_rdp(order_arr, worst, mean=mean, shape=shape), target_delta)
    dist = "Poisson" if math.isinf(shape) else f"truncated negative binomial (eta = {shape:g})"
    return SelectionCost(
        method,
        float(eps),
        target_delta,
        names,
        largest,
        f"Papernot & Steinke 2022: holds only if the number of training runs was drawn from a {dist} "
        f"distribution with mean {mean:g}, each run's candidate drawn at random from these {k}, and only the "
        "best run released; a fixed grid run once per candidate is covered by composition instead",
        mean_repetitions=mean,
        shape=shape,
        order=float(order),
    )


def all_costs(
    candidates: Sequence[Candidate], *, delta: float | None = None, shape: float = 1.0
) -> dict[str, SelectionCost]:
    """Every method, side by side (papernot-steinke with E[K] = the number of candidates)."""
    return {m: selection_cost(candidates, method=m, delta=delta, shape=shape) for m in METHODS}


__all__ = [
    "METHODS",
    "Candidate",
    "SelectionCost",
    "all_costs",
    "rdp_curve",
    "selection_cost",
    "tnb_gamma",
    "tnb_mean",
    "tuned_rdp",
]
