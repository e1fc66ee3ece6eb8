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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from dprad.errors import DpradError
from dprad.federate import secure_sum
from dprad.federate.protocol import Payload, Reply, SecureAsk, SecureResult, as_model, handle, model_of
from dprad.federate.secure_sum import SecureTask
from dprad.federate.server import FederationConfig, run_federation
from dprad.federate.site import Declined, Site, client_running

MESSAGE_TYPES = {
    "hello": "query.hello",
    "train": "train",
    "thresholds": "query.thresholds",
    "evaluate": "evaluate",
    "refused": "query.refused",
}
MESSAGES = "messages.jsonl"
SERVER_MESSAGES = "server_messages.jsonl"  # what the server received, described (no values), in its output


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
            out[name] = {"type": "config", "items": {k: _value(v) for k, v in rec.items()}}
        else:
            out[name] = {"type": type(rec).__name__}
    return out


def _value(v: Any) -> Any:
    """A config value for the log: bytes (keys, shares, masked vectors) by their size only."""
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return f"<{len(v)} items, {sum(len(b) for b in v)} bytes>"
    return v


class LoggedGrid(Grid):
    """Flower's Grid, with every message the server receives described in ``log`` (kinds, array shapes,
    config values; no array values): what the server held, checkable after the fact."""

    def __init__(self, grid: Grid, log: Path | None) -> None:
        self.grid, self.log = grid, log

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._logged(self.grid.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._logged(self.grid.send_and_receive(messages, timeout=timeout))

    def _logged(self, replies: Iterable[Message]) -> list[Message]:
        got = list(replies)
        if self.log is not None:
            with self.log.open("a", encoding="utf-8") as f:
                for m in got:
                    content = {} if m.has_error() else describe(m.content)
                    entry = {
                        "from": m.metadata.src_node_id,
                        "type": m.metadata.message_type,
                        "content": content,
                    }
                    f.write(json.dumps(entry, default=str) + "\n")
        return got


class FlowerTransport:
    """The server's view of sites over Flower's Grid: a site is a SuperNode's node id."""

    def __init__(self, grid: Grid, context: Context | None = None, *, log: Path | None = None) -> None:
        self.grid: Grid = LoggedGrid(grid, log)
        self.context = context

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

    def secure_mean(self, ask: SecureAsk) -> SecureResult:
        """A round whose replies the server sees only as their weighted mean (SecAgg+)."""
        if self.context is None:
            raise DpradError("secure aggregation needs the ServerApp's context")
        return secure_sum.secure_mean(self.grid, self.context, ask)


server_app = ServerApp()


@server_app.main()
def _server(grid: Grid, context: Context) -> None:
    from dprad.run.files import read_object

    request = read_object(Path(str(context.run_config["request"])))
    out = Path(request["out"])
    out.mkdir(parents=True, exist_ok=True)
    run_federation(
        FederationConfig.from_dict(request["config"]),
        FlowerTransport(grid, context, log=out / SERVER_MESSAGES),
        out,
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


def secure_vector(site: Site, task: SecureTask) -> tuple[list[np.ndarray], int, dict[str, float]]:
    """What a site puts into a secure sum: for a round, its update (new parameters less the global ones,
    clipped to ``client_clip`` under client-level DP) weighted by its training units; for the thresholds,
    its noisy histograms with weight 1. A declined round is an exception: to SecAgg+ a dropout."""
    names = sorted(task.model)
    if task.kind == "train":
        reply = handle(
            site, "train", Payload(arrays=as_model(task.model), config={"round": task.server_round})
        )
        if reply.error:
            raise Declined(reply.error)
        new = model_of(reply.arrays)
        update = [np.asarray(new[k], np.float64) - np.asarray(task.model[k], np.float64) for k in names]
        if (
            "client_clip" in task.config
        ):  # client-level DP: the site clips, equal weights, noise at the server
            return secure_sum.clip_l2(update, float(task.config["client_clip"])), 1, _clear(reply)
        return update, int(reply.metrics["units"]), _clear(reply)
    if task.kind == "thresholds":
        grid = np.asarray([float(g) for g in str(task.config["grid"]).split(",")], dtype=np.float64)
        reply = handle(site, "thresholds", Payload(arrays={**as_model(task.model), "grid": grid}))
        if reply.error:
            raise Declined(reply.error)
        return [reply.arrays["pos"], reply.arrays["neg"]], 1, _clear(reply)
    raise DpradError(f"unknown secure round {task.kind!r}")


def _clear(reply: Reply) -> dict[str, float]:
    """The numbers that travel beside the masked vector: the site's ledger (epsilon, delta, sigma)."""
    return {k: float(v) for k, v in reply.metrics.items() if k != "units"}


def _secure_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Every SecAgg+ stage through Flower's ``secaggplus_mod``, answered only while the hospital's
    client runs, and recorded in the site's ``messages.jsonl``; other train messages pass through."""
    if not secure_sum.is_secure(message):
        return call_next(message, context)
    path = Path(str(context.node_config["site"]))
    _owner_gone(path)
    _watch_owner(path)
    stage = str(message.content.config_records[RECORD_KEY_CONFIGS].get(SecAggKey.STAGE, "?"))
    received = describe(message.content)  # before the mod reads (and pops) its configs
    reply = secaggplus_mod(message, context, call_next)
    _owner_gone(path)
    with (path / MESSAGES).open("a", encoding="utf-8") as f:
        for direction, c in (("received", received), ("sent", describe(reply.content))):
            f.write(json.dumps({"kind": f"secure-{stage}", "direction": direction, "content": c}) + "\n")
    return reply


@client_app.train(mods=[_secure_mod])
def _train(message: Message, context: Context) -> Message:
    if not secure_sum.is_secure(message):
        return _answer("train", message, context)
    site = Site(Path(str(context.node_config["site"])))
    task = secure_sum.task_of(message.content)
    vector, weight, metrics = secure_vector(site, task)
    return Message(secure_sum.answer(task, site.info.name, vector, weight, metrics), reply_to=message)


@client_app.query("thresholds")
def _thresholds(message: Message, context: Context) -> Message:
    return _answer("thresholds", message, context)


@client_app.evaluate()
def _evaluate(message: Message, context: Context) -> Message:
    return _answer("evaluate", message, context)


@client_app.query("refused")
def _refused(message: Message, context: Context) -> Message:
    return _answer("refused", message, context)


__all__ = [
    "SERVER_MESSAGES",
    "FlowerTransport",
    "LoggedGrid",
    "client_app",
    "describe",
    "exchange",
    "record",
    "reply_of",
    "secure_vector",
    "server_app",
]
