"""`dprad serve` against a real uvicorn server on loopback: keys, budgets, limits and the audit log."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.commands.serve import register
from dprad.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.serve.app import ServeLimits, create_app, running
from dprad.serve.auditlog import AuditLog, AuditRecord, read_records, summarize
from dprad.serve.budgets import BudgetStore
from dprad.serve.keys import hash_key, load_keys
from dprad.stages.train import train

CLIENT, MONITOR = "client-key-0123456789abcdef", "monitor-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
LIMITS = ServeLimits(
    max_body_bytes=20_000, max_reports_per_request=8, max_report_chars=2_000, batch_wait_ms=5
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("serve")
    data = root / "synth.csv"
    reports = generate_reports(SynthConfig(n_patients=200, seed=3, prevalence={"Pneumothorax": 0.08}))
    write_table(reports_frame(reports, CHEXPERT14), data)
    cfg = RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(tiny_bert), max_length=128),
        train=TrainConfig(mode="head", epochs=5, lr=0.3, batch_size=64),
    )
    return train(cfg, root / "run").run_dir


def write_keys(path: Path, **budgets: dict[str, object]) -> Path:
    entries: list[dict[str, object]] = [
        {"id": "monitor", "key_sha256": hash_key(MONITOR), "role": "monitor"},
        {"id": "client", "key": CLIENT, "role": "client"},
        {"id": "admin", "key": ADMIN, "role": "admin"},
    ]
    for kid, extra in budgets.items():
        entries.append({"id": kid, "key": f"{kid}-key-0123456789abcdef", "role": "client", **extra})
    import yaml

    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("state")
    keys = write_keys(
        root / "keys.yaml",
        tight={"budget_total": 23},
        daily={"budget_per_day": 2},
        slow={"rate_per_minute": 2},
    )
    app = create_app(run_dir, keys_path=keys, state_dir=root / "state", limits=LIMITS)
    with running(app) as url:
        yield url, root / "state"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def audit_lines(state: Path) -> list[dict[str, object]]:
    return list(read_records(state / "audit"))


def test_classify_scores_at_the_runs_thresholds(server: tuple[str, Path], run_dir: Path) -> None:
    url, _ = server
    body = {"reports": [{"id": "r1", "text": "Small apical pneumothorax."}, {"text": "No acute disease."}]}
    r = httpx.post(f"{url}/v1/classify", json=body, headers=auth(CLIENT))
    assert r.status_code == 200, r.text
    out = r.json()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    thresholds = np.asarray(metrics["thresholds"]["values"])
    assert out["labels"] == list(CHEXPERT14.labels)
    assert metrics["thresholds"]["rule"] in out["threshold_rule"]
    assert [x["id"] for x in out["results"]] == ["r1", "1"]
    for res in out["results"]:
        probs = np.array([res["probabilities"][lab] for lab in out["labels"]])
        assert ((probs >= 0) & (probs <= 1)).all()
        want = [lab for lab, p, t in zip(out["labels"], probs, thresholds, strict=True) if p >= t]
        assert res["positive"] == want
        assert [lab for lab, d in res["decisions"].items() if d] == want
    # the same reports scored offline give the same probabilities
    from dprad.data.reports import Report
    from dprad.modes import load_run

    offline = load_run(run_dir).predict(
        [Report(id=str(i), patient_id=str(i), text=x["text"]) for i, x in enumerate(body["reports"])]
    )
    served = np.array([[res["probabilities"][lab] for lab in out["labels"]] for res in out["results"]])
    np.testing.assert_allclose(served, offline.probs, atol=1e-5)


def test_model_health_and_metrics(server: tuple[str, Path], run_dir: Path) -> None:
    url, _ = server
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    model = httpx.get(f"{url}/v1/model", headers=auth(CLIENT)).json()
    ledger = json.loads((run_dir / "privacy.json").read_text())
    assert model["privacy"]["statement"] == ledger["statement"]
    assert model["privacy"]["numbers"]["dataset_size"] == ledger["dataset_size"]
    assert model["schema"]["labels"] == list(CHEXPERT14.labels)
    assert model["thresholds"]["values"] and "rule" in model["thresholds"]
    # per-label supports and recalls on the run's own splits are not covered by the ledger: admin only
    assert "metrics" not in model
    assert "metrics" not in httpx.get(f"{url}/v1/model", headers=auth(MONITOR)).json()
    admin = httpx.get(f"{url}/v1/model", headers=auth(ADMIN)).json()
    assert "weighted_f1" in admin["metrics"]["test"]["threshold_val"]
    assert httpx.get(f"{url}/metrics", headers=auth(CLIENT)).status_code == 403  # client role: no metrics
    httpx.post(f"{url}/v1/classify", json={"reports": [{"text": "Cardiomegaly."}]}, headers=auth(CLIENT))
    text = httpx.get(f"{url}/metrics", headers=auth(MONITOR)).text
    assert "# TYPE dprad_requests_total counter" in text
    assert 'dprad_requests_total{endpoint="POST /v1/classify",status="200"}' in text
    assert 'dprad_request_latency_seconds_bucket{endpoint="POST /v1/classify",le="+Inf"}' in text
    scored = [ln for ln in text.splitlines() if ln.startswith('dprad_reports_scored_total{key_id="client"}')]
    assert scored and int(scored[0].split()[-1]) >= 1


def test_key_headers_empty_x_api_key_is_no_key_and_two_keys_are_refused(server: tuple[str, Path]) -> None:
    url, state = server
    before = len(audit_lines(state))
    both = {"Authorization": f"Bearer {CLIENT}", "X-API-Key": ""}
    assert httpx.get(f"{url}/v1/model", headers=both).status_code == 200
    assert httpx.get(f"{url}/v1/model", headers={"X-API-Key": CLIENT}).status_code == 200
    two = httpx.get(f"{url}/v1/model", headers={"Authorization": f"Bearer {CLIENT}", "X-API-Key": ADMIN})
    assert two.status_code == 401 and "two different API keys" in two.json()["error"]["message"]
    assert len(audit_lines(state)) == before + 3  # refused or not, one line each


REFUSALS = [
    ("no key", {}, b'{"reports": [{"text": "x"}]}', 401, "API key"),
    ("bad key", auth("not-a-key-0123456789abcdef"), b'{"reports": [{"text": "x"}]}', 401, "API key"),
    ("wrong role", auth(MONITOR), b'{"reports": [{"text": "x"}]}', 403, "may not call classify"),
    ("malformed json", auth(CLIENT), b'{"reports": [{"text": ', 400, "not valid JSON"),
    (
        "unknown field",
        auth(CLIENT),
        b'{"reports": [{"text": "x", "mrn": "1"}]}',
        422,
        "unknown field 'reports[0].mrn'",
    ),
    ("unknown top field", auth(CLIENT), b'{"reports": [], "x": 1}', 422, "unknown field 'x'"),
    ("missing text", auth(CLIENT), b'{"reports": [{"id": "a"}]}', 422, "missing field 'reports[0].text'"),
    ("text not a string", auth(CLIENT), b'{"reports": [{"text": 3}]}', 422, "reports[0].text"),
    ("no reports", auth(CLIENT), b'{"reports": []}', 422, "'reports' is empty"),
    ("lone surrogate", auth(CLIENT), b'{"reports": [{"text": "\\ud800 effusion"}]}', 400, "lone surrogate"),
    (
        "lone surrogate id",
        auth(CLIENT),
        b'{"reports": [{"id": "\\udfff", "text": "x"}]}',
        400,
        "lone surrogate",
    ),
    ("surrogate field", auth(CLIENT), b'{"reports": [{"\\ud800": "x"}]}', 422, "'reports[0]'"),
    ("deep nesting", auth(CLIENT), b"[" * 15_000, 400, "nested too deeply"),
    ("deep nesting in text", auth(CLIENT), b'{"reports": [{"text": ' + b"[" * 15_000 + b"]}", 400, "nested"),
    ("empty text", auth(CLIENT), b'{"reports": [{"text": "  \\n "}]}', 422, "'reports[0].text' is empty"),
    (
        "oversized body",
        auth(CLIENT),
        json.dumps({"reports": [{"text": "y" * 1500}] * 15}).encode(),
        413,
        "limit",
    ),
    (
        "too many reports",
        auth(CLIENT),
        json.dumps({"reports": [{"text": "y"}] * 9}).encode(),
        413,
        "limit is 8",
    ),
    (
        "report too long",
        auth(CLIENT),
        json.dumps({"reports": [{"text": "y" * 2001}]}).encode(),
        413,
        "limit is 2000",
    ),
]


@pytest.mark.parametrize(
    ("case", "headers", "body", "status", "message"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_refusals_are_clear_4xx_with_an_audit_line(
    server: tuple[str, Path], case: str, headers: dict[str, str], body: bytes, status: int, message: str
) -> None:
    url, state = server
    before = len(audit_lines(state))
    r = httpx.post(f"{url}/v1/classify", content=body, headers=headers | {"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]
    lines = audit_lines(state)
    assert len(lines) == before + 1
    last = lines[-1]
    assert last["status"] == status and last["endpoint"] == "POST /v1/classify"
    assert message in str(last["error"])
    assert last["labels"] == []


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "allow"),
    [
        ("DELETE", "/v1/model", 405, "method_not_allowed", "GET"),
        ("GET", "/v1/classify", 405, "method_not_allowed", "POST"),
        ("PUT", "/healthz", 405, "method_not_allowed", "GET"),
        ("GET", "/v2/nothing", 404, "not_found", None),
    ],
)
def test_the_frameworks_own_refusals_answer_in_the_products_error_shape(
    server: tuple[str, Path], method: str, path: str, status: int, code: str, allow: str | None
) -> None:
    """404 and 405 come from FastAPI / Starlette, not from a handler: the body is still the product's
    ``{"error": {"code", "message"}}`` (not FastAPI's ``{"detail": ...}``), 405 keeps its Allow header, and
    the refusal leaves its audit line."""
    url, state = server
    httpx.get(f"{url}/healthz")  # the audit log exists, whichever test ran first
    before = len(audit_lines(state))
    r = httpx.request(method, f"{url}{path}", headers=auth(CLIENT))
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    assert r.headers.get("allow") == allow
    lines = audit_lines(state)
    assert len(lines) == before + 1 and lines[-1]["status"] == status
    assert lines[-1]["error"] == body["error"]["message"]


def test_over_budget_is_429_with_remaining_and_reset(server: tuple[str, Path]) -> None:
    url, state = server
    key = auth("daily-key-0123456789abcdef")
    ok = httpx.post(f"{url}/v1/classify", json={"reports": [{"text": "Edema."}]}, headers=key)
    assert ok.status_code == 200 and ok.json()["budget"]["remaining_day"] == 1
    r = httpx.post(f"{url}/v1/classify", json={"reports": [{"text": "a"}, {"text": "b"}]}, headers=key)
    assert r.status_code == 429
    budget = r.json()["budget"]
    assert (
        budget["remaining_day"] == 1
        and budget["requested"] == 2
        and budget["reset_at"].endswith("T00:00:00Z")
    )
    assert int(r.headers["Retry-After"]) > 0
    assert audit_lines(state)[-1]["status"] == 429
    assert httpx.post(f"{url}/v1/classify", json={"reports": [{"text": "c"}]}, headers=key).status_code == 200


def test_rate_limit_per_key(server: tuple[str, Path]) -> None:
    url, _ = server
    key = auth("slow-key-0123456789abcdef")
    codes = [httpx.get(f"{url}/v1/model", headers=key).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_concurrent_requests_never_overspend(server: tuple[str, Path]) -> None:
    url, state = server
    key = auth("tight-key-0123456789abcdef")
    results: list[int] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            for j in range(4):
                r = c.post(
                    f"{url}/v1/classify",
                    json={"reports": [{"text": f"Report {i}-{j}: effusion."}]},
                    headers=key,
                )
                assert r.status_code in (200, 429), r.text
                with lock:
                    results.append(len(r.json()["results"]) if r.status_code == 200 else 0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 64
    assert sum(results) == 23  # budget_total: exactly N reports scored, not one more
    assert BudgetStore(state / "budgets.sqlite").spent("tight") == (23, 23)
    ok = [x for x in audit_lines(state) if x["key_id"] == "tight" and x["status"] == 200]
    assert sum(int(str(x["n_reports"])) for x in ok) == 23


def test_budget_store_is_atomic_across_threads(tmp_path: Path) -> None:
    from dprad.serve.keys import ApiKey

    key = ApiKey("k", "0" * 64, "client", budget_per_day=100)
    store = BudgetStore(tmp_path / "b.sqlite")
    granted: list[int] = []

    def spend() -> None:
        mine = BudgetStore(tmp_path / "b.sqlite")  # its own connections, as another worker would have
        for _ in range(40):
            if mine.try_spend(key, 1).ok:
                granted.append(1)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 100 and store.spent("k") == (100, 100)


def test_budget_survives_a_restart(run_dir: Path, tmp_path: Path) -> None:
    keys = write_keys(tmp_path / "keys.yaml", small={"budget_total": 3})
    key = auth("small-key-0123456789abcdef")
    body2 = {"reports": [{"text": "Pneumonia."}, {"text": "Atelectasis."}]}
    with running(create_app(run_dir, keys_path=keys, state_dir=tmp_path / "state", limits=LIMITS)) as url:
        assert httpx.post(f"{url}/v1/classify", json=body2, headers=key).status_code == 200
    with running(create_app(run_dir, keys_path=keys, state_dir=tmp_path / "state", limits=LIMITS)) as url:
        r = httpx.post(f"{url}/v1/classify", json=body2, headers=key)
        assert r.status_code == 429 and r.json()["budget"]["remaining_total"] == 1
        assert r.json()["budget"]["reset_at"] is None  # a total budget does not reset
        assert (
            httpx.post(f"{url}/v1/classify", json={"reports": [{"text": "x"}]}, headers=key).status_code
            == 200
        )
        assert (
            httpx.post(f"{url}/v1/classify", json={"reports": [{"text": "y"}]}, headers=key).status_code
            == 429
        )


def test_no_report_text_in_the_audit_log_or_the_database(run_dir: Path, tmp_path: Path) -> None:
    keys = write_keys(tmp_path / "keys.yaml", tiny={"budget_total": 2})
    state = tmp_path / "state"
    texts = [
        "Patient Zebediah Quux-7781: moderate left pleural effusion with basilar atelectasis.",
        "Findings: 2.3 cm spiculated nodule right upper lobe, MRN 99887766, concerning for malignancy.",
        "Known pneumothorax Zebediah tube in place, no change since 2021-03-04 per Dr Wobblethorpe.",
    ]
    with running(create_app(run_dir, keys_path=keys, state_dir=state, limits=LIMITS)) as url:
        tiny = auth("tiny-key-0123456789abcdef")
        assert (
            httpx.post(
                f"{url}/v1/classify", json={"reports": [{"text": t} for t in texts[:2]]}, headers=tiny
            ).status_code
            == 200
        )
        assert (
            httpx.post(f"{url}/v1/classify", json={"reports": [{"text": texts[2]}]}, headers=tiny).status_code
            == 429
        )
        bad = {"reports": [{"text": texts[0], "patient": "Zebediah Quux"}]}
        assert httpx.post(f"{url}/v1/classify", json=bad, headers=auth(CLIENT)).status_code == 422
        assert (
            httpx.post(
                f"{url}/v1/classify", json={"reports": [{"text": texts[1]}]}, headers=auth("nope" * 5)
            ).status_code
            == 401
        )
    files = [p for p in state.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"audit.jsonl", "budgets.sqlite"}
    blob = b"".join(p.read_bytes() for p in files)
    for t in texts:
        assert t.encode() not in blob
        for word in ("Zebediah", "Wobblethorpe", "99887766", "spiculated", "effusion"):
            assert word.encode() not in blob, word
    # ... while the log does prove which reports were sent: their HMAC under the state folder's secret
    secret = (state / "audit.secret").read_bytes()
    lines = read_records(state / "audit")
    logged = {h for rec in lines for h in rec["report_hmac"]}
    assert {hmac.new(secret, t.encode(), hashlib.sha256).hexdigest() for t in texts} <= logged


def test_audit_log_rotates_by_size_and_summarizes(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", max_bytes=600)
    for i in range(12):
        log.write(
            AuditRecord(
                time=f"2025-01-01T00:00:{i:02d}Z",
                key_id="a" if i % 3 else "b",
                endpoint="POST /v1/classify",
                status=200 if i % 4 else 429,
                latency_ms=float(i),
                n_reports=2,
                report_hmac=("0" * 64, "1" * 64),
                hmac_key_id="0" * 16,
            )
        )
    files = sorted((tmp_path / "audit").glob("audit*.jsonl"))
    assert len(files) > 2 and all(p.stat().st_size <= 600 for p in files)
    table = summarize(tmp_path / "audit").set_index("key_id")
    assert table["requests"].sum() == 12
    assert table.loc["a", "requests"] == 8 and table.loc["b", "requests"] == 4
    assert table["refused_budget"].sum() == 3 and table["reports_scored"].sum() == 2 * 9
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["audit-log", "summarize", str(tmp_path / "audit"), "--json"])
    assert res.exit_code == 0, res.output
    assert {r["key_id"]: r["requests"] for r in json.loads(res.output)} == {"a": 8, "b": 4}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "x", "key": "short", "role": "client"}, "at least 16"),
        ({"id": "x", "key": "k" * 20, "key_sha256": "0" * 64}, "exactly one"),
        ({"id": "x", "key_sha256": "zz"}, "64 hex"),
        ({"id": "x", "key": "k" * 20, "role": "root"}, "role 'root'"),
        ({"id": "x", "key": "k" * 20, "budget": 3}, "unknown field 'budget'"),
        ({"id": "x", "key": "k" * 20, "budget_total": -1}, "budget_total"),
    ],
)
def test_key_file_errors_name_the_entry(tmp_path: Path, entry: dict[str, object], message: str) -> None:
    import yaml

    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry]}))
    with pytest.raises(DpradError, match="key 1") as err:
        load_keys(path)
    assert message in str(err.value)


def test_keys_are_kept_hashed(tmp_path: Path) -> None:
    ring = load_keys(write_keys(tmp_path / "keys.yaml"))
    assert all(CLIENT not in repr(k) for k in ring.keys)
    assert ring.authenticate(CLIENT) is not None and ring.authenticate(CLIENT).id == "client"  # type: ignore[union-attr]
    assert ring.authenticate(MONITOR).role == "monitor"  # type: ignore[union-attr]
    assert ring.authenticate("x" * 30) is None and ring.authenticate(None) is None


def test_live_traffic_reference_holds_scores_only_and_feeds_the_monitor(
    run_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from dprad.commands.serve import _is_loopback
    from dprad.serve.monitor import monitor_reports

    keys = write_keys(tmp_path / "keys.yaml")
    live = tmp_path / "live"
    sent = generate_reports(SynthConfig(n_patients=40, seed=21))
    app = create_app(
        run_dir, keys_path=keys, state_dir=tmp_path / "state", limits=LIMITS, record_reference=live
    )
    with running(app) as url:
        for i in range(0, len(sent), 8):
            body = {"reports": [{"text": r.text} for r in sent[i : i + 8]]}
            assert httpx.post(f"{url}/v1/classify", json=body, headers=auth(CLIENT)).status_code == 200
    ref = json.loads((live / "reference.json").read_text())  # written at shutdown
    assert ref["source"] == "live traffic" and ref["n"] == len(sent) and ref["sensitivity"] is None
    raw = (live / "reference.json").read_text()
    assert not any(r.text[:30] in raw for r in sent)
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    shutil.copy(live / "reference.json", run / "reference.json")
    result = monitor_reports(run, sent, use_labels=True)
    assert result.reference_source == "live traffic" and result.n_reference == len(sent)
    assert not result.alerted  # the very same reports: no drift
    assert any("no labels" in n for n in result.notes)
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and not _is_loopback("0.0.0.0")


def test_a_request_the_model_fails_to_score_costs_nothing(run_dir: Path, tmp_path: Path) -> None:
    """A run whose weights went non-finite: every request fails with a clear 500, and no budget is spent."""
    import shutil

    import torch

    broken = Path(shutil.copytree(run_dir, tmp_path / "broken"))
    head = broken / "model" / "head.pt"
    state = torch.load(head, weights_only=True)
    torch.save(
        {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}, head
    )
    keys = write_keys(tmp_path / "keys.yaml", tight={"budget_total": 3})
    app = create_app(broken, keys_path=keys, state_dir=tmp_path / "state", limits=LIMITS)
    key = auth("tight-key-0123456789abcdef")
    with running(app) as url:
        for _ in range(3):
            r = httpx.post(f"{url}/v1/classify", json={"reports": [{"text": "Edema."}] * 2}, headers=key)
            assert r.status_code == 500 and r.json()["error"]["code"] == "model_error", r.text
    assert BudgetStore(tmp_path / "state" / "budgets.sqlite").spent("tight") == (0, 0)
    lines = audit_lines(tmp_path / "state")
    assert [x["status"] for x in lines] == [500, 500, 500]


def test_refused_bodies_spend_no_budget(server: tuple[str, Path]) -> None:
    url, state = server
    before = BudgetStore(state / "budgets.sqlite").spent("client")
    for body in (b'{"reports": [{"text": "\\ud800"}]}', b"[" * 15_000, b'{"reports": [{"text": 1}]}'):
        r = httpx.post(f"{url}/v1/classify", content=body, headers=auth(CLIENT))
        assert 400 <= r.status_code < 500, r.text
    assert BudgetStore(state / "budgets.sqlite").spent("client") == before
