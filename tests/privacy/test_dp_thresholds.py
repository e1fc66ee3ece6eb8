"""DP thresholds: noisy score histograms over a public grid, and the ledger's composition."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld

from dprad.errors import DpradError
from dprad.metrics.scores import per_label
from dprad.privacy import dpsgd_event
from dprad.privacy.accounting import compose_epsilon, gaussian_epsilon
from dprad.privacy.noise import NoiseSource
from dprad.privacy.thresholds import (
    DEFAULT_GRID,
    FALLBACK,
    dp_thresholds,
    one_report_per_patient,
    score_histograms,
)


def _scores(n: int, n_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < rng.uniform(0.05, 0.5, n_labels)).astype(np.float32)
    probs = 1 / (1 + np.exp(-(2.5 * (2 * y - 1) + rng.normal(0, 1.5, y.shape) - 1)))
    mask = (rng.random(y.shape) > 0.05).astype(np.float32)
    return y, probs, mask


def _brute_force(y, probs, mask, grid, critical):  # type: ignore[no-untyped-def]
    """The non-private grid search, written independently: per-label metrics at every grid point."""
    out = np.full(y.shape[1], FALLBACK)
    for j in range(y.shape[1]):
        rows = [per_label(y[:, [j]], probs[:, [j]], mask=mask[:, [j]], thresholds=g)[0] for g in grid]
        if rows[0]["support"] == 0:
            continue
        if j in critical:
            ok = [k for k, r in enumerate(rows) if r["recall"] >= critical[j]]
            out[j] = grid[ok[-1]] if ok else grid[0]
        else:
            out[j] = grid[int(np.argmax([r["f1"] for r in rows]))]
    return out


@pytest.mark.parametrize("grid", [DEFAULT_GRID, (0.1, 0.3, 0.5, 0.7, 0.9)])
def test_noise_free_limit_is_the_grid_search(grid: tuple[float, ...]) -> None:
    y, probs, mask = _scores(400, 5, 0)
    critical = {2: 0.9}
    th = dp_thresholds(
        y,
        probs,
        mask,
        epsilon=math.inf,
        delta=1e-5,
        noise=NoiseSource.from_seed(0).stream("test"),
        grid=grid,
        critical=critical,
    )
    np.testing.assert_array_equal(th.values, _brute_force(y, probs, mask, grid, critical))
    assert th.epsilon == math.inf and "NOT private" in th.rule
    assert isinstance(th.event, dp_accounting.NonPrivateDpEvent)


def test_private_thresholds_converge_and_account() -> None:
    y, probs, mask = _scores(3000, 4, 1)
    exact = dp_thresholds(
        y, probs, mask, epsilon=math.inf, delta=1e-5, noise=NoiseSource.from_seed(0).stream("test")
    )
    noisy = dp_thresholds(
        y, probs, mask, epsilon=1.0, delta=1e-5, noise=NoiseSource.from_seed(0).stream("test")
    )
    assert np.abs(noisy.values - exact.values).max() <= 0.2  # close at eps 1 with 3000 reports
    assert noisy.epsilon <= 1.0 and noisy.epsilon == pytest.approx(1.0, rel=1e-3)
    assert noisy.event == dp_accounting.GaussianDpEvent(noisy.noise_multiplier)
    acc = pld.PLDAccountant()  # recompute from the event with an independent accountant
    acc.compose(noisy.event)
    assert acc.get_epsilon(1e-5) == pytest.approx(noisy.epsilon, rel=0.02)
    assert compose_epsilon([noisy.event], 1e-5) == pytest.approx(noisy.epsilon, rel=1e-9)
    assert set(noisy.values) <= set(DEFAULT_GRID) | {FALLBACK}


def test_histogram_sensitivity_is_sqrt_labels() -> None:
    y, probs, mask = _scores(60, 6, 2)
    mask[:] = 1
    pos, neg = score_histograms(y, probs, mask, DEFAULT_GRID)
    assert pos.sum() + neg.sum() == y.size
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        p2, n2 = score_histograms(y[keep], probs[keep], mask[keep], DEFAULT_GRID)
        assert math.sqrt(((pos - p2) ** 2).sum() + ((neg - n2) ** 2).sum()) == pytest.approx(math.sqrt(6))


def test_ledger_total_composes_training_and_thresholds() -> None:
    delta = 1e-5
    training = dpsgd_event(noise_multiplier=1.1, sample_rate=0.1, steps=50)
    th = dp_thresholds(
        *_scores(500, 3, 3), epsilon=0.5, delta=delta, noise=NoiseSource.from_seed(0).stream("test")
    )
    total = compose_epsilon([training, th.event], delta)
    acc = pld.PLDAccountant()
    acc.compose(training)
    eps_training = acc.get_epsilon(delta)
    acc.compose(th.event)
    assert total == pytest.approx(acc.get_epsilon(delta), rel=0.01)  # dp-accounting's own composition
    assert max(eps_training, th.epsilon) < total <= eps_training + th.epsilon + 1e-6
    # Gaussians merge exactly: two of sigma s compose to one of sigma s / sqrt(2)
    two = compose_epsilon([dp_accounting.GaussianDpEvent(4.0), dp_accounting.GaussianDpEvent(4.0)], delta)
    assert two == pytest.approx(gaussian_epsilon(4.0 / math.sqrt(2), delta=delta), rel=1e-12)
    assert compose_epsilon([training, dp_accounting.NonPrivateDpEvent()], delta) == math.inf


def test_bad_input_is_a_clear_error() -> None:
    y, probs, mask = _scores(50, 2, 4)
    rng = NoiseSource.from_seed(0).stream("test")
    with pytest.raises(DpradError, match="grid"):
        dp_thresholds(y, probs, mask, epsilon=1.0, delta=1e-5, noise=rng, grid=(0.5, 0.2))
    with pytest.raises(DpradError, match="do not fit"):
        dp_thresholds(y[:10], probs, mask, epsilon=1.0, delta=1e-5, noise=rng)
    with pytest.raises(DpradError, match="critical"):
        dp_thresholds(y, probs, mask, epsilon=1.0, delta=1e-5, noise=rng, critical={5: 0.9})
    with pytest.raises(DpradError, match="epsilon"):
        dp_thresholds(y, probs, mask, epsilon=-1.0, delta=1e-5, noise=rng)


def test_one_report_per_patient_keeps_each_patients_first_report_by_id() -> None:
    patients = ["p2", "p1", "p2", "p3", "p1", "p2"]
    reports = ["r9", "r4", "r1", "r7", "r2", "r5"]
    keep = one_report_per_patient(patients, reports)
    assert keep.tolist() == [2, 3, 4]  # p2 -> r1, p3 -> r7, p1 -> r2
    assert len({patients[i] for i in keep}) == len(keep) == len(set(patients))


def _two_level_scores(
    n: int, n_labels: int, neg_hi: float, pos_lo: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels with 30% positives; negatives score in [0, neg_hi), positives in [pos_lo, pos_lo + 0.15)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < 0.3).astype(np.float32)
    probs = np.where(y > 0, pos_lo + 0.15 * rng.random(y.shape), neg_hi * rng.random(y.shape))
    return y, probs


def test_the_same_noise_gives_different_models_different_thresholds() -> None:
    """Strong signal: the thresholds follow the model, not the noise draw (the same rng seed for both)."""
    low = _two_level_scores(3000, 4, neg_hi=0.15, pos_lo=0.2, seed=1)  # best cut: 0.2
    high = _two_level_scores(3000, 4, neg_hi=0.65, pos_lo=0.7, seed=1)  # best cut: 0.7
    a = dp_thresholds(
        *low, None, epsilon=1.0, delta=1e-5, noise=NoiseSource.from_seed(7).stream("test"), critical={0: 0.9}
    )
    b = dp_thresholds(
        *high, None, epsilon=1.0, delta=1e-5, noise=NoiseSource.from_seed(7).stream("test"), critical={0: 0.9}
    )
    np.testing.assert_allclose(a.values, [0.2] * 4)  # both away from the default (0.3)
    np.testing.assert_allclose(b.values, [0.7] * 4)


def test_the_product_default_is_the_mechanisms_fallback() -> None:
    """`PrivacyConfig.threshold_default` (config cannot import privacy) and the mechanism's FALLBACK are
    one number written twice: a change to one must change the other."""
    from dprad.config import PrivacyConfig

    assert PrivacyConfig().threshold_default == FALLBACK


@pytest.mark.parametrize("n", [115, 3000])
def test_a_model_with_constant_scores_keeps_the_defaults(n: int) -> None:
    """No signal in the scores: every label, critical ones too, keeps the default whatever the noise draw
    (the product's, and one a user sets)."""
    rng = np.random.default_rng(3)
    y = (rng.random((n, 14)) < rng.uniform(0.01, 0.4, 14)).astype(np.float32)
    probs = np.full(y.shape, 0.42)
    critical = {5: 0.9, 6: 0.9, 7: 0.9, 9: 0.9}
    for seed in range(5):
        th = dp_thresholds(
            y,
            probs,
            None,
            epsilon=1.0,
            delta=1e-5,
            noise=NoiseSource.from_seed(seed).stream("test"),
            critical=critical,
        )
        np.testing.assert_allclose(th.values, FALLBACK)
        own = dp_thresholds(
            y,
            probs,
            None,
            epsilon=1.0,
            delta=1e-5,
            noise=NoiseSource.from_seed(seed).stream("test"),
            default=0.5,
            critical=critical,
        )
        np.testing.assert_allclose(own.values, 0.5)


def test_small_validation_noise_leaves_every_label_at_the_default() -> None:
    """The demo's case: 115 validation reports, 14 labels, a tenth of eps 1: the noise buries the counts, so
    nothing moves (before, critical labels dropped to 0.1 and others moved with the noise draw)."""
    y, probs, mask = _scores(115, 14, 4)
    critical = {5: 0.9, 6: 0.9, 7: 0.9, 9: 0.9}
    for seed in range(5):
        th = dp_thresholds(
            y,
            probs,
            mask,
            epsilon=0.1,
            delta=1e-4,
            noise=NoiseSource.from_seed(seed).stream("test"),
            critical=critical,
        )
        np.testing.assert_allclose(th.values, FALLBACK)
