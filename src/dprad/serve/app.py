"""The HTTP API of a trained run: ``create_app(run_dir, ...)`` returns a FastAPI application.

``POST /v1/classify`` scores reports (per-label probability and the run's decision at its recorded
thresholds), ``GET /v1/model`` describes the model (schema, thresholds, privacy ledger, metrics),
``GET /healthz`` says it is up, ``GET /metrics`` is Prometheus text. Every request, refused or not, leaves
one audit line (see :mod:`dprad.serve.auditlog`): keyed hashes (HMAC-SHA-256) of report texts, never
the texts.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from dprad.data.reports import Report
from dprad.errors import DpradError
from dprad.serve.auditlog import AuditLog, AuditRecord, now_iso, server_key
from dprad.serve.batcher import MicroBatcher
from dprad.serve.budgets import BudgetStore, RateLimiter
from dprad.serve.keys import ApiKey, KeyRing, load_keys

BUDGET_DB = "budgets.sqlite"
AUDIT_DIR = "audit"


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 1_000_000  # a request body over this is refused (413) before it is parsed
    max_reports_per_request: int = 256
    max_report_chars: int = 20_000
    batch_wait_ms: float = 2.0  # how long the micro-batcher waits for more requests
    batch_max_reports: int = 512
    audit_max_bytes: int = 50_000_000  # rotate the audit file past this size


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr | None = None
    text: StrictStr


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reports: list[ReportIn]


# ---------------------------------------------------------------- the OpenAPI description
# The handlers read their own bodies and raise ApiError, so FastAPI cannot infer the request body or the
# refusals: they are spelled out here, and the fuzz test (tests/test_serve_fuzz.py) holds the server to them.

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def _refusals(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for refusals: status (as ``s401=...``) -> description, each a JSON error body."""
    return {
        int(status.lstrip("s")): {
            "description": text,
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for status, text in described.items()
    }


AUTH_REFUSALS = _refusals(
    s401="missing or unknown API key", s403="the key's role may not call this endpoint", s429="rate limited"
)


@functools.cache
def _python_whitespace() -> str:
    """Every character ``str.strip()`` removes (computed once: it scans all code points)."""
    return "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def _classify_body_schema(limits: ServeLimits) -> dict[str, Any]:
    # a text must hold a character that str.strip() keeps (_check_limits refuses it as empty otherwise). The
    # class is spelled out: JSON Schema's "\S" (ECMA-262) takes U+001C-U+001F and U+0085 for non-space, so
    # with it the fuzzer sent a schema-valid text "\x1d" that the server refused as empty (422)
    whitespace = _python_whitespace()
    report = {
        "type": "object",
        "additionalProperties": False,
        "required": ["text"],
        "properties": {
            "id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            # at least one non-whitespace character; the length is counted in characters (code points)
            "text": {
                "type": "string",
                "minLength": 1,
                "maxLength": limits.max_report_chars,
                "pattern": f"[^{whitespace}]",
            },
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["reports"],
        "properties": {
            "reports": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_reports_per_request,
                "items": report,
            }
        },
    }


BUDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["requested", "remaining_day", "remaining_total", "reset_at"],
    "properties": {
        "requested": {"type": "integer"},
        "remaining_day": {"type": ["integer", "null"]},
        "remaining_total": {"type": ["integer", "null"]},
        "reset_at": {"type": ["string", "null"]},
    },
}
CLASSIFY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["run", "labels", "threshold_rule", "results", "budget"],
    "properties": {
        "run": {"type": "string"},
        "labels": {"type": "array", "items": {"type": "string"}},
        "threshold_rule": {"type": "string"},
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "probabilities", "decisions", "positive"],
                "properties": {
                    "id": {"type": "string"},
                    "probabilities": {
                        "type": "object",
                        "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                    "decisions": {"type": "object", "additionalProperties": {"type": "boolean"}},
                    "positive": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "budget": BUDGET_SCHEMA,
    },
}


class ApiError(Exception):
    """A refusal: HTTP status, a short code, a one-line message (never echoing the request body)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers, self.extra = headers or {}, extra or {}


# ---------------------------------------------------------------- Prometheus text exposition

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """Counters and a latency histogram, rendered in the Prometheus text format (version 0.0.4)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency_buckets: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.latency_count: Counter[str] = Counter()
        self.reports_scored: Counter[str] = Counter()
        self.budget_refusals: Counter[str] = Counter()
        self.rate_refusals: Counter[str] = Counter()

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        buckets = self.latency_buckets.setdefault(endpoint, [0] * len(LATENCY_BUCKETS))
        for i, le in enumerate(LATENCY_BUCKETS):
            if seconds <= le:
                buckets[i] += 1
        self.latency_sum[endpoint] = self.latency_sum.get(endpoint, 0.0) + seconds
        self.latency_count[endpoint] += 1

    def render(self, batcher: MicroBatcher) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        family("dprad_requests_total", "counter", "HTTP requests by endpoint and status.")
        for (ep, status), v in sorted(self.requests.items()):
            out.append(f'dprad_requests_total{{endpoint="{_esc(ep)}",status="{status}"}} {v}')
        family("dprad_request_latency_seconds", "histogram", "Request latency by endpoint.")
        for ep, buckets in sorted(self.latency_buckets.items()):
            for le, v in zip(LATENCY_BUCKETS, buckets, strict=True):
                out.append(f'dprad_request_latency_seconds_bucket{{endpoint="{_esc(ep)}",le="{le}"}} {v}')
            out.append(
                f'dprad_request_latency_seconds_bucket{{endpoint="{_esc(ep)}",le="+Inf"}} {self.latency_count[ep]}'
            )
            out.append(
                f'dprad_request_latency_seconds_sum{{endpoint="{_esc(ep)}"}} {self.latency_sum[ep]:.6f}'
            )
            out.append(
                f'dprad_request_latency_seconds_count{{endpoint="{_esc(ep)}"}} {self.latency_count[ep]}'
            )
        family("dprad_reports_scored_total", "counter", "Reports scored, by key.")
        for kid, v in sorted(self.reports_scored.items()):
            out.append(f'dprad_reports_scored_total{{key_id="{_esc(kid)}"}} {v}')
        family("dprad_budget_refusals_total", "counter", "Requests refused for lack of budget, by key.")
        for kid, v in sorted(self.budget_refusals.items()):
            out.append(f'dprad_budget_refusals_total{{key_id="{_esc(kid)}"}} {v}')
        family("dprad_rate_limit_refusals_total", "counter", "Requests refused by the rate limit, by key.")
        for kid, v in sorted(self.rate_refusals.items()):
            out.append(f'dprad_rate_limit_refusals_total{{key_id="{_esc(kid)}"}} {v}')
        s = batcher.stats
        family("dprad_batches_total", "counter", "Micro-batches scored by the model.")
        out.append(f"dprad_batches_total {s.batches}")
        family("dprad_model_seconds_total", "counter", "Seconds spent inside the model.")
        out.append(f"dprad_model_seconds_total {s.seconds:.6f}")
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ---------------------------------------------------------------- live reference (scores only)


class LiveReference:
    """Scores, word counts and OOV rates of served reports, written as a monitor reference (no text)."""

    def __init__(
        self, directory: Path, *, schema: Any, thresholds: np.ndarray, rule: str, vocab: Any
    ) -> None:
        self.path = Path(directory) / "reference.json"
        self.schema, self.thresholds, self.rule, self.vocab = schema, thresholds, rule, vocab
        self.probs: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.oov: list[np.ndarray] = []
        self.unwritten = 0

    def add(self, texts: Sequence[str], probs: np.ndarray) -> None:
        from dprad.serve.monitor import text_features

        lengths, oov = text_features(texts, self.vocab)
        self.probs.append(probs)
        self.lengths.append(lengths)
        self.oov.append(oov)
        self.unwritten += len(texts)

    def write(self) -> None:
        from dprad.io import write_json
        from dprad.serve.monitor import reference_from_arrays

        if not self.probs:
            return
        ref = reference_from_arrays(
            np.concatenate(self.probs),
            np.concatenate(self.lengths),
            np.concatenate(self.oov),
            labels=self.schema.labels,
            critical=self.schema.critical,
            thresholds=self.thresholds,
            threshold_rule=self.rule,
            source="live traffic",
        )
        write_json(self.path, ref)
        self.unwritten = 0


# ---------------------------------------------------------------- the application


def create_app(
    run_dir: str | Path,
    *,
    keys_path: str | Path,
    state_dir: str | Path,
    limits: ServeLimits = ServeLimits(),
    record_reference: str | Path | None = None,
    record_every: int = 1000,
    audit_secret_file: str | Path | None = None,
) -> FastAPI:
    """Load the run and the keys, open the budget database and the audit log, and build the app.

    The audit log hashes report texts under ``audit_secret_file`` when given, else under
    ``state_dir/audit.secret`` (generated on first start, mode 0600, reused after that).
    """
    from dprad.modes import load_run
    from dprad.serve.monitor import run_thresholds, tokenizer_vocab

    run_dir = Path(run_dir)
    state_dir = Path(state_dir)
    keys: KeyRing = load_keys(keys_path)
    audit_key, _ = server_key(state_dir, audit_secret_file)
    predictor = load_run(run_dir)
    schema = predictor.schema
    thresholds, rule = run_thresholds(run_dir, schema)
    model_info = _model_info(run_dir, schema, thresholds, rule, predictor.mode, limits)
    # evaluation counts on the run's own validation / test splits were computed without DP (supports and
    # recalls as small as one patient): only admin keys see them; the other roles get what the ledger covers
    public_info = {k: v for k, v in model_info.items() if k != "metrics"}
    label_names = np.asarray(schema.labels)  # (L,)
    budgets = BudgetStore(state_dir / BUDGET_DB)
    audit = AuditLog(state_dir / AUDIT_DIR, max_bytes=limits.audit_max_bytes)
    rate = RateLimiter()
    metrics = ServerMetrics()
    batcher = MicroBatcher(
        lambda rs: predictor.predict(rs).probs,
        max_wait_ms=limits.batch_wait_ms,
        max_reports=limits.batch_max_reports,
    )
    live = (
        LiveReference(
            Path(record_reference),
            schema=schema,
            thresholds=thresholds,
            rule=rule,
            vocab=tokenizer_vocab(predictor.tokenizer),
        )
        if record_reference is not None
        else None
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            if live is not None:
                live.write()
            budgets.close()

    app = FastAPI(
        title="dprad",
        summary=f"classifier of run {run_dir.name}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.budgets, app.state.audit, app.state.metrics = budgets, audit, metrics

    @app.middleware("http")
    async def audit_every_request(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        t0 = time.perf_counter()
        request.state.audit = {}
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - an unexpected failure is still audited, with no detail leaked
            response = JSONResponse(
                {"error": {"code": "internal", "message": "internal error"}}, status_code=500
            )
            request.state.audit.setdefault("error", "internal error")
        seconds = time.perf_counter() - t0
        info: dict[str, Any] = request.state.audit
        endpoint = info.get("endpoint") or f"{request.method} (no route)"
        record = AuditRecord(
            time=now_iso(),
            key_id=info.get("key_id"),
            endpoint=endpoint,
            status=response.status_code,
            latency_ms=round(seconds * 1000, 3),
            n_reports=int(info.get("n_reports", 0)),
            report_hmac=tuple(info.get("hmac", ())),
            hmac_key_id=audit_key.key_id,
            labels=tuple(info.get("labels", ())),
            error=info.get("error"),
            client=request.client.host if request.client else None,
        )
        await anyio.to_thread.run_sync(audit.write, record)
        metrics.observe(endpoint, response.status_code, seconds)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        # a message may quote a field name the client sent: never let it carry a lone surrogate into the body
        message = err.message.encode("utf-8", "backslashreplace").decode("utf-8")
        request.state.audit["error"] = message
        body = {"error": {"code": err.code, "message": message}} | err.extra
        return JSONResponse(body, status_code=err.status, headers=err.headers)

    @app.exception_handler(404)
    async def not_found(request: Request, _: Exception) -> JSONResponse:
        request.state.audit["error"] = "no such endpoint"
        return JSONResponse({"error": {"code": "not_found", "message": "no such endpoint"}}, status_code=404)

    def authorize(request: Request, endpoint: str) -> ApiKey:
        # an empty X-API-Key is no key (the fuzz test found it shadowing a valid Authorization header);
        # two different keys in one request are refused rather than one of them picked
        header = (request.headers.get("x-api-key") or "").strip() or None
        auth = request.headers.get("authorization", "")
        bearer = auth[7:].strip() or None if auth.lower().startswith("bearer ") else None
        if header is not None and bearer is not None and header != bearer:
            raise ApiError(
                401, "unauthorized", "two different API keys (Authorization and X-API-Key): send one"
            )
        key = keys.authenticate(header or bearer)
        if key is None:
            raise ApiError(
                401,
                "unauthorized",
                "missing or unknown API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request.state.audit["key_id"] = key.id
        if not key.may(endpoint):
            raise ApiError(403, "forbidden", f"key '{key.id}' (role {key.role}) may not call {endpoint}")
        ok, wait = rate.allow(key)
        if not ok:
            metrics.rate_refusals[key.id] += 1
            raise ApiError(
                429,
                "rate_limited",
                f"key '{key.id}': more than {key.rate_per_minute} requests per minute",
                headers={"Retry-After": str(max(1, int(wait + 0.999)))},
                extra={"retry_after_s": round(wait, 3)},
            )
        return key

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        request.state.audit["endpoint"] = "GET /healthz"
        return {"status": "ok", "run": run_dir.name, "labels": len(schema)}

    @app.get("/v1/model", responses=AUTH_REFUSALS)
    async def model(request: Request) -> dict[str, Any]:
        request.state.audit["endpoint"] = "GET /v1/model"
        key = authorize(request, "model")
        return model_info if key.role == "admin" else public_info

    @app.get("/metrics", response_class=PlainTextResponse, responses=AUTH_REFUSALS)
    async def prometheus(request: Request) -> PlainTextResponse:
        request.state.audit["endpoint"] = "GET /metrics"
        authorize(request, "metrics")
        return PlainTextResponse(
            metrics.render(batcher), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.post(
        "/v1/classify",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _classify_body_schema(limits)}},
            }
        },
        responses={200: {"content": {"application/json": {"schema": CLASSIFY_SCHEMA}}}}
        | AUTH_REFUSALS
        | _refusals(
            s400="the body is not valid JSON, or a text or id is not valid Unicode",
            s413="the body, a report or the number of reports is over the limit",
            s422="the body is not the documented shape, or a text is empty",
            s429="rate limited, or over the key's budget (the body says which, and what is left)",
            s500="the model failed to score the reports (nothing was charged)",
        ),
    )
    async def classify(request: Request) -> JSONResponse:
        info = request.state.audit
        info["endpoint"] = "POST /v1/classify"
        key = authorize(request, "classify")
        body = await _read_body(request, limits.max_body_bytes)
        doc = _decode(body)
        texts = _texts_of(doc)
        info["n_reports"] = len(texts)
        _check_unicode(texts, doc)
        info["hmac"] = audit_key.digests(texts)
        try:
            req = ClassifyRequest.model_validate(doc)
        except ValidationError as err:
            raise ApiError(422, "invalid_request", _validation_message(err)) from None
        _check_limits(req, limits)
        spend = await anyio.to_thread.run_sync(budgets.try_spend, key, len(req.reports))
        if not spend.ok:
            metrics.budget_refusals[key.id] += 1
            when = f"; resets at {spend.reset_at}" if spend.reset_at else "; it does not reset"
            raise ApiError(
                429,
                "over_budget",
                f"key '{key.id}': {spend.reason}: {len(req.reports)} reports asked, "
                f"{_remaining(spend.remaining_day, spend.remaining_total)} left{when}",
                headers={"Retry-After": str(_seconds_until(spend.reset_at))} if spend.reset_at else {},
                extra={"budget": spend.to_dict()},
            )
        reports = [
            Report(id=r.id if r.id is not None else str(i), patient_id=r.id or str(i), text=r.text)
            for i, r in enumerate(req.reports)
        ]
        try:
            probs = await batcher.submit(reports)  # (n, L)
            if not np.isfinite(probs).all():
                raise ApiError(
                    500, "model_error", "the model produced non-finite scores; nothing was charged"
                )
        except Exception:
            # a request the model failed to score costs the key nothing
            await anyio.to_thread.run_sync(budgets.refund, key, len(reports))
            raise
        decisions = probs >= thresholds[None, :]  # (n, L)
        positive = [tuple(label_names[row].tolist()) for row in decisions]
        info["labels"] = positive
        metrics.reports_scored[key.id] += len(reports)
        if live is not None:
            live.add([r.text for r in req.reports], probs)
            if live.unwritten >= record_every:
                await anyio.to_thread.run_sync(live.write)
        return JSONResponse(
            {
                "run": run_dir.name,
                "labels": list(schema.labels),
                "threshold_rule": rule,
                "results": [
                    {
                        "id": rep.id,
                        "probabilities": {
                            lab: round(float(p), 6) for lab, p in zip(schema.labels, row, strict=True)
                        },
                        "decisions": {lab: bool(d) for lab, d in zip(schema.labels, dec, strict=True)},
                        "positive": list(pos),
                    }
                    for rep, row, dec, pos in zip(reports, probs, decisions, positive, strict=True)
                ],
                "budget": spend.to_dict(),
            }
        )

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"the request body has {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes) -> Any:
    """The parsed JSON body, or a 400 naming why not (bad JSON, not UTF-8, nested too deep, a number too long)."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {msg}") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "the request body is nested too deeply") from None
    except ValueError:
        # found by tests/test_serve_fuzz.py: an integer past Python's digit limit (sys.get_int_max_str_digits,
        # 4300 by default), e.g. a body of 5000 digits, raised a plain ValueError and was answered 500
        raise ApiError(400, "malformed_json", "the request body holds a number too long to read") from None


def _check_unicode(texts: Sequence[str], doc: Any) -> None:
    """JSON escapes can spell lone surrogates ("\\ud800"): no valid Unicode text, nothing to hash or score."""
    reports = doc.get("reports") if isinstance(doc, dict) else None
    ids = [r.get("id") for r in reports if isinstance(r, dict)] if isinstance(reports, list) else []
    for what, values in (("text", texts), ("id", ids)):
        for i, v in enumerate(values):
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise ApiError(
                        400,
                        "invalid_text",
                        f"a report {what} (number {i}) holds a lone surrogate: not valid Unicode",
                    ) from None


def _texts_of(doc: Any) -> list[str]:
    """The report texts in a parsed body, as far as its shape allows (for the audit hashes)."""
    reports = doc.get("reports") if isinstance(doc, dict) else None
    if not isinstance(reports, list):
        return []
    return [r["text"] for r in reports if isinstance(r, dict) and isinstance(r.get("text"), str)]


def _validation_message(err: ValidationError) -> str:
    """Pydantic's errors without their 'input' (which would echo report text)."""
    parts = []
    for e in err.errors(include_input=False, include_url=False)[:5]:
        loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in e["loc"]).lstrip(".") or "body"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown field '{loc}' (allowed: reports[].id, reports[].text)")
        elif e["type"] == "missing":
            parts.append(f"missing field '{loc}'")
        else:
            parts.append(f"'{loc}': {e['msg']}")
    more = len(err.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _check_limits(req: ClassifyRequest, limits: ServeLimits) -> None:
    if not req.reports:
        raise ApiError(422, "invalid_request", "'reports' is empty: send at least one report")
    if len(req.reports) > limits.max_reports_per_request:
        raise ApiError(
            413,
            "too_many_reports",
            f"{len(req.reports)} reports in one request; the limit is {limits.max_reports_per_request}",
        )
    for i, r in enumerate(req.reports):
        if not r.text.strip():
            raise ApiError(422, "empty_text", f"'reports[{i}].text' is empty")
        if len(r.text) > limits.max_report_chars:
            raise ApiError(
                413,
                "report_too_long",
                f"'reports[{i}].text' has {len(r.text)} characters; the limit is {limits.max_report_chars}",
            )


def _remaining(day: int | None, total: int | None) -> str:
    parts = []
    if day is not None:
        parts.append(f"{day} today")
    if total is not None:
        parts.append(f"{total} in total")
    return " and ".join(parts) or "unlimited"


def _seconds_until(iso: str) -> int:
    from datetime import datetime, timezone

    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return max(1, int((when - datetime.now(timezone.utc)).total_seconds() + 0.999))


def _model_info(
    run_dir: Path, schema: Any, thresholds: np.ndarray, rule: str, mode: str, limits: ServeLimits
) -> dict[str, Any]:
    def read(name: str) -> dict[str, Any] | None:
        path = run_dir / name
        if not path.is_file():
            return None
        try:
            return dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValueError):
            raise DpradError(f"{path}: not valid JSON") from None

    privacy = read("privacy.json")
    metrics = read("metrics.json") or {}
    summary: dict[str, Any] = {}
    for split in ("val", "test"):
        for which, s in (metrics.get(split) or {}).items():
            if isinstance(s, dict):
                summary.setdefault(split, {})[which] = {
                    k: s.get(k) for k in ("weighted_f1", "macro_f1", "micro_f1", "macro_auroc") if k in s
                } | {
                    "per_label": [
                        {k: d.get(k) for k in ("label", "support", "precision", "recall", "f1", "auroc")}
                        for d in s.get("per_label", [])
                    ]
                }
    return {
        "run": run_dir.name,
        "mode": mode,
        "schema": {k: v for k, v in schema.to_dict().items() if k != "terms"},
        "thresholds": {
            "rule": rule,
            "values": dict(zip(schema.labels, [float(t) for t in thresholds], strict=True)),
        },
        "privacy": None
        if privacy is None
        else {
            "statement": privacy.get("statement"),
            "numbers": {k: v for k, v in privacy.items() if k != "statement"},
        },
        "metrics": summary,
        "limits": {
            "max_body_bytes": limits.max_body_bytes,
            "max_reports_per_request": limits.max_reports_per_request,
            "max_report_chars": limits.max_report_chars,
        },
    }


@contextmanager
def running(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yield its base URL; stop it on exit.

    ``port=0`` lets the OS pick a free port. For tests and benchmarks (``dprad serve`` runs uvicorn itself).
    """
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="dprad-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
