"""A federation over TLS with admitted hospitals, in real processes on loopback: the same global model
as the in-process federation, and, before anything is trained or sent, refusals of a client that does not
trust the server's CA, of a node key the server did not admit (its fingerprint in the server's log) and
of a hospital answering under another's name."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from fedprocs import client, server, site_processes, wait_for, wait_ok

from dprad.cli import main
from dprad.federate.certs import fingerprint, make_certs, make_node_key, public_key_bytes
from dprad.federate.launch import free_port
from dprad.federate.local import LocalTransport
from dprad.federate.secure_sum import UPDATE_RANGE, rounding_bound
from dprad.federate.server import FederationConfig, run_federation
from dprad.privacy.accounting import event_from_dict
from federated import fresh

SITES = ("site_a", "site_b", "site_c")


def _tls(pki: dict[str, Path]) -> tuple[str, ...]:
    return (
        "--ssl-ca-certfile", str(pki["ca.crt"]), "--ssl-certfile", str(pki["server.pem"]),
        "--ssl-keyfile", str(pki["server.key"]),
    )  # fmt: skip


def _node(pki: dict[str, Path], key: Path) -> tuple[str, ...]:
    return ("--root-certificates", str(pki["ca.crt"]), "--node-key", str(key))


def _head(out: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.float64) for k, v in torch.load(out / "model" / "global.pt").items()}


def _error_line(site: Path) -> str:
    (log,) = site.parent.glob(f"{site.name}-client-*.log")
    errors = [ln for ln in log.read_text().splitlines() if ln.startswith("dprad: error:")]
    assert len(errors) == 1, log.read_text()[-2000:]
    return errors[0]


def test_certs_are_a_private_ca_and_owner_only_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["federate", "certs", "--out", str(tmp_path / "pki"), "--server-name", "fed.example.org"])
    err = capsys.readouterr().err
    assert "own PKI" in err
    for name in ("ca.key", "server.key"):
        assert stat.S_IMODE((tmp_path / "pki" / name).stat().st_mode) == 0o600
    key, pub = make_node_key(tmp_path / "k")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and public_key_bytes(pub).startswith(b"-----BEGIN")


def test_server_and_client_refuse_to_start_without_tls_unless_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prepared: dict[str, Path]
) -> None:
    for args in (
        ["federate", "server", "--out", str(tmp_path / "fed")],
        ["federate", "client", "--out", str(prepared["site_a"]), "--superlink", "127.0.0.1:9"],
    ):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "TLS needs" in err[0] and "--insecure" in err[0], err
    assert not (tmp_path / "fed").exists()


def test_tls_and_admitted_keys_train_the_in_process_federations_model(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    sites = fresh(prepared, tmp_path / "tls", *SITES)
    pki = make_certs(tmp_path / "pki", "127.0.0.1")
    keys = {s: make_node_key(tmp_path / "keys" / s) for s in SITES}
    admit = [x for s in SITES for x in ("--admit", f"{s}={keys[s][1]}")]
    port = free_port()
    out = tmp_path / "tls" / "fed"
    srv = server(out, port, "--min-clients", "3", "--timeout", "300", *admit, secure=_tls(pki))
    clients = [client(s, port, secure=_node(pki, keys[s.name][0])) for s in sites]
    wait_ok(srv, 480, tmp_path / "tls" / "server.log")
    for c in clients:
        assert c.wait(60) == 0
    log = json.loads((out / "federation.json").read_text())
    assert [set(r["answered"]) for r in log["rounds"]] == [set(SITES)] * 2
    assert all(len(v["nodes"]) == 1 for v in log["sites"].values())
    assert "TLS on" in (tmp_path / "tls" / "server.log").read_text()
    # three hospitals: secure aggregation by default; the server received only masked vectors
    assert log["secure_aggregation"]["on"] and all(r["secure_aggregation"] for r in log["rounds"])
    received = [json.loads(x) for x in (out / "server_messages.jsonl").read_text().splitlines()]
    train = [x for x in received if x["type"] == "train"]
    assert len(train) == 3 * 4 * 3 and all("secaggplus_configs" in x["content"] for x in train)
    assert not any(r["items"] for x in train for r in x["content"].values() if r["type"] == "arrays")
    same = fresh(prepared, tmp_path / "local", *SITES)
    local = run_federation(
        FederationConfig(rounds=2, min_clients=3), LocalTransport(same), tmp_path / "local" / "fed"
    )
    got = _head(out)
    for k, v in _head(tmp_path / "local" / "fed").items():  # within SecAgg+'s rounding, over two rounds
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=2 * rounding_bound(UPDATE_RANGE))
    assert local["thresholds"]["values"] == log["thresholds"]["values"]
    for s in sites:
        ledger = json.loads((s / "privacy.json").read_text())
        acc = dp_accounting.pld.PLDAccountant()
        acc.compose(event_from_dict(ledger["event"]))
        assert ledger["epsilon"] == pytest.approx(acc.get_epsilon(ledger["delta"]), rel=1e-6)


def test_a_stranger_an_unadmitted_key_and_an_impostor_are_refused_before_training(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    a, b = fresh(prepared, tmp_path, "site_a", "site_b")
    stranger, unadmitted, impostor = (
        fresh(prepared, tmp_path / x, "site_c")[0] for x in ("stranger", "unadmitted", "impostor")
    )
    pki = make_certs(tmp_path / "pki", "127.0.0.1")
    other_ca = make_certs(tmp_path / "other", "127.0.0.1")
    ka, kb, kx, kc = (make_node_key(tmp_path / "keys" / n) for n in ("a", "b", "x", "c"))
    admit = ("--admit", f"site_a={ka[1]}", "--admit", f"site_b={kb[1]}", "--admit", f"site_x={kx[1]}")
    port = free_port()
    out = tmp_path / "fed"
    srv = server(
        out, port, "--min-clients", "2", "--wait-for", "3", "--timeout", "300", *admit, rounds=1,
        secure=_tls(pki),
    )  # fmt: skip
    good = [client(a, port, secure=_node(pki, ka[0])), client(b, port, secure=_node(pki, kb[0]))]
    server_log = tmp_path / "server.log"
    wait_for(lambda: "admitted site_x" in server_log.read_text(), 240, "the server never admitted its keys")
    bad = {
        stranger: client(stranger, port, "--timeout", "10", secure=_node(other_ca, kc[0])),
        unadmitted: client(unadmitted, port, "--timeout", "10", secure=_node(pki, kc[0])),
        impostor: client(impostor, port, "--timeout", "10", secure=_node(pki, kx[0])),  # site_c as site_x
    }
    for site, c in bad.items():
        assert c.wait(300) != 0, site
        assert not site_processes(site)
    wait_ok(srv, 480, tmp_path / "server.log")
    for c in good:
        assert c.wait(60) == 0
    assert "does not verify against --root-certificates" in _error_line(stranger)
    fp = fingerprint(public_key_bytes(kc[1]))
    assert fp in _error_line(unadmitted) and "not admitted" in _error_line(unadmitted)
    assert f"refused a SuperNode whose key is not admitted: {fp}" in (tmp_path / "server.log").read_text()
    line = _error_line(impostor)
    assert "refused by the federation" in line and "admitted as 'site_x' presents the name 'site_c'" in line
    for site in (stranger, unadmitted):  # refused before any message
        assert not (site / "messages.jsonl").exists()
    kinds = [json.loads(x)["kind"] for x in (impostor / "messages.jsonl").read_text().splitlines()]
    assert set(kinds) == {"hello", "refused"}
    for site in bad:
        assert not (site / "privacy.json").exists() and not (site / "updates").exists()
    log = json.loads((out / "federation.json").read_text())
    assert set(log["rounds"][0]["answered"]) == {"site_a", "site_b"}
    assert set(log["refused"]) == {"site_c"}


def test_a_hospital_killed_mid_secure_round_within_the_threshold_lets_the_round_finish(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    """Three real SuperNodes, secure aggregation on (the default with three): the third hospital's client
    is killed (SIGKILL) when its node receives the round's masked-vector stage. Two of three is SecAgg+'s
    threshold: the round, the thresholds and the evaluation finish over the two, and the global model is
    their units-weighted mean (the victim's masks removed with the shares the others hold)."""
    a, b, victim = fresh(prepared, tmp_path, *SITES)
    port = free_port()
    out = tmp_path / "fed"
    srv = server(out, port, "--min-clients", "2", "--wait-for", "3", "--timeout", "60", rounds=1)
    others = [client(s, port) for s in (a, b)]
    stopped = client(victim, port)
    node_log = victim / "supernode.log"
    wait_for(
        lambda: node_log.exists() and node_log.read_text().count("Receiving: train") >= 3,
        300,
        "the masked-vector stage never reached the victim",
    )  # stages: setup, share keys, collect masked vectors (where it trains), unmask
    os.kill(stopped.pid, signal.SIGKILL)
    stopped.wait(20)
    wait_for(lambda: not site_processes(victim), 15, f"left running: {site_processes(victim)}")
    wait_ok(srv, 420, tmp_path / "server.log")
    for c in others:
        wait_ok(c, 60, tmp_path / "server.log")
    log = json.loads((out / "federation.json").read_text())
    first = log["rounds"][0]
    assert log["secure_aggregation"]["on"] and first["secure_aggregation"]
    assert set(first["answered"]) == {"site_a", "site_b"} and set(first["failed"]) == {"site_c"}
    got, units = _head(out), first["answered"]
    updates = {s.name: np.load(s / "updates" / "round-1.npz") for s in (a, b)}
    for k, v in got.items():
        want = sum(updates[n][k] * u for n, u in units.items()) / sum(units.values())
        np.testing.assert_allclose(v, want, rtol=1e-5, atol=rounding_bound(UPDATE_RANGE))
    assert set(log["evaluation"]["sites"]) == {"site_a", "site_b"}
