"""Real processes of a federation on loopback for the tests: ``dprad federate server`` and ``client`` in
their own sessions, every one of them killed (with its group) when the test ends (conftest's fixture), and
the processes that belong to one site found through their environment (Flower's home in the site)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STARTED: list[subprocess.Popen[bytes]] = []


def dprad(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        p = subprocess.Popen(
            [sys.executable, "-m", "dprad", *args], stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    STARTED.append(p)
    return p


def server(
    out: Path, port: int, *extra: str, rounds: int = 2, secure: tuple[str, ...] = ("--insecure",)
) -> subprocess.Popen[bytes]:
    """``dprad federate server`` (plain on loopback unless ``secure`` gives its TLS / --admit flags)."""
    return dprad(
        "federate", "server", "--out", str(out), "--port", str(port), "--rounds", str(rounds), *secure, *extra,
        log=out.parent / "server.log",
    )  # fmt: skip


def client(
    site: Path, port: int, *extra: str, secure: tuple[str, ...] = ("--insecure",)
) -> subprocess.Popen[bytes]:
    """``dprad federate client`` of a prepared site (plain unless ``secure`` gives its TLS flags)."""
    return dprad(
        "federate", "client", "--out", str(site), "--superlink", f"127.0.0.1:{port}", *secure, *extra,
        log=log_of(site),
    )  # fmt: skip


def log_of(site: Path) -> Path:
    return site.parent / f"{site.name}-client-{time.monotonic_ns()}.log"


def wait_ok(proc: subprocess.Popen[bytes], timeout: float, what: Path) -> None:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"timed out; log:\n{what.read_text()[-3000:]}") from None
    assert rc == 0, what.read_text()[-3000:]


def kill_all() -> None:
    while STARTED:
        p = STARTED.pop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


def site_processes(site: Path) -> list[tuple[int, str]]:
    """Every live process (pid, command line) started for ``site``: its SuperNode, SuperExec and
    ClientApps carry ``FLWR_HOME=<site>/flower`` in their environment, wherever they were re-parented."""
    mark = f"FLWR_HOME={site.resolve() / 'flower'}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if mark in (d / "environ").read_bytes().split(b"\0"):
                stat = (d / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # not a zombie
                    out.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except OSError:
            continue
    return out


def wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, what
        time.sleep(0.05)
