"""Client-level DP at the server: each hospital's update clipped, one Gaussian on the sum, a fixed
denominator; each hospital's epsilon accounted over the rounds it took part in."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest

from dprad.errors import DpradError
from dprad.federate.server import FederationConfig
from dprad.privacy.client_level import client_ledger, flatten, noisy_mean_update, unflatten
from dprad.privacy.noise import NoiseSource


def test_clipping_bounds_one_hospitals_influence_and_the_noise_has_the_stated_std() -> None:
    rng = NoiseSource.from_seed(0).stream("test")
    big, small = np.full(1000, 10.0), np.full(1000, 0.001)
    without, _ = noisy_mean_update([small], clip=1.0, noise_multiplier=1e-9, denominator=2, noise=rng)
    with_big, norms = noisy_mean_update(
        [small, big], clip=1.0, noise_multiplier=1e-9, denominator=2, noise=rng
    )
    assert norms[1] == pytest.approx(np.linalg.norm(big))
    assert np.linalg.norm((with_big - without) * 2) == pytest.approx(1.0, rel=1e-6)  # sensitivity = clip
    noise, _ = noisy_mean_update([np.zeros(20000)], clip=0.5, noise_multiplier=2.0, denominator=4, noise=rng)
    assert np.std(noise * 4) == pytest.approx(1.0, rel=0.03)  # sigma * clip on the sum
    with pytest.raises(DpradError, match="fixed denominator"):
        noisy_mean_update([small, small], clip=1.0, noise_multiplier=1.0, denominator=1, noise=rng)


def test_arrays_round_trip_through_one_vector() -> None:
    params = {"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), dtype=np.float32)}
    back = unflatten(flatten(params), params)
    assert all(np.array_equal(back[k], params[k]) and back[k].dtype == params[k].dtype for k in params)


def test_each_hospitals_client_level_epsilon_composes_its_own_rounds() -> None:
    ledger = client_ledger(
        noise_multiplier=1.5, clip=1.0, delta=1e-5, rounds_by_site={"a": 4, "b": 1, "c": 0}
    )
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.5), 4))
    assert ledger["per_site"]["a"]["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert ledger["per_site"]["b"]["epsilon"] < ledger["per_site"]["a"]["epsilon"]
    assert ledger["per_site"]["c"]["epsilon"] == 0.0


def test_client_level_dp_with_few_hospitals_per_round_is_refused_unless_forced() -> None:
    with pytest.raises(DpradError, match="swamps them"):
        FederationConfig(min_clients=3, client_dp=1.0).check()
    FederationConfig(min_clients=3, client_dp=1.0, force=True).check()
    FederationConfig(min_clients=5, client_dp=1.0).check()
    with pytest.raises(DpradError, match="below --min-clients"):
        FederationConfig(min_clients=3, clients_per_round=2).check()
