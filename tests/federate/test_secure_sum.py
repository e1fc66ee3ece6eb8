"""Secure aggregation with SecAgg+, in one process: the federation's server loop and the sites' real
ClientApp (dprad's mod around Flower's ``secaggplus_mod``), joined by a loopback Grid that hands each
message to the ClientApp as a SuperNode would and keeps everything the server received. What the server
held is checked value by value: masked vectors, never a hospital's update; and the sum it learns is the
in-process federation's."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message.message import Error
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from dprad.cli import main
from dprad.errors import DpradError
from dprad.federate.flower_app import FlowerTransport, client_app
from dprad.federate.local import LocalTransport
from dprad.federate.secure_sum import QUANTIZATION, UPDATE_RANGE, rounding_bound
from dprad.federate.server import FederationConfig, run_federation
from dprad.federate.site import hold_lock
from federated import fresh

SITES = ("site_a", "site_b", "site_c")
HELD: list[int] = []  # the sites' client locks, held for the whole session: their nodes answer only then


@pytest.fixture(autouse=True)
def _server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity Flower gives a ServerApp's process (messages are stamped with it), for this test only."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


class LoopbackGrid(Grid):
    """Flower's Grid in one process: each message goes to the real ClientApp with its node's context
    (kept across messages, as a SuperNode keeps it); an exception becomes an error reply, as Flower
    makes it. ``received`` keeps every reply the server got; ``drop`` names nodes that do not answer
    the next message of a given SecAgg+ stage (a hospital gone mid-round, back for the next)."""

    def __init__(self, sites: list[Path]) -> None:
        self.nodes = {100 + i: s for i, s in enumerate(sites)}
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={"site": str(s)}, state=RecordDict(), run_config={})
            for n, s in self.nodes.items()
        }
        self.received: list[Message] = []
        self.drop: dict[int, str] = {}

    def set_run(self, run: Any) -> None:
        pass

    @property
    def run(self) -> Any:
        return None

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out = []
        for sent in messages:
            sent.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            m = message_from_proto(message_to_proto(sent))  # what crosses the network: a copy
            node = m.metadata.dst_node_id
            configs = m.content.config_records.get(RECORD_KEY_CONFIGS)
            stage = str(configs.get(Key.STAGE, "")) if configs is not None else ""
            if self.drop.get(node) == stage:  # gone at this stage: no answer (back for the next round)
                del self.drop[node]
                continue
            TaskIdentity.node_id = node  # the ClientApp's process is its node's (replies are stamped with it)
            try:
                reply = client_app(m, self.contexts[node])
            except Exception as err:  # noqa: BLE001 - what Flower does with a ClientApp's exception
                reply = Message(Error(code=0, reason=str(err)), reply_to=m)
            finally:
                TaskIdentity.node_id = 0
            out.append(message_from_proto(message_to_proto(reply)))
        self.received.extend(out)
        return out


def _loopback(prepared: dict[str, Path], dest: Path) -> tuple[LoopbackGrid, FlowerTransport]:
    sites = fresh(prepared, dest, *SITES)
    HELD.extend(hold_lock(s) for s in sites)
    grid = LoopbackGrid(sites)
    server = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    return grid, FlowerTransport(grid, server, log=dest / "server_messages.jsonl")


def _head(out: Path) -> dict[str, np.ndarray]:
    import torch

    return {k: v.numpy() for k, v in torch.load(out / "model" / "global.pt").items()}


def _masked(grid: LoopbackGrid) -> list[list[np.ndarray]]:
    """Every masked vector the server received (stage 2 of each secure round)."""
    out = []
    for m in grid.received:
        if m.has_error() or RECORD_KEY_CONFIGS not in m.content.config_records:
            continue
        rec = m.content.config_records[RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS in rec:
            out.append([bytes_to_ndarray(b) for b in cast(list[bytes], rec[Key.MASKED_PARAMETERS])])
    return out


def test_the_server_holds_only_masked_vectors_and_learns_the_in_process_federations_sum(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    grid, transport = _loopback(prepared, tmp_path / "secure")
    out = tmp_path / "secure" / "fed"
    log = run_federation(FederationConfig(rounds=2, min_clients=3), transport, out)
    assert log["secure_aggregation"]["on"] and log["secure_aggregation"]["threshold"].startswith("2 of 3")
    assert all(r["secure_aggregation"] for r in log["rounds"]) and log["thresholds"]["secure_aggregation"]
    main(["model-card", str(out)])
    assert "Aggregation: secure (SecAgg+" in (out / "MODEL_CARD.md").read_text()
    plain = run_federation(
        FederationConfig(rounds=2, min_clients=3),
        LocalTransport(fresh(prepared, tmp_path / "local", *SITES)),
        tmp_path / "local" / "fed",
    )
    assert not plain["secure_aggregation"]["on"]
    # the sum the server learned: the in-process federation's model, within SecAgg+'s rounding
    got, want = _head(out), _head(tmp_path / "local" / "fed")
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=2 * rounding_bound(UPDATE_RANGE))
    assert log["thresholds"]["values"] == plain["thresholds"]["values"]
    assert log["thresholds"]["noise_std"] == plain["thresholds"]["noise_std"]
    assert [r["answered"] for r in log["rounds"]] == [r["answered"] for r in plain["rounds"]]
    # what the server held of each round: 3 masked vectors per secure round (2 rounds + thresholds), no
    # array of any reply, and no masked vector near any site's quantised update
    masked = _masked(grid)
    assert len(masked) == 3 * 3
    secure = [
        m for m in grid.received if not m.has_error() and RECORD_KEY_CONFIGS in m.content.config_records
    ]
    assert len(secure) == 3 * 3 * 4  # three sites, four stages, three secure rounds
    assert not any(len(rec) for m in secure for rec in m.content.array_records.values())
    updates = []
    for s in grid.nodes.values():
        for r in (1, 2):
            with np.load(s / "updates" / f"round-{r}.npz") as z:
                updates.append(np.concatenate([np.ravel(z[k]) for k in sorted(z.files)]))
    for vec in masked:
        flat = np.concatenate([np.ravel(a) for a in vec[1:]]).astype(np.float64)  # [0] is the masked weight
        # uniform over the 2**32 mask space, not values below QUANTIZATION around its middle
        assert np.mean(flat > QUANTIZATION) > 0.9
        for u in updates:
            if u.size == flat.size:
                as_quantised = (np.clip(u, -UPDATE_RANGE, UPDATE_RANGE) + UPDATE_RANGE) * QUANTIZATION / 16
                assert np.median(np.abs(flat - as_quantised)) > 1e6
    # the server's own log of what it received says the same, without values
    lines = [json.loads(x) for x in (tmp_path / "secure" / "server_messages.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["type"] == "train"]
    assert len(train) == 3 * 3 * 4 and all("secaggplus_configs" in x["content"] for x in train)
    arrays = [rec for x in train for rec in x["content"].values() if rec["type"] == "arrays"]
    assert arrays and not any(rec["items"] for rec in arrays)  # the update's arrays arrive emptied
    # each site recorded every stage it answered
    for s in grid.nodes.values():
        kinds = {json.loads(x)["kind"] for x in (s / "messages.jsonl").read_text().splitlines()}
        assert {
            "secure-setup",
            "secure-share_keys",
            "secure-collect_masked_vectors",
            "secure-unmask",
        } <= kinds


def test_a_hospital_gone_mid_round_within_the_threshold_still_lets_the_round_finish(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    grid, transport = _loopback(prepared, tmp_path)
    victim = 102  # site_c: answers its keys, then is gone before sending its masked update
    grid.drop[victim] = "collect_masked_vectors"
    log = run_federation(FederationConfig(rounds=1, min_clients=2), transport, tmp_path / "fed")
    first = log["rounds"][0]
    assert set(first["answered"]) == {"site_a", "site_b"} and set(first["failed"]) == {"site_c"}
    # the mean of the two that answered, weighted by their units: its masks were removed with the
    # victim's key shares held by the others
    a, b = (np.load(s / "updates" / "round-1.npz") for s in list(grid.nodes.values())[:2])
    ua, ub = first["answered"]["site_a"], first["answered"]["site_b"]
    got = _head(tmp_path / "fed")
    assert log["thresholds"]["sites"] == list(SITES)  # back for the thresholds' secure sum
    for k in got:
        want = (a[k] * ua + b[k] * ub) / (ua + ub)
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=2 * rounding_bound(UPDATE_RANGE))


def test_client_level_dp_under_secure_aggregation_is_the_servers_clipped_noisy_mean(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    """Each hospital clips its own update before the sum, the server adds the same noise to the sum: the
    in-process federation's client-level DP step (there the server clips), under a stated noise seed."""
    cfg = FederationConfig(rounds=1, min_clients=3, client_dp=0.5, client_clip=0.01, force=True, noise_seed=7)
    _, transport = _loopback(prepared, tmp_path / "secure")
    secure = run_federation(cfg, transport, tmp_path / "secure" / "fed")
    plain = run_federation(
        cfg, LocalTransport(fresh(prepared, tmp_path / "local", *SITES)), tmp_path / "local" / "fed"
    )
    assert (
        secure["secure_aggregation"]["on"]
        and "clipped at each hospital" in secure["rounds"][0]["update_norms"]
    )
    assert all(v > 0.01 for v in plain["rounds"][0]["update_norms"].values())  # the clip bites
    got, want = _head(tmp_path / "secure" / "fed"), _head(tmp_path / "local" / "fed")
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=2 * rounding_bound(UPDATE_RANGE))
    assert secure["client_level_dp"] == plain["client_level_dp"]


def test_secure_aggregation_refuses_what_it_cannot_make_secure(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    two = fresh(prepared, tmp_path / "two", "site_a", "site_b")
    with pytest.raises(DpradError, match="--secagg: dprad federate local runs every hospital"):
        run_federation(FederationConfig(rounds=1, secagg=True), LocalTransport(two), tmp_path / "two" / "fed")
    grid, transport = _loopback(prepared, tmp_path / "three")
    with pytest.raises(DpradError, match="at least 2 hospitals in a round, and 1 took part"):
        run_federation(
            FederationConfig(rounds=1, secagg=True, min_clients=1, clients_per_round=1),
            transport,
            tmp_path / "three" / "fed",
        )
    assert not grid.received or all(
        "secaggplus_configs" not in m.content.config_records for m in grid.received
    )


def test_more_dropouts_than_the_threshold_fail_the_round_in_one_line(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    grid, transport = _loopback(prepared, tmp_path)
    grid.drop.update({101: "collect_masked_vectors", 102: "collect_masked_vectors"})  # 1 of 3 left; needs 2
    with pytest.raises(DpradError) as err:
        run_federation(FederationConfig(rounds=1, min_clients=1), transport, tmp_path / "fed")
    assert str(err.value) == (
        "train round 1: secure aggregation halted: fewer than 2 of 3 hospitals completed its stages within "
        "900 s (more dropped out than SecAgg+ can recover from)"
    )
    assert not (tmp_path / "fed" / "federation.json").exists()
