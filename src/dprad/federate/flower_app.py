"""The federation on Flower's deployment engine: a ServerApp that runs :func:`run_federation` over the
Grid, and a ClientApp whose handlers are the site's (:mod:`dprad.federate.protocol`).

Each SuperNode names its site directory in its node config (``site=...``); the ServerApp reads the path
of the server's request (config and output directory) from the run config (``request=...``). Every
message a site receives or sends is appended to its ``messages.jsonl``: record types, array names, shapes
and dtypes, and every config and metric value, so that what crossed the network can be checked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from dprad.federate.protocol import Payload, Reply, handle
from dprad.federate.server import FederationConfig, run_federation
from dprad.federate.site import Site

MESSAGE_TYPES = {
    "hello": "query.hello",
    "train": "train",
    "thresholds": "query.thresholds",
    "evaluate": "evaluate",
}
MESSAGES = "messages.jsonl"


def _to_message(p: Payload) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in p.arrays.items()}),
            "config": ConfigRecord(dict(p.config)),
        }
    )


def _from_message(content: RecordDict) -> Payload:
    arrays = {k: a.numpy() for k, a in content.array_records["arrays"].items()}
    return Payload(arrays=arrays, config=dict(content.config_records["config"]))


def _reply_content(r: Reply) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in r.arrays.items()}),
            "metrics": MetricRecord({k: float(v) for k, v in r.metrics.items()}),
            "reply": ConfigRecord({"name": r.name, "error": r.error, "declined": r.declined}),
        }
    )


def _from_reply(m: Message) -> Reply:
    if m.has_error():
        return Reply(error=f"the site's ClientApp failed: {m.error.reason}")
    c = m.content
    meta = c.config_records["reply"]
    return Reply(
        arrays={k: a.numpy() for k, a in c.array_records["arrays"].items()},
        metrics={k: float(v) for k, v in c.metric_records["metrics"].items()},  # type: ignore[arg-type]
        name=str(meta["name"]),
        error=str(meta["error"]),
        declined=bool(meta["declined"]),
    )


def describe(content: RecordDict) -> dict[str, Any]:
    """What a message carries, without its array values: for the site's message log."""
    out: dict[str, Any] = {}
    for name, rec in content.items():
        if isinstance(rec, ArrayRecord):
            out[name] = {
                "type": "arrays",
                "items": {k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in rec.items()},
            }
        elif isinstance(rec, MetricRecord):
            out[name] = {"type": "metrics", "items": dict(rec)}
        elif isinstance(rec, ConfigRecord):
            out[name] = {
                "type": "config",
                "items": {k: v if not isinstance(v, bytes) else f"<{len(v)} bytes>" for k, v in rec.items()},
            }
        else:
            out[name] = {"type": type(rec).__name__}
    return out


class FlowerTransport:
    """The server's view of sites over Flower's Grid: a site is a SuperNode's node id."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def sites(self, minimum: int, timeout: float) -> list[str]:
        end = time.monotonic() + timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= minimum:
                return [str(n) for n in nodes]
            if time.monotonic() >= end:
                break
            time.sleep(0.5)
        raise TimeoutError(f"fewer than {minimum} site(s) connected within {timeout:.0f} s")

    def ask(self, kind: str, payloads: dict[str, Payload], timeout: float) -> dict[str, Reply]:
        messages = [
            Message(_to_message(p), dst_node_id=int(n), message_type=MESSAGE_TYPES[kind])
            for n, p in payloads.items()
        ]
        got = {
            str(m.metadata.src_node_id): _from_reply(m)
            for m in self.grid.send_and_receive(messages, timeout=timeout)
        }
        return {
            n: got.get(n, Reply(error=f"no answer within {timeout:.0f} s (site down?)")) for n in payloads
        }


server_app = ServerApp()


@server_app.main()
def _server(grid: Grid, context: Context) -> None:
    from dprad.run.files import read_object

    request = read_object(Path(str(context.run_config["request"])))
    run_federation(FederationConfig.from_dict(request["config"]), FlowerTransport(grid), Path(request["out"]))


client_app = ClientApp()


def _answer(kind: str, message: Message, context: Context) -> Message:
    site = Site(str(context.node_config["site"]))
    reply = handle(site, kind, _from_message(message.content))
    content = _reply_content(reply)
    with (site.path / MESSAGES).open("a", encoding="utf-8") as f:  # the site's own append-only log
        for direction, c in (("received", message.content), ("sent", content)):
            f.write(
                json.dumps({"kind": kind, "direction": direction, "content": describe(c)}, default=str) + "\n"
            )
    return Message(content, reply_to=message)


@client_app.query("hello")
def _hello(message: Message, context: Context) -> Message:
    return _answer("hello", message, context)


@client_app.train()
def _train(message: Message, context: Context) -> Message:
    return _answer("train", message, context)


@client_app.query("thresholds")
def _thresholds(message: Message, context: Context) -> Message:
    return _answer("thresholds", message, context)


@client_app.evaluate()
def _evaluate(message: Message, context: Context) -> Message:
    return _answer("evaluate", message, context)


__all__ = ["FlowerTransport", "client_app", "describe", "server_app"]
