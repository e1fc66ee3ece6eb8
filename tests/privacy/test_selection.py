"""The privacy cost of choosing the best run: Papernot & Steinke's bound against dp-accounting's own
implementation, composition, monotonicity, and never below a single run's epsilon."""

from __future__ import annotations

import math
from functools import cache

import dp_accounting
import pytest
from dp_accounting import dp_event, pld, rdp

from dprad.errors import DpradError
from dprad.privacy import RDP_ORDERS, compute_epsilon
from dprad.privacy.selection import Candidate, all_costs, rdp_curve, selection_cost, tnb_gamma, tnb_mean

# orders up to 256 are plenty for the epsilons (about 1 to 10) of these tests, and fast on a shared CPU
ORDERS = tuple(o for o in RDP_ORDERS if o <= 256)


@cache
def run(name: str, sigma: float, q: float, steps: int, delta: float = 1e-5) -> Candidate:
    eps = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta).epsilon
    return Candidate(name, sigma, q, steps, eps, delta)


def event(c: Candidate) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(c.sample_rate, dp_accounting.GaussianDpEvent(c.noise_multiplier)),
        c.steps,
    )


def test_rdp_curve_is_dp_accountings() -> None:
    c = run("a", 1.5, 0.04, 2250)
    acc = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    acc.compose(event(c))
    ours, _ = rdp.rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, rdp_curve(c), 1e-5)
    assert ours == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    # the known value the accountant tests pin: sigma 1.5, q 0.04, 2250 steps, delta 1e-5 -> about 7.33 (RDP)
    assert ours == pytest.approx(7.33, abs=0.05)


@pytest.mark.parametrize("shape", [0.0, 0.5, 1.0, 2.0, math.inf])
@pytest.mark.parametrize("mean", [1.0, 4.0, 20.0])
def test_papernot_steinke_matches_dp_accounting_repeat_and_select(shape: float, mean: float) -> None:
    """Identical candidates: our bound equals dp-accounting's RepeatAndSelectDpEvent (an independent
    implementation of the same theorems)."""
    c = run("a", 1.2, 0.05, 400)
    ours = selection_cost(
        [c, c, c], method="papernot-steinke", mean_repetitions=mean, shape=shape, orders=ORDERS
    )
    acc = rdp.RdpAccountant(orders=list(ORDERS))
    acc.compose(dp_event.RepeatAndSelectDpEvent(event(c), mean, shape))
    # dp-accounting returns a gamma conservative to 1e-9 relative: agreement to 1e-6 relative
    assert ours.epsilon == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    assert ours.method == "papernot-steinke" and ours.mean_repetitions == mean and ours.shape == shape


def test_tnb_gamma_inverts_the_mean() -> None:
    for shape in (0.0, 0.3, 1.0, 3.0):
        for mean in (1.5, 10.0, 300.0):
            assert tnb_mean(gamma=tnb_gamma(mean=mean, shape=shape), shape=shape) == pytest.approx(
                mean, rel=1e-9
            )
    assert tnb_gamma(mean=10.0, shape=1.0) == pytest.approx(0.1)  # geometric: mean 1/gamma


def test_cost_is_at_least_every_single_run_and_grows_with_repetitions() -> None:
    cands = [run("eps1", 3.0, 0.1, 100), run("eps3", 1.4, 0.1, 100), run("eps-small", 8.0, 0.1, 100)]
    largest = max(c.epsilon for c in cands)
    costs = {m: selection_cost(cands, method=m, orders=ORDERS) for m in ("composition", "composition-pld")}
    costs["papernot-steinke"] = selection_cost(cands, method="papernot-steinke", orders=ORDERS)
    for cost in costs.values():
        assert cost.epsilon >= largest, cost
        assert cost.largest_single_epsilon == largest
        assert cost.candidates == ("eps1", "eps3", "eps-small")
    # composition: the sum of the runs' own epsilons and deltas; PLD composition is tighter but not free
    assert costs["composition"].epsilon == pytest.approx(sum(c.epsilon for c in cands))
    assert costs["composition"].delta == pytest.approx(3e-5)
    assert largest < costs["composition-pld"].epsilon < costs["composition"].epsilon
    acc = pld.PLDAccountant()
    acc.compose(dp_accounting.ComposedDpEvent([event(c) for c in cands]))
    assert costs["composition-pld"].epsilon == pytest.approx(acc.get_epsilon(1e-5))
    # more expected repetitions, or a heavier-tailed distribution, never cost less
    eps_by_mean = [
        selection_cost(cands, method="papernot-steinke", mean_repetitions=m, orders=ORDERS).epsilon
        for m in (1, 3, 10, 100)
    ]
    assert eps_by_mean == sorted(eps_by_mean) and eps_by_mean[-1] > eps_by_mean[0] + 0.5
    eps_by_shape = [
        selection_cost(cands, method="papernot-steinke", mean_repetitions=10, shape=s, orders=ORDERS).epsilon
        for s in (0.0, 1.0, 3.0)
    ]
    assert eps_by_shape == sorted(eps_by_shape)


def test_the_worst_candidate_dominates_a_heterogeneous_grid() -> None:
    """Adding a more private candidate to a grid cannot lower the bound below the grid without it."""
    strong, weak = run("weak-privacy", 1.0, 0.1, 200), run("strong-privacy", 6.0, 0.1, 200)
    alone = selection_cost([strong], method="papernot-steinke", mean_repetitions=2, orders=ORDERS).epsilon
    both = selection_cost(
        [strong, weak], method="papernot-steinke", mean_repetitions=2, orders=ORDERS
    ).epsilon
    assert both == pytest.approx(alone)  # the pointwise max of the curves is the weaker run's curve
    assert (
        selection_cost([weak], method="papernot-steinke", mean_repetitions=2, orders=ORDERS).epsilon < alone
    )


def test_all_costs_names_every_method() -> None:
    c = run("a", 1.2, 0.05, 400)
    costs = all_costs([c])
    assert set(costs) == {"composition", "composition-pld", "papernot-steinke"}
    assert all(k == v.method and v.epsilon >= c.epsilon for k, v in costs.items())


def test_refusals() -> None:
    with pytest.raises(DpradError, match="non-private"):
        Candidate.from_ledger("np", {"private": False})
    with pytest.raises(DpradError, match="lacks"):
        Candidate.from_ledger("x", {"private": True, "noise_multiplier": 1.0})
    c = run("a", 1.0, 0.1, 10)
    with pytest.raises(DpradError, match="method"):
        selection_cost([c], method="free")
    with pytest.raises(DpradError, match="no private candidate"):
        selection_cost([])
    with pytest.raises(DpradError, match="mean"):
        selection_cost([c], method="papernot-steinke", mean_repetitions=0.5)
    d = selection_cost([c], method="papernot-steinke", shape=math.inf, orders=ORDERS).to_dict()
    assert d["shape"] == "inf" and "Poisson" in d["assumption"]


def test_a_ledger_event_with_other_releases_is_accounted_whole() -> None:
    """A run whose ledger composes DP-SGD with another DP release (e.g. DP thresholds) is a candidate
    with that whole event: the choosing cost is never below the run's total epsilon."""
    from dprad.privacy import dpsgd_event, epsilon_of, event_to_dict

    training = dpsgd_event(noise_multiplier=1.2, sample_rate=0.05, steps=100)
    whole = dp_accounting.ComposedDpEvent([training, dp_accounting.GaussianDpEvent(3.0)])
    total = epsilon_of(whole, delta=1e-5)
    ledger = {
        "private": True,
        "noise_multiplier": 1.2,
        "sample_rate": 0.05,
        "steps": 100,
        "epsilon": total,
        "delta": 1e-5,
        "event": event_to_dict(whole),
    }
    c = Candidate.from_ledger("with-thresholds", ledger)
    alone = Candidate.from_ledger("training-only", {**ledger, "event": None})
    assert epsilon_of(c.dp_event(), delta=1e-5) == pytest.approx(total)
    assert epsilon_of(alone.dp_event(), delta=1e-5) < total
    for method in ("composition-pld", "papernot-steinke"):
        assert selection_cost([c], method=method, orders=ORDERS).epsilon >= total * 0.999
        assert (
            selection_cost([c], method=method, orders=ORDERS).epsilon
            > selection_cost([alone], method=method, orders=ORDERS).epsilon
        )
