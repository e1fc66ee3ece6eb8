"""Flower's deployment engine for real: a SuperLink and three SuperNodes in their own processes on
loopback (``dprad federate server`` and ``dprad federate client``), no Ray, no simulation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dprad.federate.launch import free_port
from dprad.federate.local import LocalTransport
from dprad.federate.server import FederationConfig, run_federation
from federated import fresh

SITES = ("site_a", "site_b", "site_c")
CONFIG_KEYS = {"labels", "round", "n_boot", "rule", "name", "error", "declined"}


STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    """Whatever happens in a test, none of its servers or clients (process groups) outlives it."""
    yield
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def _dprad(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        p = subprocess.Popen(
            [sys.executable, "-m", "dprad", *args], stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    STARTED.append(p)
    return p


def _server(out: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return _dprad(
        "federate", "server", "--out", str(out), "--port", str(port), "--rounds", "2", *extra,
        log=out.parent / "server.log",
    )  # fmt: skip


def _client(site: Path, port: int) -> subprocess.Popen[bytes]:
    return _dprad(
        "federate", "client", "--out", str(site), "--superlink", f"127.0.0.1:{port}",
        log=site.parent / f"{site.name}-client-{time.monotonic_ns()}.log",
    )  # fmt: skip


def _wait(proc: subprocess.Popen[bytes], timeout: float, what: Path) -> None:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"timed out; log:\n{what.read_text()[-3000:]}") from None
    assert rc == 0, what.read_text()[-3000:]


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
    server = _server(out, port, "--min-clients", "3", "--timeout", "120")
    clients = [_client(s, port) for s in sites]
    _wait(server, 420, tmp_path / "flower" / "server.log")
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


def _clientapps_of(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
                if b"flwr-clientapp" in cmd and os.getpgid(int(d.name)) == pgid:
                    out.append(int(d.name))
            except (OSError, ProcessLookupError):
                continue
    return out


def test_a_client_killed_mid_round_is_not_charged_and_resumes_when_restarted(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    a, b, victim = fresh(prepared, tmp_path, *SITES)
    port = free_port()
    out = tmp_path / "fed"
    server = _server(out, port, "--min-clients", "2", "--wait-for", "3", "--timeout", "45")
    clients = [_client(s, port) for s in (a, b)]
    killed = _client(victim, port)
    end = time.monotonic() + 240
    while "hello" not in (
        (victim / "messages.jsonl").read_text() if (victim / "messages.jsonl").exists() else ""
    ):
        assert time.monotonic() < end, "the victim never said hello"
        time.sleep(0.05)
    while _clientapps_of(killed.pid):  # its hello ClientApp still pushing its reply
        assert time.monotonic() < end, "the hello ClientApp never ended"
        time.sleep(0.02)
    while not _clientapps_of(killed.pid):  # its round-1 ClientApp has started: kill the hospital's client
        assert time.monotonic() < end, "round 1 never reached the victim"
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(10)
    assert not (victim / "updates" / "round-1.npz").exists()
    assert json.loads((victim / "rounds.json").read_text())["rounds"] == []  # nothing sent: nothing charged
    restarted = _client(victim, port)
    _wait(server, 420, tmp_path / "server.log")
    for c in (*clients, restarted):
        c.wait(60)
    log = json.loads((out / "federation.json").read_text())
    first, second = log["rounds"]
    assert set(first["answered"]) == {"site_a", "site_b"} and "site_c" in first["failed"]
    assert set(second["answered"]) == set(SITES)  # the restarted client rejoined
    ledger = json.loads((victim / "privacy.json").read_text())
    assert [r["round"] for r in json.loads((victim / "rounds.json").read_text())["rounds"]] == [2]
    steps = json.loads((victim / "site.json").read_text())["steps_per_round"]
    assert ledger["steps"] == steps  # one round in its ledger: the one it sent
    assert "site_c" in log["evaluation"]["sites"]
