"""The one-run audit bound (Steinke, Nasr & Jagielski 2023) and the canaries it scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.audit.bound import audit_ceiling, epsilon_lower_bound, p_value
from dprad.audit.canaries import canary_section, make_canaries, score_canaries


def brute_tail(r: int, v: int, eps: float) -> float:
    """P[Binomial(r, e^eps / (1 + e^eps)) >= v] summed term by term with math.comb (no scipy)."""
    q = math.exp(eps) / (1 + math.exp(eps))
    return sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(max(v, 0), r + 1))


@pytest.mark.parametrize(("m", "r", "v"), [(1000, 200, 200), (1000, 200, 180), (500, 100, 70), (50, 20, 16)])
def test_bound_brackets_the_brute_force_binomial_tail_at_delta_zero(m: int, r: int, v: int) -> None:
    eps = epsilon_lower_bound(m=m, r=r, v=v, delta=0.0)
    assert eps > 0
    assert brute_tail(r, v, eps - 1e-4) < 0.05 <= brute_tail(r, v, eps + 1e-4)


def test_ceiling_at_200_guesses_is_the_closed_form() -> None:
    # all r right at delta = 0: q^r = 0.05  ->  eps = logit(0.05 ** (1 / r)), about 4.19 at r = 200
    q = 0.05 ** (1 / 200)
    assert audit_ceiling(200, 0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-5)
    assert 4.1 < audit_ceiling(200, 1e-5, m=1000) < audit_ceiling(200, 0.0)
    assert audit_ceiling(1000, 0.0) > audit_ceiling(200, 0.0)


def test_no_evidence_gives_zero() -> None:
    assert epsilon_lower_bound(m=1000, r=200, v=100, delta=1e-5) == 0.0
    assert epsilon_lower_bound(m=1000, r=0, v=0, delta=1e-5) == 0.0


def test_delta_term_matches_a_brute_force_computation() -> None:
    m, r, v, eps, delta = 400, 60, 50, 1.0, 1e-4
    tails = [brute_tail(r, v - i, eps) for i in range(v + 1)]
    alpha = max((tails[i] - tails[0]) / i for i in range(1, v + 1))
    expected = tails[0] + 2 * m * delta * alpha
    assert p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) == pytest.approx(expected, rel=1e-9)
    assert epsilon_lower_bound(m=m, r=r, v=v, delta=delta) < epsilon_lower_bound(m=m, r=r, v=v, delta=0.0)


def test_bad_counts_are_refused() -> None:
    with pytest.raises(DpradError, match="v <= r <= m"):
        epsilon_lower_bound(m=10, r=20, v=5, delta=0.0)
    with pytest.raises(DpradError, match="delta"):
        epsilon_lower_bound(m=10, r=5, v=5, delta=2.0)


def _randomised_response_audit(
    eps: float, *, m: int, k: int, trials: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Correct guesses in `trials` one-run audits of eps-DP randomised response: each canary's bit (in/out) is
    released flipped with probability 1 / (1 + e^eps); the auditor ranks canaries by the released bit plus
    independent jitter and guesses top k "in", bottom k "out"."""
    s = rng.random((trials, m)) < 0.5  # (T, M) true membership
    flip = rng.random((trials, m)) < 1 / (1 + math.exp(eps))
    released = s ^ flip
    score = released + rng.random((trials, m)) * 0.5  # (T, M) ties broken by noise independent of s
    order = np.argsort(-score, axis=1)
    top, bottom = order[:, :k], order[:, -k:]
    v = np.take_along_axis(s, top, 1).sum(1) + (~np.take_along_axis(s, bottom, 1)).sum(1)
    return v, 2 * k


@pytest.mark.parametrize(("eps", "min_median"), [(0.5, 0.1), (1.0, 0.4), (2.0, 1.0)])
def test_false_positive_rate_is_at_most_5_percent_on_randomised_response(
    eps: float, min_median: float
) -> None:
    rng = np.random.default_rng(int(eps * 100))
    m, trials = 400, 3000
    v, r = _randomised_response_audit(eps, m=m, k=50, trials=trials, rng=rng)
    bound = {u: epsilon_lower_bound(m=m, r=r, v=u, delta=0.0) for u in range(r + 1)}
    # simulated: the share of audits whose bound exceeds the true eps, within 3 standard errors of 5%
    exceed = np.mean([bound[int(u)] > eps for u in v])
    assert exceed <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)
    # exact: each guess here is right with probability e^eps / (1 + e^eps), so v ~ Binomial(r, q)
    first = min(u for u in range(r + 1) if bound[u] > eps)
    assert brute_tail(r, first, eps) <= 0.05
    # and the audit has power
    assert np.median(v) > 0.55 * r and np.median([bound[int(u)] for u in v]) > min_median


def test_delta_mechanism_false_positive_rate() -> None:
    """(eps, delta)-DP: with probability delta the bit is released as is, else eps-randomised response."""
    rng = np.random.default_rng(7)
    eps, delta, m, k, trials = 1.0, 1e-3, 400, 50, 3000
    s = rng.random((trials, m)) < 0.5
    leak = rng.random((trials, m)) < delta
    released = np.where(leak, s, s ^ (rng.random((trials, m)) < 1 / (1 + math.exp(eps))))
    score = released + leak * 1.0 + rng.random((trials, m)) * 0.5  # leaked bits rank first / last
    order = np.argsort(-score, axis=1)
    v = np.take_along_axis(s, order[:, :k], 1).sum(1) + (~np.take_along_axis(s, order[:, -k:], 1)).sum(1)
    bound = {int(u): epsilon_lower_bound(m=m, r=2 * k, v=int(u), delta=delta) for u in np.unique(v)}
    assert np.mean([bound[int(u)] > eps for u in v]) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


# ---- canaries ----


@pytest.fixture(scope="module")
def train_reports() -> list:
    return generate_reports(SynthConfig(n_patients=150, seed=5))


def test_make_canaries(train_reports: list) -> None:
    c = make_canaries(train_reports, CHEXPERT14, m=100, rng=np.random.default_rng(0))
    assert c.m == 100 and len(set(c.source_ids)) == 100
    assert {r.id for r in train_reports} >= set(c.source_ids)
    assert all(r.id.startswith("canary-") and r.patient_id == r.id for r in c.reports)
    y = c.label_matrix(CHEXPERT14)
    assert y.shape == (100, len(CHEXPERT14)) and set(np.unique(y)) == {0.0, 1.0}
    assert 0.35 < y.mean() < 0.65 and 30 < c.included.sum() < 70
    by_id = {r.id: r for r in train_reports}
    assert all(r.text == by_id[s].text for r, s in zip(c.reports, c.source_ids, strict=True))
    assert len(c.included_reports()) == c.included.sum()
    rare = make_canaries(train_reports, CHEXPERT14, m=10, rng=np.random.default_rng(0), rare_tokens=True)
    assert all(
        r.text.startswith(by_id[s].text) and len(r.text.split()) == len(by_id[s].text.split()) + 3
        for r, s in zip(rare.reports, rare.source_ids, strict=True)
    )
    again = make_canaries(train_reports, CHEXPERT14, m=100, rng=np.random.default_rng(0))
    assert again.source_ids == c.source_ids and (again.included == c.included).all()
    with pytest.raises(DpradError, match="--audit-canaries"):
        make_canaries(train_reports, CHEXPERT14, m=len(train_reports) + 1, rng=np.random.default_rng(0))
    with pytest.raises(DpradError, match="at least 2"):
        make_canaries(train_reports, CHEXPERT14, m=1, rng=np.random.default_rng(0))


def test_score_canaries_memorised_vs_not(train_reports: list) -> None:
    c = make_canaries(train_reports, CHEXPERT14, m=200, rng=np.random.default_rng(1))
    rng = np.random.default_rng(2)
    memorised = np.where(c.included, 0.1, 5.0) + rng.random(200) * 0.01  # included canaries fit their labels
    audit = score_canaries(memorised, c, delta=1e-5)
    assert (audit.k_plus, audit.k_minus, audit.r) == (20, 20, 40)
    assert audit.v == audit.r and audit.epsilon_lower_bound == pytest.approx(audit.ceiling)
    assert "cannot be refuted" in audit.cannot_check
    clueless = score_canaries(rng.random(200), c, delta=1e-5)
    assert clueless.epsilon_lower_bound < 1.0
    section = canary_section(memorised, c, delta=1e-5, ledger_epsilon=1.0)
    assert section["exceeds_ledger"] is True and section["canaries"]["m"] == 200
    with pytest.raises(DpradError, match="shape"):
        score_canaries(memorised[:10], c, delta=1e-5)
    with pytest.raises(DpradError, match="k\\+"):
        score_canaries(memorised, c, k_plus=150, k_minus=100, delta=1e-5)


def test_canary_hook_swaps_sources_for_included_canaries(train_reports: list) -> None:
    from dprad.audit.canaries import canary_hook

    train, canaries = canary_hook(m=50, rng=np.random.default_rng(3))(list(train_reports), CHEXPERT14)
    ids = {r.id for r in train}
    assert not ids & set(canaries.source_ids)
    assert {r.id for r in canaries.included_reports()} <= ids
    assert len(train) == len(train_reports) - 50 + int(canaries.included.sum())
