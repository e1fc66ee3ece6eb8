from __future__ import annotations

import pytest

from dprad import DpradError
from dprad.config import flag_message
from dprad.errors import ParameterError
from dprad.privacy import calibrate_noise, compute_epsilon, default_delta


def test_rdp_known_value() -> None:
    # The classic opacus/TF-Privacy example: sigma=1.5, q=0.04, 2250 steps, delta=1e-5 -> eps ~ 7.33 under RDP.
    acc = compute_epsilon(noise_multiplier=1.5, sample_rate=0.04, steps=2250, delta=1e-5, accountant="rdp")
    assert acc.accountant == "rdp"
    assert acc.epsilon == pytest.approx(7.33, abs=0.01)


@pytest.mark.parametrize(
    ("sigma", "q", "steps"), [(1.5, 0.04, 2250), (0.8, 0.01, 1000), (5.0, 0.3, 100), (40.0, 0.5, 60)]
)
def test_pld_never_looser_than_rdp_and_prv_close_to_pld(sigma: float, q: float, steps: int) -> None:
    kw = dict(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5)
    pld = compute_epsilon(**kw, accountant="pld").epsilon
    rdp = compute_epsilon(**kw, accountant="rdp").epsilon
    prv = compute_epsilon(**kw, accountant="prv")
    assert pld <= rdp
    assert prv.epsilon == pytest.approx(pld, rel=0.05)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize("target", [0.01, 0.1, 1.0, 10.0])
def test_calibrated_sigma_spends_within_one_percent_below_target(target: float, accountant: str) -> None:
    q, steps, delta = 512 / 2678, 100, 1e-5
    sigma = calibrate_noise(
        target_epsilon=target, sample_rate=q, steps=steps, delta=delta, accountant=accountant
    )
    spent = compute_epsilon(
        noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant=accountant
    )
    assert spent.accountant == accountant
    assert 0.99 * target <= spent.epsilon <= target


def test_epsilon_grows_with_steps_and_shrinks_with_noise() -> None:
    e = lambda s, t: compute_epsilon(noise_multiplier=s, sample_rate=0.1, steps=t, delta=1e-5).epsilon  # noqa: E731
    assert e(1.0, 100) < e(1.0, 200)
    assert e(2.0, 100) < e(1.0, 100)
    assert compute_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=1e-5).epsilon == 0.0
    # the mechanism names its parameter; the user reads the flag (config.flag_message, the CLI's exit)
    with pytest.raises(
        ParameterError, match=r"^noise_multiplier 0 is below 0\.1"
    ) as err:  # was epsilon = inf
        compute_epsilon(noise_multiplier=0.0, sample_rate=0.1, steps=1, delta=1e-5)
    assert flag_message(err.value).startswith("--noise-multiplier 0 is below 0.1")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(target_epsilon=0.0), "^epsilon 0 must be a positive number"),
        (dict(target_epsilon=-1.0), "must be a positive number"),
        (dict(target_epsilon=1.0, delta=1.5), r"^delta 1.5 must be in \(0, 1\)"),
        (dict(target_epsilon=1.0, delta=0.0), r"^delta 0 must be in \(0, 1\)"),
        (dict(target_epsilon=1.0, sample_rate=0.0), "sample rate"),
    ],
)
def test_bad_privacy_arguments(kwargs: dict[str, float], match: str) -> None:
    args = dict(sample_rate=0.1, steps=10, delta=1e-5) | kwargs
    with pytest.raises(DpradError, match=match):
        calibrate_noise(**args)  # type: ignore[arg-type]


def test_default_delta_is_below_one_over_n() -> None:
    for n in (1, 9, 10, 2678, 10**6):
        d = default_delta(n)
        assert d <= 0.1 / n and d > 0.01 / n


def test_the_config_accepts_every_accountant_and_nothing_else() -> None:
    """config.py (a layer below) spells the accountants' names out: they must stay ACCOUNTANTS."""
    from dprad.config import PrivacyConfig
    from dprad.privacy import ACCOUNTANTS

    for name in ACCOUNTANTS:
        assert PrivacyConfig(accountant=name).accountant == name
    with pytest.raises(DpradError, match="--accountant 'foo' is not one of pld, rdp, prv"):
        PrivacyConfig(accountant="foo")  # refused without --epsilon too: nothing else reads it then
