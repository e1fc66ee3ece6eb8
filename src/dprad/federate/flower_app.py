"""The federation on Flower's deployment engine: a ServerApp that runs :func:`run_federation` over the
Grid, and a ClientApp whose handlers are the site's (:mod:`dprad.federate.protocol`).

Each SuperNode names its site directory in its node config (``site=...``); the ServerApp reads the path
of the server's request (config and output directory) from the run config (``request=...``). Every
message a site receives or sends is appended to its ``messages.jsonl``: record types, array names, shapes
and dtypes, and every config and metric value, so that what crossed the network can be checked.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from dprad.federate.protocol import Payload, Reply, handle
from dprad.federate.server import FederationConfig, run_federation
from dprad.federate.site import Site, client_running

MESSAGE_TYPES = {
    "hello": "query.hello",
    "train": "train",
    "thresholds": "query.thresholds",
    "evaluate": "evaluate",
    "refused": "query.refused",
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
            "info": ConfigRecord(dict(r.info)),
        }
    )


def _from_reply(m: Message) -> Reply:
    if m.has_error():
        return Reply(error=f"the site's ClientApp failed: {m.error.reason}")
    return reply_of(m.content)


def reply_of(c: RecordDict) -> Reply:
    """A reply's content back as a :class:`Reply` (inverse of :func:`_reply_content`)."""
    meta = c.config_records["reply"]
    return Reply(
        arrays={k: a.numpy() for k, a in c.array_records["arrays"].items()},
        metrics={k: float(v) for k, v in c.metric_records["metrics"].items()},  # type: ignore[arg-type]
        name=str(meta["name"]),
        error=str(meta["error"]),
        declined=bool(meta["declined"]),
        info={k: str(v) for k, v in c.config_records["info"].items()} if "info" in c.config_records else {},
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
    run_federation(
        FederationConfig.from_dict(request["config"]),
        FlowerTransport(grid),
        Path(request["out"]),
        admitted={str(k): str(v) for k, v in request.get("admitted", {}).items()},
    )


client_app = ClientApp()


def record(site: Path, kind: str, received: RecordDict, sent: RecordDict) -> None:
    """Append one exchange to the site's own ``messages.jsonl`` (both transports)."""
    with (site / MESSAGES).open("a", encoding="utf-8") as f:
        for direction, c in (("received", received), ("sent", sent)):
            f.write(
                json.dumps({"kind": kind, "direction": direction, "content": describe(c)}, default=str) + "\n"
            )


def exchange(site: Site, kind: str, content: RecordDict) -> RecordDict:
    """One message's answer at a site, recorded: what either transport runs."""
    sent = _reply_content(handle(site, kind, _from_message(content)))
    record(site.path, kind, content, sent)
    return sent


def _owner_gone(path: Path) -> None:
    """A node whose hospital stopped its client answers nothing more (the client may have been killed
    with SIGKILL, leaving no chance to stop its node first)."""
    if not client_running(path):
        print(f"site {path}: its dprad federate client has stopped; not answering", file=sys.stderr)
        os._exit(3)  # not an exception Flower could turn into an error reply: no reply at all


_WATCHED: set[Path] = set()


def _watch_owner(path: Path) -> None:
    """In the ClientApp's process: end it within a fraction of a second of its hospital's client
    stopping, even mid-training (Flower's own parent monitor asks politely and may wait for the round)."""
    import threading

    if path in _WATCHED:  # a process that answers several messages watches once
        return
    _WATCHED.add(path)

    def watch() -> None:
        while True:
            time.sleep(0.2)
            _owner_gone(path)

    threading.Thread(target=watch, daemon=True, name="dprad-owner-watch").start()


def _answer(kind: str, message: Message, context: Context) -> Message:
    path = Path(str(context.node_config["site"]))
    _owner_gone(path)
    _watch_owner(path)
    site = Site(path)
    sent = _reply_content(handle(site, kind, _from_message(message.content)))
    _owner_gone(path)  # stopped while this message was being computed: nothing is sent or recorded
    record(site.path, kind, message.content, sent)
    return Message(sent, reply_to=message)


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


@client_app.query("refused")
def _refused(message: Message, context: Context) -> Message:
    return _answer("refused", message, context)


__all__ = ["FlowerTransport", "client_app", "describe", "exchange", "record", "reply_of", "server_app"]
