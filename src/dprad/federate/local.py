"""The in-process transport: the server loop calls each site's handlers directly, one fresh
:class:`Site` per message as a Flower ClientApp process would. The same protocol, the same model: for
simulations (the runbook's comparison tables) and for the test that Flower's deployment agrees with it."""

from __future__ import annotations

from pathlib import Path

from dprad.federate.protocol import Payload, Reply
from dprad.federate.site import Site


class LocalTransport:
    def __init__(self, sites: list[Path]) -> None:
        self.paths = {str(i): p for i, p in enumerate(sites)}

    def sites(self, minimum: int, timeout: float) -> list[str]:
        del minimum, timeout
        return list(self.paths)

    def ask(self, kind: str, payloads: dict[str, Payload], timeout: float) -> dict[str, Reply]:
        """Each site's answer through the same messages and the same record (``messages.jsonl``) as a
        Flower ClientApp's."""
        from dprad.federate.flower_app import _to_message, exchange, reply_of

        del timeout
        return {n: reply_of(exchange(Site(self.paths[n]), kind, _to_message(p))) for n, p in payloads.items()}


__all__ = ["LocalTransport"]
