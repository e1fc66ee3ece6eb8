"""The shipped thresholds, typed: what metrics.json and an export's thresholds.json hold is written by
``Thresholds.to_dict`` / ``to_export`` and read back by ``Thresholds.from_dict``, key for key."""

from __future__ import annotations

import json

import pytest

from dprad.data.schemas import CHEXPERT14
from dprad.errors import DpradError
from dprad.run import Thresholds

L = len(CHEXPERT14)
VALUES = tuple(round(0.05 * (i + 1), 2) for i in range(L))
CRITICAL = tuple(CHEXPERT14.critical)

# each shape as a run of its kind writes it (stages/finish.py, federate/site.py), keys in their order
WRITTEN = {
    "dp": {
        "fitted_on": "val (DP)",
        "rule": "max F1 over a grid; sensitivity >= 0.9 for critical labels",
        "epsilon": 0.4,
        "noise_multiplier": 12.5,
        "reports": 61,
        "critical": list(CRITICAL),
        "values": list(VALUES),
    },
    "val": {
        "fitted_on": "val (NOT private)",
        "rule": "max F1 over a grid",
        "critical": list(CRITICAL),
        "values": list(VALUES),
    },
    "0.5": {
        "fitted_on": None,
        "rule": "0.5 for every label",
        "critical": list(CRITICAL),
        "values": [0.5] * L,
    },
    "federated, not private": {
        "fitted_on": "val",
        "rule": "federated: max F1 over the summed histograms",
        "epsilon": None,
        "critical": [],
        "values": list(VALUES),
    },
}


@pytest.mark.parametrize("shape", list(WRITTEN))
def test_metrics_thresholds_round_trip_key_for_key(shape: str) -> None:
    written = WRITTEN[shape]
    typed = Thresholds.from_dict(written, CHEXPERT14, source="metrics.json")
    assert json.dumps(typed.to_dict()) == json.dumps(written)  # same keys, same order, same numbers
    assert typed.federated == shape.startswith("federated")


def test_an_exports_thresholds_name_their_labels_and_read_back_as_the_same_thresholds() -> None:
    run = Thresholds.from_dict(WRITTEN["dp"], CHEXPERT14, source="metrics.json")
    shipped = run.to_export(CHEXPERT14.labels)
    assert list(shipped) == ["labels", "values", "fitted_on", "rule", "epsilon"]  # no count of reports
    assert shipped["labels"] == list(CHEXPERT14.labels)
    assert Thresholds.from_dict(shipped, CHEXPERT14, source="thresholds.json") == run


def test_a_run_without_recorded_thresholds_shipped_half_and_a_wrong_length_is_refused() -> None:
    old = Thresholds.from_dict({}, CHEXPERT14, source="metrics.json")
    assert old.values == (0.5,) * L and old.fitted_on is None and old.covered
    with pytest.raises(DpradError, match="one number per label"):
        Thresholds.from_dict({"values": [0.5]}, CHEXPERT14, source="metrics.json")
