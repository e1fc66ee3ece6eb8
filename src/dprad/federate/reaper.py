"""The server's reaper: nothing of a federation's Flower processes outlives ``dprad federate server``.

Flower's SuperExec detaches the ServerApp it starts into a session of its own, out of reach of any
process group, so killing the server's group cannot stop it; when the server ends normally it kills them
itself (:func:`kill_home`), but a server killed with SIGKILL runs no code. So the server starts this small
process first, told by the kernel to receive SIGTERM when the server dies however it dies
(``PR_SET_PDEATHSIG``); on SIGTERM it kills every process started with the federation's ``FLWR_HOME``
and exits. It imports nothing of dprad's but this module, and holds no ``FLWR_HOME`` itself.

    python src/dprad/federate/reaper.py FLWR_HOME   (run by its path, as the server starts it)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def kill_home(home: Path) -> None:
    """SIGKILL every process started with ``FLWR_HOME=home`` (Flower's SuperExec detaches its apps into
    sessions of their own, outside any process group we could stop): nothing of this federation's Flower
    processes outlives dprad's. Linux (/proc); elsewhere a no-op."""
    mark = f"FLWR_HOME={home}".encode()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if int(d.name) != os.getpid() and mark in (d / "environ").read_bytes().split(b"\0"):
                os.kill(int(d.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def watch_parent() -> None:
    """In the reaper's child before it runs (``preexec_fn``): SIGTERM when the parent dies, held back
    (blocked) until :func:`main` is ready to reap, so that an early death is not missed. Linux."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def main(home: Path) -> None:
    def reap(signum: int, frame: object) -> None:
        kill_home(home)
        os._exit(0)

    signal.signal(signal.SIGTERM, reap)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a death while starting: reaped now
    if os.getppid() == 1:  # the server died before the kernel was told to tell us
        reap(signal.SIGTERM, None)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
