"""A federation a hospital controls, with real processes on loopback: stopping a client stops its node
(nothing answered after the stop, no process of the site left), an incompatible site is refused at hello
before anyone trains, and a client that cannot reach its federation, or whose federation refused it or
ended, says so in one line and exits within its --timeout."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from fedprocs import client, server, site_processes, wait_for, wait_ok

from dprad.federate.launch import free_port
from federated import fresh, prepare

SITES = ("site_a", "site_b", "site_c")


def _lines(site: Path) -> list[dict[str, object]]:
    log = site / "messages.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def _one_error_line(log: Path) -> str:
    errors = [ln for ln in log.read_text().splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, log.read_text()[-2000:]
    assert errors[0].startswith("dprad: error: "), errors
    return errors[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopping_a_client_stops_its_node_and_a_restart_is_one_site(
    prepared: dict[str, Path], tmp_path: Path, sig: signal.Signals
) -> None:
    a, b, victim = fresh(prepared, tmp_path, *SITES)
    port = free_port()
    out = tmp_path / "fed"
    restart = sig == signal.SIGKILL  # then restarted: a second round to rejoin; else one round suffices
    rounds = 2 if restart else 1
    srv = server(  # process control, on the plain round (secure rounds: tests/federate/test_secure_sum.py)
        out, port, "--min-clients", "2", "--wait-for", "3", "--timeout", "90", "--no-secagg", rounds=rounds
    )
    others = [client(s, port) for s in (a, b)]
    stopped = client(victim, port)
    wait_for(lambda: any(x["kind"] == "hello" for x in _lines(victim)), 240, "the victim never said hello")

    node_log = victim / "supernode.log"
    wait_for(lambda: "Receiving: train" in node_log.read_text(), 300, "round 1 never reached the victim")
    time.sleep(1)  # its round-1 ClientApp starting
    os.kill(stopped.pid, sig)  # the client process only: not its group, as an operator's kill would
    stopped.wait(20)
    at_stop = len(_lines(victim))
    t0 = time.monotonic()
    wait_for(lambda: not site_processes(victim), 15, f"left running: {site_processes(victim)}")
    gone = time.monotonic() - t0
    time.sleep(3)
    assert len(_lines(victim)) == at_stop  # nothing received or sent after the stop
    assert not site_processes(victim)
    sent = [x for x in _lines(victim) if x["direction"] == "sent"]
    assert [x["kind"] for x in sent] == ["hello"]  # its round-1 update never left
    if restart:  # the same command again: it resumes, and its hello says what its line said
        again = client(victim, port)
    wait_ok(srv, 420, tmp_path / "server.log")
    for c in others:
        wait_ok(c, 60, tmp_path / "server.log")
    log = json.loads((out / "federation.json").read_text())
    first = log["rounds"][0]
    assert set(first["answered"]) == {"site_a", "site_b"} and "site_c" in first["failed"]
    if not restart:
        assert len(_lines(victim)) == at_stop and len(log["rounds"]) == 1
        print(f"{sig.name}: site processes gone {gone:.2f} s after the client exited")
        return
    assert again.wait(60) == 0
    taken = json.loads((victim / "rounds.json").read_text())["rounds"]
    hellos = [x for x in _lines(victim)[at_stop:] if x["kind"] == "hello" and x["direction"] == "sent"]
    said = re.search(r"resuming \((\d+) of", max(victim.parent.glob("site_c-client-*.log")).read_text())
    assert said is not None
    assert hellos[0]["content"]["metrics"]["items"]["rounds_taken"] == int(said.group(1))  # type: ignore[index]
    assert taken[-1]["round"] == 2 and len(taken) == int(said.group(1)) + 1
    assert set(log["rounds"][1]["answered"]) == set(SITES)
    assert set(log["sites"]) == set(SITES)  # one site, its two nodes under its name
    assert len(log["sites"]["site_c"]["nodes"]) == 2
    print(f"{sig.name}: site processes gone {gone:.2f} s after the client exited")


def test_a_refused_site_and_its_ended_federation_each_stop_their_client_in_one_line(
    prepared: dict[str, Path], tmp_path: Path, tiny_bert: Path
) -> None:
    (good,) = fresh(prepared, tmp_path, "site_a")
    odd = prepare(
        prepared["data"] / "site_b-cxr.csv", tmp_path / "odd", name="odd", model=tiny_bert,
        extra=("--thresholds", "0.5"),
    )  # fmt: skip
    port = free_port()
    out = tmp_path / "fed"
    srv = server(out, port, "--min-clients", "2", "--timeout", "300")
    good_c, odd_c = client(good, port, "--timeout", "5"), client(odd, port, "--timeout", "5")
    assert odd_c.wait(240) != 0
    assert srv.wait(120) != 0  # one site passed its hello checks: fewer than --min-clients
    t_end = time.monotonic()
    assert good_c.wait(60) != 0
    ended_after = time.monotonic() - t_end
    odd_line = _one_error_line(_log(tmp_path, "odd"))
    good_line = _one_error_line(_log(tmp_path, "site_a"))
    assert "refused by the federation" in odd_line and "planned without DP thresholds" in odd_line
    assert "ended" in good_line and "before this site was evaluated" in good_line
    assert ended_after < 5 + 10
    for s in (good, odd):  # nobody trained or released anything
        assert not (s / "privacy.json").exists() and not (s / "updates").exists()
        assert {x["kind"] for x in _lines(s)} <= {"hello", "refused"}
    print(f"ended federation: client exited {ended_after:.1f} s after the server (--timeout 5)")


def _log(root: Path, name: str) -> Path:
    (log,) = root.glob(f"{name}-client-*.log")
    return log


def test_a_client_that_cannot_reach_the_superlink_exits_in_one_line_within_its_timeout(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    (site,) = fresh(prepared, tmp_path, "site_a")
    t0 = time.monotonic()
    c = client(site, free_port(), "--timeout", "2")
    assert c.wait(60) == 2
    took = time.monotonic() - t0
    line = _one_error_line(_log(tmp_path, "site_a"))
    assert "cannot reach the SuperLink" in line and "--timeout 2" in line
    assert not site_processes(site)
    print(f"closed port: exited after {took:.1f} s (--timeout 2, Python start included)")


def test_a_killed_server_leaves_no_flower_process(tmp_path: Path) -> None:
    """SIGKILL of ``dprad federate server`` itself, while its ServerApp waits for hospitals: its reaper
    kills the SuperLink's SuperExec and ServerApp at once (Flower detaches them into sessions of their
    own), hung or not."""
    out = tmp_path / "fed"
    port = free_port()
    srv = server(out, port, "--min-clients", "2", "--timeout", "60")
    home = (out / "flower" / "home").resolve()
    mark = f"FLWR_HOME={home}".encode()

    def flower() -> list[str]:
        found = []
        for d in Path("/proc").glob("[0-9]*"):
            try:
                if mark in (d / "environ").read_bytes().split(b"\0"):
                    stat = (d / "stat").read_text()
                    if stat.rsplit(")", 1)[1].split()[0] != "Z":
                        found.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
        return found

    wait_for(lambda: any("flwr-serverapp" in c for c in flower()), 240, "the ServerApp never started")
    os.kill(srv.pid, signal.SIGKILL)
    srv.wait(20)
    t0 = time.monotonic()
    # without the reaper, Flower's own parent watch ends them about 10 s later, and never a hung one
    wait_for(lambda: not flower(), 3, f"left running: {flower()}")
    print(f"every Flower process of the server gone {time.monotonic() - t0:.2f} s after its SIGKILL")
