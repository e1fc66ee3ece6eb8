"""A LoRA federation (--no-probe): every site starts from the same public LoRA initialisation, sends its
adapters and head each round, and the global model is their unit-weighted average."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch

from dprad.cli import main
from dprad.federate.local import LocalTransport
from dprad.federate.server import FederationConfig, run_federation
from dprad.federate.site import Site
from dprad.privacy.accounting import event_from_dict
from dprad.run import RunRecord
from federated import prepare


def test_lora_sites_average_their_adapters_and_keep_their_ledgers(
    prepared: dict[str, Path], tmp_path: Path, tiny_bert: Path
) -> None:
    extra = ["--mode", "lora", "--no-probe", "--batch-size", "16"]
    sites = [
        prepare(prepared["data"] / f"{s}-cxr.csv", tmp_path / s, name=s, model=tiny_bert, extra=extra)
        for s in ("site_a", "site_b")
    ]
    assert Site(sites[0]).info.mode == "lora"
    log = run_federation(FederationConfig(rounds=2, min_clients=2), LocalTransport(sites), tmp_path / "fed")
    last = log["rounds"][-1]["answered"]
    total = sum(last.values())
    got = {
        k: v.numpy().astype(np.float64)
        for k, v in torch.load(tmp_path / "fed" / "model" / "global.pt").items()
    }
    assert any("lora" in k for k in got)  # adapters travel, not the frozen encoder
    for k in got:
        want = 0.0
        for s in sites:
            with np.load(s / "updates" / "round-2.npz") as z:
                want = want + z[k].astype(np.float64) * last[s.name] / total
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)
    for s in sites:
        ledger = json.loads((s / "privacy.json").read_text())
        acc = dp_accounting.pld.PLDAccountant()
        acc.compose(event_from_dict(ledger["event"]))
        assert ledger["epsilon"] == pytest.approx(acc.get_epsilon(ledger["delta"]), rel=1e-6)
        assert ledger["mode"] == "dp-lora" and ledger["steps"] == 2 * Site(s).info.steps_per_round
        assert RunRecord.open(s).mode == "lora"  # the site's run directory of the global LoRA model


def test_a_lora_federation_refuses_lp_ft(prepared: dict[str, Path], tmp_path: Path, tiny_bert: Path) -> None:
    with pytest.raises(SystemExit):
        main(["federate", "client", str(prepared["data"] / "site_a-cxr.csv"), "--out", str(tmp_path / "s"),
              "--model", str(tiny_bert), "--mode", "lora", "--epsilon", "8"])  # fmt: skip
