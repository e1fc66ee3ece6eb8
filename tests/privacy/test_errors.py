"""The privacy layer's errors: a parameter out of its domain in the mechanism's own words (the layers above
name the flag), and the invariants a guarantee rests on raised, not asserted (asserts vanish under -O)."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from dprad.config import flag_message
from dprad.errors import DpradError, ParameterError, PrivacyInvariantError
from dprad.privacy import DpSgd, calibrate_noise
from dprad.privacy.accounting import check_accountant, check_steps
from dprad.privacy.thresholds import score_histograms

PRIVACY = Path(__file__).resolve().parents[2] / "src" / "dprad" / "privacy"


def test_a_parameter_error_names_the_parameter_and_the_user_sees_the_flag() -> None:
    with pytest.raises(ParameterError) as err:
        calibrate_noise(target_epsilon=1e9, sample_rate=0.01, steps=100, delta=1e-5)
    assert isinstance(err.value, DpradError)  # every `except DpradError` still catches it
    assert (err.value.parameter, err.value.value) == ("epsilon", 1e9)
    assert str(err.value).startswith("epsilon 1e+09 is above 100, the largest target dprad calibrates")
    assert flag_message(err.value).startswith("--epsilon 1e+09 is above 100, the largest target")
    with pytest.raises(ParameterError) as err:
        check_accountant("foo")
    assert str(err.value) == "accountant 'foo' is not one of pld, rdp, prv"
    assert flag_message(err.value) == "--accountant 'foo' is not one of pld, rdp, prv"
    with pytest.raises(ParameterError) as err:
        check_steps(10**11)
    assert flag_message(err.value).startswith("--steps 100000000000 is more than the 10,000,000")
    with pytest.raises(ParameterError) as err:
        score_histograms(np.zeros((2, 1)), np.zeros((2, 1)), None, (0.5, 0.2))
    assert str(err.value) == "threshold_grid [0.5, 0.2] must be increasing numbers strictly between 0 and 1"


def test_a_parameter_error_crosses_a_process_boundary_whole() -> None:
    err = ParameterError(parameter="noise_multiplier", value=0.05, problem="is below 0.1")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ParameterError and str(back) == str(err) == "noise_multiplier 0.05 is below 0.1"
    assert (back.parameter, back.value, back.problem) == ("noise_multiplier", 0.05, "is below 0.1")


def test_the_mechanisms_name_no_flag_and_assert_nothing() -> None:
    """Flags belong to the command line (config.flag_name); an assert vanishes under python -O."""
    flags, asserts = [], []
    for path in sorted(PRIVACY.glob("*.py")):
        text = path.read_text()
        flags += [f"{path.name}: {m.group()}" for m in re.finditer(r"--[a-z][a-z-]*", text)]
        tree = ast.parse(text)
        asserts += [f"{path.name}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    assert not flags, flags
    assert not asserts, asserts


def _patient_dpsgd(groups: np.ndarray | None, n: int) -> DpSgd:
    return DpSgd(
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.5,
        steps=1,
        delta=1e-5,
        n=n,
        unit="patient",
        groups=groups,
    )


def test_a_patient_level_sampler_is_the_one_the_accountant_assumes() -> None:
    rng = np.random.default_rng(0)
    groups = np.array([0, 0, 1, 2])  # 4 reports of 3 patients
    assert _patient_dpsgd(groups, 3).sampler(rng).n == 3
    with pytest.raises(PrivacyInvariantError, match="no patient groups"):
        _patient_dpsgd(None, 3).sampler(rng)
    with pytest.raises(PrivacyInvariantError, match="n=4 patients, but the sampler's groups hold 3"):
        _patient_dpsgd(groups, 4).sampler(rng)  # e.g. n counted in reports, not patients
