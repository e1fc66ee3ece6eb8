"""AdaSSP (bench/adassp.py, research code outside the package): DP least squares by perturbed sufficient
statistics."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from dp_accounting import pld
from sklearn.linear_model import Ridge

from dprad.errors import DpradError
from dprad.privacy.accounting import compose_epsilon
from dprad.privacy.noise import NoiseSource

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str) -> ModuleType:
    """bench/<name>.py. bench/ holds scripts, not a package: loaded from its path, as tests/docs loads
    docs/gen_reference.py (putting bench/ on sys.path would make every script a top-level module)."""
    spec = importlib.util.spec_from_file_location(f"dprad_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


adassp = bench_module("adassp")
LOGIT_SCALE = adassp.LOGIT_SCALE
adassp_event = adassp.adassp_event
block_projection = adassp.block_projection
calibrate_adassp = adassp.calibrate_adassp
fit_adassp = adassp.fit_adassp
pca_projection = adassp.pca_projection
sufficient_statistics = adassp.sufficient_statistics


def _data(n: int, d: int, n_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # unit rows, as dprad's head inputs
    w = rng.normal(size=(d, n_labels)) * 3
    y = (x @ w + 0.3 * rng.normal(size=(n, n_labels)) > 0).astype(np.float32)
    return x.astype(np.float32), y, np.ones_like(y)


def test_no_noise_is_ridge_regression() -> None:
    x, y, m = _data(300, 6, 3, 0)
    m[::7, 1] = 0  # masked entries have target 0 on the +-1 scale
    fit = fit_adassp(
        x, y, m, epsilon=math.inf, delta=1e-5, noise=NoiseSource.from_seed(0).stream("test"), ridge=0.3
    )
    assert fit.epsilon == math.inf and fit.ridge == 0.3 and fit.noise_multipliers == (0.0, 0.0, 0.0)
    xa = np.concatenate([x, np.ones((len(x), 1))], axis=1) / math.sqrt(2)  # the intercept column
    t = (2 * y - 1) * m
    ref = Ridge(alpha=0.3, fit_intercept=False).fit(xa, t)
    np.testing.assert_allclose(
        x @ fit.weights + fit.bias, LOGIT_SCALE / 2 * ref.predict(xa), rtol=1e-4, atol=1e-4
    )


def test_no_noise_with_projection_is_ridge_on_projected_rows() -> None:
    x, y, m = _data(200, 10, 2, 1)
    public, _, _ = _data(100, 10, 2, 2)
    proj = pca_projection(public, 4)
    np.testing.assert_allclose(proj.T @ proj, np.eye(4), atol=1e-5)
    fit = fit_adassp(
        x,
        y,
        m,
        epsilon=math.inf,
        delta=1e-5,
        noise=NoiseSource.from_seed(0).stream("test"),
        projection=proj,
        ridge=1.0,
    )
    za = np.concatenate([x @ proj, np.ones((len(x), 1))], axis=1) / math.sqrt(2)
    ref = Ridge(alpha=1.0, fit_intercept=False).fit(za, 2 * y - 1)
    np.testing.assert_allclose(
        x @ fit.weights + fit.bias, LOGIT_SCALE / 2 * ref.predict(za), rtol=1e-4, atol=1e-4
    )


def test_accounting_recomputes_and_stays_within_target() -> None:
    x, y, m = _data(500, 5, 4, 3)
    for eps in (1.0, 8.0):
        fit = fit_adassp(x, y, m, epsilon=eps, delta=1e-5, noise=NoiseSource.from_seed(0).stream("test"))
        assert eps * 0.99 <= fit.epsilon <= eps
        assert fit.event == adassp_event(noise_multipliers=fit.noise_multipliers)
        assert compose_epsilon([fit.event], 1e-5) == pytest.approx(fit.epsilon, rel=1e-9)
        acc = pld.PLDAccountant()  # an independent accountant on the same event
        acc.compose(fit.event)
        assert acc.get_epsilon(1e-5) == pytest.approx(eps, rel=0.02)
    # more budget, less noise; the split decides the shares of 1 / sigma^2
    s1, s10 = calibrate_adassp(epsilon=1.0, delta=1e-5), calibrate_adassp(epsilon=10.0, delta=1e-5)
    assert all(a > b for a, b in zip(s1, s10, strict=True))
    shares = [1 / s**2 for s in s1]
    np.testing.assert_allclose(np.array(shares) / sum(shares), [0.1, 0.45, 0.45], rtol=1e-9)


def test_sensitivity_of_the_released_statistics() -> None:
    """Removing any one row moves X^T X by <= 1 (Frobenius) and X^T T by <= sqrt(L), even for long rows."""
    x, y, m = _data(40, 6, 5, 4)
    x[:5] *= 7.0  # rows above norm 1 are clipped
    gram, mom = sufficient_statistics(x, y, m)
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        g2, m2 = sufficient_statistics(x[keep], y[keep], m[keep])
        assert np.linalg.norm(gram - g2) <= 1 + 1e-9
        assert np.linalg.norm(mom - m2) <= math.sqrt(y.shape[1]) + 1e-9


def test_private_fit_learns_with_enough_data() -> None:
    x, y, m = _data(20_000, 8, 3, 5)
    fit = fit_adassp(x, y, m, epsilon=1.0, delta=1e-6, noise=NoiseSource.from_seed(0).stream("test"))
    acc = ((x @ fit.weights + fit.bias > 0) == (y > 0)).mean()
    assert acc > 0.85
    assert fit.ridge == 0.0  # plenty of data: the smallest eigenvalue dwarfs the noise, no ridge needed
    small = fit_adassp(
        x[:300], y[:300], m[:300], epsilon=1.0, delta=1e-6, noise=NoiseSource.from_seed(0).stream("test")
    )
    assert small.ridge > 0  # little data: AdaSSP regularises adaptively


def test_block_projection_keeps_the_prior_block() -> None:
    p = pca_projection(np.random.default_rng(0).normal(size=(50, 6)), 3)
    b = block_projection(p, 4)
    assert b.shape == (10, 7)
    np.testing.assert_allclose(b.T @ b, np.eye(7), atol=1e-5)
    np.testing.assert_array_equal(b[6:, 3:], np.eye(4))


def test_bad_input_is_a_clear_error() -> None:
    x, y, m = _data(20, 3, 2, 6)
    with pytest.raises(DpradError, match="0 or 1"):
        fit_adassp(x, y * 2, m, epsilon=1.0, delta=1e-5, noise=NoiseSource.from_seed(0).stream("test"))
    with pytest.raises(DpradError, match="do not fit"):
        fit_adassp(x[:5], y, m, epsilon=1.0, delta=1e-5, noise=NoiseSource.from_seed(0).stream("test"))
    with pytest.raises(DpradError, match="epsilon"):
        fit_adassp(x, y, m, epsilon=0.0, delta=1e-5, noise=NoiseSource.from_seed(0).stream("test"))
    with pytest.raises(DpradError, match="projection size"):
        pca_projection(x, 5)
