"""The one-run audit's statistics: (m canaries, r guesses, v correct) -> a lower bound on epsilon.

Steinke, Nasr & Jagielski (2023), "Privacy auditing with one (1) training run" (arXiv 2305.08846): each of
m canaries is included in training independently with probability 1/2; an auditor who sees the trained
model guesses "in" or "out" for r of them and abstains on the rest. If training is (eps, delta)-DP, the
number of correct guesses W is stochastically dominated by Binomial(r, e^eps / (1 + e^eps)) up to a delta
term (their main theorem, in the form that allows abstentions):

    P[W >= v] <= f(v) + 2 m delta * max_{i = 1..v} (f(v - i) - f(v)) / i,  f(u) = P[Binomial(r, q) >= u]

An observed v whose right-hand side is below 1 - confidence rejects (eps, delta)-DP; the lower bound is
the largest such eps. Pure functions of integers and floats; no randomness.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from scipy.special import expit

from dprad.errors import DpradError


def _check(*, m: int, r: int, v: int, delta: float) -> None:
    if not (0 <= v <= r <= m):
        raise DpradError(f"audit counts must satisfy 0 <= v <= r <= m, got m={m}, r={r}, v={v}")
    if not (0 <= delta <= 1):
        raise DpradError(f"audit delta {delta} must be in [0, 1]")


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[at least v of r guesses correct] under (epsilon, delta)-DP, capped at 1."""
    _check(m=m, r=r, v=v, delta=delta)
    if epsilon < 0:
        raise DpradError(f"epsilon {epsilon} must be >= 0")
    q = float(expit(epsilon))  # accuracy of epsilon-DP randomised response
    tail = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[Binomial(r, q) >= v]
    if delta > 0 and v > 0:
        i = np.arange(1, v + 1)  # (v,)
        between = np.cumsum(stats.binom.pmf(v - i, r, q))  # f(v - i) - f(v) = P[v - i <= B < v]
        tail += 2 * m * delta * float(np.max(between / i))
    return min(tail, 1.0)


def epsilon_lower_bound(
    *, m: int, r: int, v: int, delta: float, confidence: float = 0.95, tol: float = 1e-7
) -> float:
    """The largest epsilon such that observing v correct guesses out of r (m canaries) has p-value below
    ``1 - confidence`` under (epsilon, delta)-DP; 0.0 when even epsilon = 0 cannot be rejected.

    The p-value grows with epsilon, so the bound is found by bisection to within ``tol``.
    """
    _check(m=m, r=r, v=v, delta=delta)
    if not 0 < confidence < 1:
        raise DpradError(f"confidence {confidence} must be in (0, 1)")
    alpha = 1 - confidence
    if r == 0 or p_value(m=m, r=r, v=v, epsilon=0.0, delta=delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m=m, r=r, v=v, epsilon=hi, delta=delta) < alpha:
        lo, hi = hi, 2 * hi
        if hi > 1e4:  # cannot happen for r >= 1 (q^r -> 1); guards against a non-terminating loop
            return math.inf
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def audit_ceiling(r: int, delta: float, *, m: int | None = None, confidence: float = 0.95) -> float:
    """The largest lower bound an audit with r guesses can ever prove: the bound when all r are right.

    ``m`` defaults to r, the fewest canaries that allow r guesses and so the smallest delta term: no audit
    with r guesses proves more. Claims of epsilon at or above the ceiling cannot be refuted by such an audit.
    """
    return epsilon_lower_bound(m=r if m is None else m, r=r, v=r, delta=delta, confidence=confidence)


__all__ = ["audit_ceiling", "epsilon_lower_bound", "p_value"]
