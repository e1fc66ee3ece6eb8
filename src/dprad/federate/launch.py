"""The processes of a federation on Flower's deployment engine, on this machine or across hospitals:
the server side starts a SuperLink and submits the dprad Flower app to it; each hospital starts a
SuperNode that runs the app's ClientApp on its own site directory. Nothing here downloads anything: the
app's components are dprad's own modules and its dependency list is empty.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from dprad import io
from dprad.errors import DpradError
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


def serve(
    cfg: FederationConfig, out: Path, *, host: str = "127.0.0.1", port: int = 9092
) -> dict[str, object]:
    """Start a SuperLink on host:port, run the federation on it, stop it; returns ``federation.json``."""
    from dprad.run.files import read_object

    cfg.check()
    out = out.resolve()
    work = out / "flower"
    (work / "app").mkdir(parents=True, exist_ok=True)
    (work / "home").mkdir(exist_ok=True)
    (out / FEDERATION).unlink(missing_ok=True)
    io.write_text(work / "app" / "pyproject.toml", APP_TOML)
    io.write_text(
        work / "home" / "config.toml",
        f'[superlink]\ndefault = "dprad"\n\n[superlink.dprad]\naddress = "{host}:{port}"\ninsecure = true\n',
    )
    io.write_json(work / "request.json", {"config": cfg.to_dict(), "out": str(out)})
    env = _env(work / "home")
    log = work / "superlink.log"
    with log.open("wb") as f:
        link = subprocess.Popen(
            ["flower-superlink", "--insecure", "--host", host, "--port", str(port)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_port(host, port, 60, link, log)
        run = subprocess.run(
            [
                "flwr",
                "run",
                str(work / "app"),
                "--stream",
                "--run-config",
                f"request='{work / 'request.json'}'",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=cfg.wait_timeout + cfg.timeout * (cfg.rounds + 4),
        )
        io.write_text(work / "run.log", run.stdout + run.stderr)
    finally:
        link.terminate()
        try:
            link.wait(20)
        except subprocess.TimeoutExpired:
            link.kill()
    if not (out / FEDERATION).exists():
        reason = next(
            (
                ln.strip()
                for ln in reversed((run.stdout + run.stderr).splitlines())
                if "DpradError" in ln or "Error" in ln
            ),
            "no federation.json was written",
        )
        raise DpradError(f"the federation failed: {reason} (full log: {work / 'run.log'})")
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


def join(site: Path, superlink: str, *, port: int | None = None) -> None:
    """Run a SuperNode for ``site`` connected to ``superlink`` until the site has evaluated the global
    model (its run directory is finished) and the server has closed its SuperLink; a SuperNode that stops
    before is an error naming its log."""
    address = _address(superlink)
    site = site.resolve()
    home = site / "flower"
    home.mkdir(exist_ok=True)
    log = site / "supernode.log"
    cmd = [
        "flower-supernode",
        "--insecure",
        "--superlink",
        superlink,
        "--port",
        str(port or free_port()),
        "--node-config",
        f"site='{site}'",
    ]
    with log.open("ab") as f:
        # in this process's group: a hospital that stops its client (Ctrl-C, kill) stops its SuperNode too
        node = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(home))
    try:
        while node.poll() is None:
            # done: the site evaluated the global model and the server has since closed its SuperLink
            # (which it does only after every answer arrived); stopping earlier could drop the last reply
            if (site / "metrics.json").exists() and not _listening(*address):
                break
            time.sleep(0.5)
    finally:
        if node.poll() is None:
            node.terminate()
            try:
                node.wait(20)
            except subprocess.TimeoutExpired:
                node.kill()
    if not (site / "metrics.json").exists():
        raise DpradError(
            f"the SuperNode stopped (exit code {node.returncode}) before the federation at {superlink} finished; "
            f"see {log} (run the same command again to resume)"
        )


__all__ = ["free_port", "join", "serve"]
