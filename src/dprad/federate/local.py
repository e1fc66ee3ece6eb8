"""The in-process transport: the server loop calls each site's handlers directly, one fresh
:class:`Site` per message as a Flower ClientApp process would. The same protocol, the same model: for
simulations (the runbook's comparison tables) and for the test that Flower's deployment agrees with it."""

from __future__ import annotations

from pathlib import Path

from dprad.federate.protocol import Payload, Reply, handle
from dprad.federate.site import Site


class LocalTransport:
    def __init__(self, sites: list[Path]) -> None:
        self.paths = {str(i): p for i, p in enumerate(sites)}

    def sites(self, minimum: int, timeout: float) -> list[str]:
        del minimum, timeout
        return list(self.paths)

    def ask(self, kind: str, payloads: dict[str, Payload], timeout: float) -> dict[str, Reply]:
        del timeout
        return {n: handle(Site(self.paths[n]), kind, p) for n, p in payloads.items()}


__all__ = ["LocalTransport"]
