"""The processes of a federation on Flower's deployment engine, on this machine or across hospitals:
the server side starts a SuperLink and submits the dprad Flower app to it; each hospital starts a
SuperNode that runs the app's ClientApp on its own site directory. Nothing here downloads anything: the
app's components are dprad's own modules and its dependency list is empty.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dprad import io
from dprad.errors import DpradError
from dprad.federate import reaper as reaper_module
from dprad.federate.reaper import kill_home
from dprad.federate.server import FEDERATION, FederationConfig

APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "dpradfed"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "dprad"

[tool.flwr.app.components]
serverapp = "dprad.federate.flower_app:server_app"
clientapp = "dprad.federate.flower_app:client_app"

[tool.flwr.app.config]
request = ""
"""


@dataclass(frozen=True)
class LinkSecurity:
    """The server's transport security: TLS files passed through to ``flower-superlink``
    (``--ssl-ca-certfile``, ``--ssl-certfile``, ``--ssl-keyfile``), or ``insecure``; and the admitted
    hospitals, each site name bound to its node's public key (Flower's SuperNode authentication)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    admit: tuple[tuple[str, Path], ...] = ()  # (site name, OpenSSH public key file)

    def check(self) -> None:
        given = [(f, p) for f, p in (("--ssl-ca-certfile", self.ca), ("--ssl-certfile", self.cert),
                                     ("--ssl-keyfile", self.key)) if p is not None]  # fmt: skip
        if self.insecure:
            if given or self.admit:
                raise DpradError(
                    "dprad federate server: --insecure with certificate files or --admit: choose TLS (the "
                    "three files) or --insecure; admitting hospitals by key needs TLS"
                )
            return
        if len(given) < 3:
            raise DpradError(
                "dprad federate server: TLS needs --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile (make a "
                "trial set with dprad federate certs); or pass --insecure to run without TLS on loopback or "
                "inside a VPN"
            )
        for flag, path in given:
            if not Path(path).is_file():
                raise DpradError(f"{flag} {path}: no such file")
        names = [n for n, _ in self.admit]
        if len(set(names)) < len(names):
            raise DpradError(f"--admit: a site name given twice ({', '.join(sorted(names))})")
        for name, pub in self.admit:
            if not name or not Path(pub).is_file():
                raise DpradError(f"--admit {name}={pub}: expected NAME=PUBLIC_KEY_FILE (an existing file)")

    def flags(self) -> list[str]:
        if self.insecure:
            return ["--insecure"]
        tls = [
            "--ssl-ca-certfile",
            str(self.ca),
            "--ssl-certfile",
            str(self.cert),
            "--ssl-keyfile",
            str(self.key),
        ]
        return tls + (["--enable-supernode-auth"] if self.admit else [])

    def describe(self) -> str:
        if self.insecure:
            return "TLS OFF (--insecure): updates, histograms and counts cross the network in clear text"
        who = (
            f"; only the {len(self.admit)} admitted hospital key(s) may join: {', '.join(n for n, _ in self.admit)}"
            if self.admit
            else "; any node that trusts the CA may join (no --admit)"
        )
        return f"TLS on (certificate {self.cert}, CA {self.ca})" + who


@dataclass(frozen=True)
class NodeSecurity:
    """A hospital's transport security: the CA that signed the server's certificate (Flower's
    ``--root-certificates``), or ``insecure``; and its node's private key (``--auth-supernode-private-key``)."""

    ca: Path | None = None
    insecure: bool = False
    node_key: Path | None = None

    def check(self) -> None:
        if self.insecure:
            if self.ca is not None or self.node_key is not None:
                raise DpradError(
                    "dprad federate client: --insecure with --root-certificates or --node-key: choose TLS or "
                    "--insecure (a node key needs TLS)"
                )
            return
        if self.ca is None:
            raise DpradError(
                "dprad federate client: TLS needs --root-certificates (the CA certificate that signed the "
                "server's); or pass --insecure to run without TLS on loopback or inside a VPN"
            )
        for flag, path in (("--root-certificates", self.ca), ("--node-key", self.node_key)):
            if path is not None and not Path(path).is_file():
                raise DpradError(f"{flag} {path}: no such file")
        if self.node_key is not None:
            from dprad.federate.certs import private_key_public_bytes

            private_key_public_bytes(Path(self.node_key))  # a readable key, or one line naming the file

    def flags(self) -> list[str]:
        if self.insecure:
            return ["--insecure"]
        key = [] if self.node_key is None else ["--auth-supernode-private-key", str(self.node_key)]
        return ["--root-certificates", str(self.ca), *key]

    def describe(self) -> str:
        if self.insecure:
            return "TLS OFF (--insecure): this site's updates cross the network in clear text"
        return f"TLS on (server verified against {self.ca})" + (
            f"; node key {self.node_key}"
            if self.node_key
            else "; no node key (the server must not require one)"
        )


def _env(home: Path) -> dict[str, str]:
    """The environment of Flower's processes: its own home folder, its entry points beside this Python,
    and its telemetry off (Flower reports events to telemetry.flower.ai by default: nothing about a
    hospital's federation leaves for a third party)."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise DpradError(f"flower-superlink exited ({proc.returncode}); see {log}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise DpradError(f"flower-superlink did not listen on {host}:{port} within {timeout:.0f} s; see {log}")


def _register(admit: tuple[tuple[str, Path], ...], env: dict[str, str], work: Path) -> dict[str, str]:
    """Admit each hospital's node key at the SuperLink (``flwr supernode register``): node id -> name."""
    from dprad.federate.certs import fingerprint, public_key_bytes
    from dprad.run.files import read_object

    out = {}
    for name, pub in admit:
        public_key_bytes(Path(pub))  # a readable EC key, or a one-line error naming the file
        end, answer = time.monotonic() + 60, {}
        while time.monotonic() < end:  # the SuperLink listens a moment before it answers
            done = subprocess.run(
                ["flwr", "supernode", "register", str(Path(pub).resolve()), "dprad", "--name", name, "--format", "json"],
                capture_output=True, text=True, env=env, cwd=work, timeout=120,
            )  # fmt: skip
            record = work / f"register-{name}.json"  # flwr's answer, kept beside the SuperLink's log
            io.write_text(record, done.stdout)
            try:
                answer = read_object(record)
            except DpradError:
                answer = {"error-message": (done.stdout + done.stderr).strip()}
            if answer.get("success") or "unavailable" not in str(answer.get("error-message", "")):
                break
            time.sleep(1)
        if not answer.get("success"):
            why = " ".join(str(answer.get("error-message", "")).split())
            raise DpradError(f"--admit {name}={pub}: the SuperLink did not register the key: {why}")
        node = str(answer["node-id"])
        out[node] = name
        print(f"admitted {name}: node {node}, key {fingerprint(public_key_bytes(Path(pub)))}", flush=True)
    return out


UNKNOWN_KEY = re.compile(r"Attempted to register SuperNode with public key: (b['\"].*?['\"]),")


def _report_unadmitted(log: Path, seen: set[str]) -> list[str]:
    """Fingerprints of keys the SuperLink refused (not admitted) since the last call, from its log
    (``seen`` starts with the admitted keys: one that knocked before it was registered is no stranger)."""
    import ast

    from dprad.federate.certs import fingerprint

    new = []
    for m in UNKNOWN_KEY.finditer(log.read_text(errors="replace") if log.exists() else ""):
        try:
            fp = fingerprint(ast.literal_eval(m.group(1)))
        except (ValueError, SyntaxError):
            continue
        if fp not in seen:
            seen.add(fp)
            new.append(fp)
    return new


def serve(
    cfg: FederationConfig,
    out: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 9092,
    security: LinkSecurity | None = None,
) -> dict[str, object]:
    """Start a SuperLink on host:port (TLS and admitted keys as ``security`` says; default insecure), run
    the federation on it, stop it; returns ``federation.json``. A node whose key is not admitted is refused
    by the SuperLink before any message; its key's fingerprint is printed and kept in ``flower/refused.txt``."""
    from dprad.federate.certs import fingerprint, public_key_bytes
    from dprad.run.files import read_object

    cfg.check()
    security = security or LinkSecurity(insecure=True)
    security.check()
    out = out.resolve()
    work = out / "flower"
    (work / "app").mkdir(parents=True, exist_ok=True)
    (work / "home").mkdir(exist_ok=True)
    (out / FEDERATION).unlink(missing_ok=True)
    io.write_text(work / "app" / "pyproject.toml", APP_TOML)
    control = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    tls = (
        "insecure = true\n"
        if security.insecure
        else f'root-certificates = "{Path(str(security.ca)).resolve()}"\n'
    )
    io.write_text(
        work / "home" / "config.toml",
        f'[superlink]\ndefault = "dprad"\n\n[superlink.dprad]\naddress = "{control}:{port}"\n{tls}',
    )
    env = _env(work / "home")
    # first the reaper: if this process dies, even by SIGKILL, it kills every Flower process of this home
    reaper = subprocess.Popen(  # run by its path: it imports nothing of dprad, and starts in a blink
        [sys.executable, str(Path(reaper_module.__file__)), str(work / "home")],
        env={k: v for k, v in os.environ.items() if k != "FLWR_HOME"},
        start_new_session=True,
        preexec_fn=reaper_module.watch_parent,  # only prctl and the signal mask
    )
    log = work / "superlink.log"
    with log.open("wb") as f:
        link = subprocess.Popen(
            ["flower-superlink", *security.flags(), "--host", host, "--port", str(port)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only prctl
        )
    refused: set[str] = set()

    def _terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _terminate)  # stopped: the finally below stops Flower
    try:
        wait_port(control, port, 60, link, log)
        admitted = _register(security.admit, env, work)
        refused.update(fingerprint(public_key_bytes(Path(pub))) for _, pub in security.admit)
        io.write_json(work / "request.json", {"config": cfg.to_dict(), "out": str(out), "admitted": admitted})
        run_log = work / "run.log"
        with run_log.open("wb") as f:
            run = subprocess.Popen(
                ["flwr", "run", str(work / "app"), "--stream", "--run-config", f"request='{work / 'request.json'}'"],
                stdout=f, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        end = time.monotonic() + cfg.wait_timeout + cfg.timeout * (cfg.rounds + 4)
        while run.poll() is None and time.monotonic() < end:
            for fp in _report_unadmitted(log, refused) if admitted else []:
                print(f"refused a SuperNode whose key is not admitted: {fp}", flush=True)
                with (work / "refused.txt").open("a") as r:
                    r.write(fp + "\n")
            time.sleep(0.5)
        if run.poll() is None:
            run.kill()
        run.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(link.pid, signal.SIGTERM)
        try:
            link.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(link.pid, signal.SIGKILL)
            link.wait(10)
        kill_home(work / "home")  # its SuperExec and ServerApp run in sessions of their own
        reaper.terminate()  # it reaps once more and exits
        reaper.wait(10)
        signal.signal(signal.SIGTERM, previous)
    text = run_log.read_text(errors="replace")
    if not (out / FEDERATION).exists():
        reason = next(
            (ln.strip() for ln in reversed(text.splitlines()) if "DpradError" in ln or "Error" in ln),
            "no federation.json was written",
        )
        raise DpradError(f"the federation failed: {reason} (full log: {run_log})")
    return read_object(out / FEDERATION)


def _address(superlink: str) -> tuple[str, int]:
    host, sep, port = superlink.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DpradError(f"--superlink {superlink!r}: expected HOST:PORT of the server's SuperLink")
    return host, int(port)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def _die_with_parent(sig: int = 9) -> None:
    """In a child, before it runs: the kernel sends it ``sig`` (SIGKILL by default) when the process that
    started it dies, however it dies (SIGKILL included). Linux (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig, 0, 0, 0)


def _term_with_parent() -> None:
    _die_with_parent(15)


# The SuperNode runs under a shell that is its group's guard: when the client dies (SIGTERM by
# PR_SET_PDEATHSIG) it kills the whole group at once: the SuperNode, its SuperExec and every ClientApp
GUARD = 'trap "kill -KILL 0" TERM; "$@" & wait $!'


def _stop(node: subprocess.Popen[bytes], home: Path, *, now: bool) -> None:
    """Stop the SuperNode and everything it started (its own process group): at once (SIGKILL) unless
    the site finished, then politely first."""
    import signal

    def kill(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, sig)

    if not now and node.poll() is None:
        kill(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.wait(10)
    kill(signal.SIGKILL)  # the node if still there, and whatever of its group remains (its ClientApps)
    node.wait(10)
    kill_home(home)  # and anything of it that left the group


def _reach(address: tuple[str, int], superlink: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not _listening(*address):
        if time.monotonic() >= end:
            raise DpradError(
                f"cannot reach the SuperLink at {superlink} within --timeout {timeout:g} s "
                "(is the server running, the port open?)"
            )
        time.sleep(0.5)


def _why_stopped(log: Path, offset: int, code: int | None, superlink: str, tls: list[str]) -> str:
    """One line on why the SuperNode stopped, from its log since ``offset``."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    if "CERTIFICATE_VERIFY_FAILED" in text or "handshake" in text:
        ca = tls[tls.index("--root-certificates") + 1] if "--root-certificates" in tls else "(none)"
        return (
            f"TLS: the SuperLink at {superlink} presented a certificate that does not verify against "
            f"--root-certificates {ca} (another CA, or a certificate for another name); nothing was sent"
        )
    if "Failed to activate SuperNode" in text or "Invalid SuperNode authentication" in text:
        if "--auth-supernode-private-key" not in tls:
            return f"the SuperLink at {superlink} admits only known hospital keys: pass --node-key; nothing was sent"
        from dprad.federate.certs import fingerprint, private_key_public_bytes

        key = Path(tls[tls.index("--auth-supernode-private-key") + 1])
        return (
            f"the SuperLink at {superlink} refused this site's node key {fingerprint(private_key_public_bytes(key))} "
            f"(--node-key {key} is not admitted: the server operator must --admit NAME=node.pub); nothing was sent"
        )
    return (
        f"the SuperNode stopped (exit code {code}) before the federation at {superlink} finished; see {log} "
        "(run the same command again to resume)"
    )


def join(
    site: Path,
    superlink: str,
    *,
    port: int | None = None,
    timeout: float = 300.0,
    tls: list[str] | None = None,
) -> None:
    """Run a SuperNode for ``site`` connected to ``superlink`` until the site has evaluated the global
    model (its run directory is finished) and the server has closed its SuperLink. Stops with a
    one-line :class:`DpradError` when the SuperLink cannot be reached within ``timeout``, when the
    federation refused the site, when it ended (its SuperLink closed for ``timeout`` seconds) before the
    site was evaluated, or when the SuperNode stopped. The SuperNode lives in its own process group, dies
    with this process (SIGKILL included), and is killed with its group on SIGINT / SIGTERM. ``tls``: the
    SuperNode's TLS and authentication flags (default: ``--insecure``)."""
    import signal

    from dprad.federate.site import REFUSED, hold_lock
    from dprad.run.files import METRICS

    address = _address(superlink)
    site = site.resolve()
    lock = hold_lock(site)  # held until this process ends: the site's ClientApps answer only meanwhile
    (site / REFUSED).unlink(missing_ok=True)
    home = site / "flower"
    home.mkdir(exist_ok=True)
    log = site / "supernode.log"
    started = time.time()

    def evaluated() -> bool:  # this run evaluated the global model (not a finished site's old file)
        m = site / METRICS
        return m.exists() and m.stat().st_mtime >= started - 1

    try:
        _reach(address, superlink, timeout)
    except DpradError:
        os.close(lock)
        raise
    cmd = [
        "flower-supernode",
        *(tls if tls is not None else ["--insecure"]),
        "--superlink",
        superlink,
        "--max-wait-time",
        str(timeout),
        "--node-config",
        f"site='{site}'",
    ]

    def _terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _terminate)
    deadline = time.monotonic() + timeout
    try:
        while True:
            offset = log.stat().st_size if log.exists() else 0
            runtime = ["--port", str(port or free_port())]  # its local runtime API, fresh each start
            code = _run_node([*cmd, *runtime], home, log, site, superlink, address, timeout, evaluated)
            if evaluated():
                return
            if _not_yet_admitted(log, offset) and time.monotonic() < deadline:
                time.sleep(2)  # its key may be admitted a moment after the SuperLink opens: try again
                continue
            raise DpradError(_why_stopped(log, offset, code, superlink, tls or []))
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.close(lock)


def _not_yet_admitted(log: Path, offset: int) -> bool:
    with log.open("rb") as f:
        f.seek(offset)
        return b"Failed to activate SuperNode" in f.read()


def _run_node(
    cmd: list[str],
    home: Path,
    log: Path,
    site: Path,
    superlink: str,
    address: tuple[str, int],
    timeout: float,
    evaluated: Callable[[], bool],
) -> int | None:
    """One SuperNode, watched until the site is evaluated and the SuperLink closed (or it stops, or the
    federation refused the site or ended); stopped with its group whatever happens. Its exit code."""
    from dprad.federate.site import REFUSED

    with log.open("ab") as f:
        node = subprocess.Popen(
            ["/bin/sh", "-c", GUARD, "flower-supernode", *cmd],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=_env(home),
            start_new_session=True,  # its own group: stopped as one, whatever it started
            preexec_fn=_term_with_parent,  # only prctl: the guard's trap then kills the group
        )
    finished = False
    try:
        closed_since: float | None = None
        while node.poll() is None:
            refused = site / REFUSED
            if refused.exists():
                from dprad.run.files import read_object

                raise DpradError(
                    f"refused by the federation at {superlink}: {read_object(refused)['reason']}"
                )
            if _listening(*address):
                closed_since = None
            elif evaluated():
                # done: the site evaluated the global model and the server has since closed its SuperLink
                # (which it does only after every answer arrived); stopping earlier could drop the last reply
                finished = True
                break
            else:
                closed_since = closed_since or time.monotonic()
                if time.monotonic() - closed_since > timeout:
                    raise DpradError(
                        f"the federation at {superlink} ended (its SuperLink closed {timeout:g} s ago) before "
                        f"this site was evaluated; see {log}"
                    )
            time.sleep(0.5)
    finally:
        _stop(node, home, now=not finished)
    return node.returncode


__all__ = ["LinkSecurity", "NodeSecurity", "free_port", "join", "serve"]
