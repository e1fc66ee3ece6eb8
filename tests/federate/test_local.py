"""The federation over the in-process transport: averaging, per-hospital ledgers, declines, refusals,
client-level DP, federated thresholds and evaluation, and each site's run directory."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch

from dprad.errors import DpradError
from dprad.federate.local import LocalTransport
from dprad.federate.server import FederationConfig, run_federation
from dprad.federate.site import Site
from dprad.modes.distributable import as_distributable
from dprad.privacy.accounting import event_from_dict
from dprad.run import RunRecord
from federated import ROUNDS, fresh, prepare, write_sites

SITES = ("site_a", "site_b", "site_c")


def _global(out: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.float64) for k, v in torch.load(out / "model" / "global.pt").items()}


def _update(site: Path, r: int) -> dict[str, np.ndarray]:
    with np.load(site / "updates" / f"round-{r}.npz") as z:
        return {k: z[k].astype(np.float64) for k in z.files}


def test_global_head_is_the_unit_weighted_average_and_each_ledger_recomputes(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    sites = fresh(prepared, tmp_path, *SITES)
    log = run_federation(
        FederationConfig(rounds=ROUNDS, min_clients=3), LocalTransport(sites), tmp_path / "fed"
    )
    last = log["rounds"][-1]["answered"]
    assert set(last) == set(SITES)
    total = sum(last.values())
    want = {
        k: sum(_update(s, ROUNDS)[k] * last[s.name] / total for s in sites) for k in _update(sites[0], ROUNDS)
    }
    got = _global(tmp_path / "fed")
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    units = [last[s] for s in SITES]
    assert len(set(units)) > 1  # unequal sites: a plain mean would differ from the weighted one
    for s in sites:
        ledger = json.loads((s / "privacy.json").read_text())
        acc = dp_accounting.pld.PLDAccountant()
        acc.compose(event_from_dict(ledger["event"]))
        assert ledger["epsilon"] == pytest.approx(acc.get_epsilon(ledger["delta"]), rel=1e-6)
        assert (
            ledger["epsilon"] <= 8.0 * 1.001 and ledger["epsilon"] > 7.0
        )  # all rounds + thresholds: its budget
        assert ledger["steps"] == ROUNDS * Site(s).info.steps_per_round
        record = RunRecord.open(s)  # each hospital ends with a run directory of the global model
        assert record.thresholds.fitted_on == "val (DP)"
        assert list(record.thresholds.values) == log["thresholds"]["values"]
    overall = log["evaluation"]["overall"]
    assert overall["reports"] == sum(e["reports"] for e in log["evaluation"]["sites"].values())
    w = overall["headline"]["weighted_f1"]
    assert w["ci_low"] <= w["estimate"] <= w["ci_high"]


def test_a_site_past_its_budget_declines_the_round(
    prepared: dict[str, Path], tmp_path: Path, tiny_bert: Path
) -> None:
    short = prepare(
        prepared["data"] / "site_c-cxr.csv", tmp_path / "site_c", name="site_c", model=tiny_bert, rounds=1
    )
    sites = [*fresh(prepared, tmp_path, "site_a", "site_b"), short]
    log = run_federation(FederationConfig(rounds=2, min_clients=2), LocalTransport(sites), tmp_path / "fed")
    second = log["rounds"][1]
    assert "site_c" in second["declined"] and "declines round 2" in second["declined"]["site_c"]
    assert set(second["answered"]) == {"site_a", "site_b"}
    assert not (short / "updates" / "round-2.npz").exists()
    ledger = json.loads((short / "privacy.json").read_text())
    assert ledger["steps"] == Site(short).info.steps_per_round  # one round, not two
    assert ledger["epsilon"] <= 8.0 * 1.001


def test_a_site_with_another_schema_is_refused_before_training(
    prepared: dict[str, Path], tmp_path: Path, tiny_bert: Path
) -> None:
    ct = write_sites(tmp_path, modality="ct")["site_c"]
    other = prepare(ct, tmp_path / "ct_site", name="ct_site", model=tiny_bert)
    sites = [*fresh(prepared, tmp_path, "site_a", "site_b"), other]
    log = run_federation(FederationConfig(rounds=1, min_clients=2), LocalTransport(sites), tmp_path / "fed")
    assert "ct_site" in log["refused"] and "refused before any training" in log["refused"]["ct_site"]
    assert all("ct_site" not in r["asked"] for r in log["rounds"])
    assert not (other / "updates").exists() and not (other / "privacy.json").exists()
    with pytest.raises(DpradError, match="fewer than --min-clients 3"):
        run_federation(
            FederationConfig(rounds=1, min_clients=3), LocalTransport([other, *sites[:2]]), tmp_path / "f2"
        )


def test_client_level_dp_is_refused_with_few_sites_unless_forced_and_accounted_per_site(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(DpradError, match="refused below --client-dp-min 5"):
        FederationConfig(rounds=1, min_clients=3, client_dp=1.0).check()
    sites = fresh(prepared, tmp_path, *SITES)
    cfg = FederationConfig(rounds=ROUNDS, min_clients=3, client_dp=0.5, client_clip=0.05, force=True)
    log = run_federation(cfg, LocalTransport(sites), tmp_path / "fed")
    ledger = log["client_level_dp"]
    for s in SITES:
        entry = ledger["per_site"][s]
        assert entry["rounds"] == ROUNDS
        acc = dp_accounting.pld.PLDAccountant()
        acc.compose(event_from_dict(entry["event"]))
        assert entry["epsilon"] == pytest.approx(acc.get_epsilon(cfg.client_delta), rel=1e-6)
    norms = log["rounds"][0]["update_norms"]
    assert set(norms) == set(SITES) and all(v > 0 for v in norms.values())


def test_the_federated_thresholds_come_from_the_summed_noisy_histograms(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    sites = fresh(prepared, tmp_path, *SITES)
    log = run_federation(FederationConfig(rounds=1, min_clients=3), LocalTransport(sites), tmp_path / "fed")
    th = log["thresholds"]
    sigmas = [Site(s).plan.threshold_sigma for s in sites]
    n_labels = len(Site(sites[0]).info.labels)
    assert th["noise_std"] == pytest.approx(np.sqrt(sum(x**2 for x in sigmas) * n_labels))
    assert th["sites"] == list(SITES) and th["fitted_on"] == "val (DP)"
    for s in sites:
        parts = {p["part"] for p in json.loads((s / "privacy.json").read_text())["parts"]}
        assert any("thresholds" in p for p in parts)  # each hospital paid for its own release
    with pytest.raises(Exception, match="already released"):
        Site(sites[0]).histograms(_global(tmp_path / "fed"), grid=(0.5,))


def test_two_sites_with_one_name_are_refused(prepared: dict[str, Path], tmp_path: Path) -> None:
    twins = [*fresh(prepared, tmp_path / "one", "site_a"), *fresh(prepared, tmp_path / "two", "site_a")]
    with pytest.raises(DpradError, match="two sites share a --name"):
        run_federation(FederationConfig(rounds=1, min_clients=2), LocalTransport(twins), tmp_path / "fed")
    assert all(not (s / "updates").exists() for s in twins)


def test_a_sites_histograms_carry_the_noise_its_ledger_accounts(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    """The noise a site adds to its threshold histograms has the std its ledger's thresholds part states
    (sigma * sqrt(L)): a site adding less would spend more than it records."""
    from dprad.privacy.thresholds import DEFAULT_GRID, one_report_per_patient, score_histograms

    (path,) = fresh(prepared, tmp_path, "site_a")
    site = Site(path)
    params = site.start()
    mode = site._mode(params)
    inputs = as_distributable(mode).split_inputs("val")
    val = site.plan.splits.val
    keep = one_report_per_patient([r.patient_id for r in val], [r.id for r in val])
    exact = score_histograms(inputs.targets[keep], mode.probs("val")[keep], inputs.mask[keep], DEFAULT_GRID)
    pos, neg, sigma = site.histograms(params, grid=DEFAULT_GRID)
    noise = np.concatenate([(pos - exact[0]).ravel(), (neg - exact[1]).ravel()])  # 2 L (G+1) draws
    ledger = json.loads((path / "privacy.json").read_text())
    part = next(p for p in ledger["parts"] if "thresholds" in p["part"])
    assert sigma == pytest.approx(part["noise_multiplier"])
    assert np.std(noise) == pytest.approx(sigma * np.sqrt(len(site.info.labels)), rel=0.2)


def test_incompatible_sites_are_refused_at_hello_before_anyone_trains(
    prepared: dict[str, Path], tmp_path: Path, tiny_bert: Path
) -> None:
    """A site without DP thresholds, one with another encoder setting (--max-length), and, against the
    server's --max-delta, any site: each refused at hello; with too few left, nobody trains or releases."""
    (good,) = fresh(prepared, tmp_path, "site_a")
    csv = prepared["data"] / "site_b-cxr.csv"
    no_dp_thresholds = prepare(
        csv, tmp_path / "nothr", name="nothr", model=tiny_bert, extra=("--thresholds", "0.5")
    )
    other_length = prepare(
        csv, tmp_path / "len32", name="len32", model=tiny_bert, extra=("--max-length", "32")
    )
    for odd, why in ((no_dp_thresholds, "planned without DP thresholds"), (other_length, "another model")):
        with pytest.raises(DpradError, match=r"passed the hello checks.*nothing was trained"):
            run_federation(
                FederationConfig(rounds=1, min_clients=2), LocalTransport([good, odd]), tmp_path / "fed"
            )
        assert why in json.loads((odd / "refused.json").read_text())["reason"]
        for s in (good, odd):  # no ledger moved, nothing released
            assert not (s / "privacy.json").exists() and not (s / "updates").exists()
        kinds = [(x["kind"], x["direction"]) for x in map(json.loads, (odd / "messages.jsonl").open())]
        assert kinds[-4:] == [
            ("hello", "received"),
            ("hello", "sent"),
            ("refused", "received"),
            ("refused", "sent"),
        ]
    with pytest.raises(DpradError, match="above the federation's --max-delta"):
        run_federation(
            FederationConfig(rounds=1, min_clients=1, max_delta=1e-6), LocalTransport([good]), tmp_path / "f3"
        )
    assert not (good / "privacy.json").exists()


def test_the_in_process_transport_records_every_message(prepared: dict[str, Path], tmp_path: Path) -> None:
    sites = fresh(prepared, tmp_path, "site_a", "site_b")
    run_federation(FederationConfig(rounds=1, min_clients=2), LocalTransport(sites), tmp_path / "fed")
    for s in sites:
        lines = [json.loads(x) for x in (s / "messages.jsonl").read_text().splitlines()]
        kinds = [x["kind"] for x in lines if x["direction"] == "sent"]
        assert kinds == ["hello", "train", "thresholds", "evaluate"]
        train = next(x for x in lines if x["kind"] == "train" and x["direction"] == "sent")
        assert set(train["content"]) == {"arrays", "metrics", "reply", "info"}
        assert "units" in train["content"]["metrics"]["items"]
