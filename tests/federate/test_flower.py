"""Flower's deployment engine for real: a SuperLink and three SuperNodes in their own processes on
loopback (``dprad federate server`` and ``dprad federate client``), no Ray, no simulation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fedprocs import client, server, wait_ok

from dprad.federate.launch import free_port
from dprad.federate.local import LocalTransport
from dprad.federate.server import FederationConfig, run_federation
from federated import fresh

SITES = ("site_a", "site_b", "site_c")
CONFIG_KEYS = {"labels", "round", "n_boot", "rule", "name", "error", "declined", "fingerprint", "reason"}


def _server(out: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return server(out, port, *extra)


def _client(site: Path, port: int) -> subprocess.Popen[bytes]:
    return client(site, port)


def _head(out: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.float64) for k, v in torch.load(out / "model" / "global.pt").items()}


def _update(site: Path, r: int) -> dict[str, np.ndarray]:
    with np.load(site / "updates" / f"round-{r}.npz") as z:
        return {k: z[k].astype(np.float64) for k in z.files}


def _check_messages(site: Path, csv: Path) -> None:
    """Every message the site received or sent: arrays of numbers, numbers, and the few config strings the
    protocol names; none of the site's report texts or ids anywhere in the log."""
    log = (site / "messages.jsonl").read_text()
    lines = [json.loads(x) for x in log.splitlines()]
    assert {x["kind"] for x in lines} == {"hello", "train", "thresholds", "evaluate"}
    for x in lines:
        for rec in x["content"].values():
            assert rec["type"] in {"arrays", "metrics", "config"}
            if rec["type"] == "arrays":
                assert all(a["dtype"].startswith(("float", "int")) for a in rec["items"].values())
            elif rec["type"] == "metrics":
                assert all(isinstance(v, int | float) for v in rec["items"].values())
            else:
                assert set(rec["items"]) <= CONFIG_KEYS
    reports = pd.read_csv(csv)
    for _, r in reports.iterrows():
        assert str(r["id"]) not in log and str(r["patient_id"]) not in log
        assert str(r["text"])[:40] not in log


def test_three_real_clients_on_loopback_agree_with_the_in_process_federation(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    sites = fresh(prepared, tmp_path / "flower", *SITES)
    port = free_port()
    out = tmp_path / "flower" / "fed"
    srv = _server(out, port, "--min-clients", "3", "--timeout", "120", "--no-secagg")  # the plain sum
    clients = [_client(s, port) for s in sites]
    wait_ok(srv, 420, tmp_path / "flower" / "server.log")
    for c, s in zip(clients, sites, strict=True):
        c.wait(60)
        assert c.returncode == 0, s.name
    log = json.loads((out / "federation.json").read_text())
    assert [set(r["answered"]) for r in log["rounds"]] == [set(SITES)] * 2
    last = log["rounds"][-1]["answered"]
    total = sum(last.values())
    got = _head(out)
    for k in got:
        want = sum(_update(s, 2)[k] * last[s.name] / total for s in sites)
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)
    for s in sites:
        _check_messages(s, prepared["data"] / f"{s.name}-cxr.csv")
    # the same sites in one process: the same global model, thresholds and evaluation
    same = fresh(prepared, tmp_path / "local", *SITES)
    local = run_federation(
        FederationConfig(rounds=2, min_clients=3), LocalTransport(same), tmp_path / "local" / "fed"
    )
    for k, v in _head(tmp_path / "local" / "fed").items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6)
    assert local["thresholds"]["values"] == log["thresholds"]["values"]
    assert local["evaluation"]["overall"]["headline"] == log["evaluation"]["overall"]["headline"]
