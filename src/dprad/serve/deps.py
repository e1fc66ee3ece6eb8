"""What a request handler depends on: the server's state, the API key (authentication, role, rate limit),
the classify body (read, parsed, checked against the limits) and the key's budget."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from fastapi import Request
from pydantic import ValidationError

from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema
from dprad.serve.api import ApiError, ClassifyRequest, ServeLimits
from dprad.serve.auditlog import AuditKey, AuditLog
from dprad.serve.batcher import MicroBatcher
from dprad.serve.budgets import BudgetStore, RateLimiter, Spend
from dprad.serve.keys import ApiKey, KeyRing
from dprad.serve.live import LiveReference
from dprad.serve.prometheus import ServerMetrics


@dataclass(frozen=True)
class ServeState:
    """Everything the handlers read, built once by ``create_app`` (``app.state.server``)."""

    run: str  # the run directory's name
    schema: LabelSchema
    label_names: np.ndarray  # (L,) the schema's labels, to index with a row of decisions
    thresholds: np.ndarray  # (L,) the run's shipped decision thresholds
    rule: str  # how they were chosen
    model_info: dict[str, Any]  # GET /v1/model for admin keys
    public_info: dict[str, Any]  # ... and for the other roles
    limits: ServeLimits
    keys: KeyRing
    rate: RateLimiter
    budgets: BudgetStore
    audit: AuditLog
    audit_key: AuditKey
    metrics: ServerMetrics
    batcher: MicroBatcher
    live: LiveReference | None
    record_every: int


def state_of(request: Request) -> ServeState:
    state = request.app.state.server
    assert isinstance(state, ServeState)
    return state


# ---------------------------------------------------------------- the API key


def authorize(request: Request, endpoint: str) -> ApiKey:
    """The request's key, allowed to call ``endpoint`` and within its rate; else 401 / 403 / 429."""
    srv = state_of(request)
    # an empty X-API-Key is no key (the fuzz test found it shadowing a valid Authorization header);
    # two different keys in one request are refused rather than one of them picked
    header = (request.headers.get("x-api-key") or "").strip() or None
    auth = request.headers.get("authorization", "")
    bearer = auth[7:].strip() or None if auth.lower().startswith("bearer ") else None
    if header is not None and bearer is not None and header != bearer:
        raise ApiError(401, "unauthorized", "two different API keys (Authorization and X-API-Key): send one")
    key = srv.keys.authenticate(header or bearer)
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
    ok, wait = srv.rate.allow(key)
    if not ok:
        srv.metrics.rate_refusals[key.id] += 1
        raise ApiError(
            429,
            "rate_limited",
            f"key '{key.id}': more than {key.rate_per_minute} requests per minute",
            headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            extra={"retry_after_s": round(wait, 3)},
        )
    return key


# ---------------------------------------------------------------- the classify body


async def classify_request(request: Request) -> ClassifyRequest:
    """The body, read within the size limit, parsed, hashed into the audit record, validated and checked."""
    srv = state_of(request)
    info = request.state.audit
    body = await _read_body(request, srv.limits.max_body_bytes)
    doc = _decode(body)
    texts = _texts_of(doc)
    info["n_reports"] = len(texts)
    _check_unicode(texts, doc)
    info["hmac"] = srv.audit_key.digests(texts)
    try:
        req = ClassifyRequest.model_validate(doc)
    except ValidationError as err:
        raise ApiError(422, "invalid_request", _validation_message(err)) from None
    _check_limits(req, srv.limits)
    return req


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


# ---------------------------------------------------------------- the budget


async def charge(srv: ServeState, key: ApiKey, n: int) -> Spend:
    """Spend ``n`` reports of the key's budget, or refuse (429) saying what is left and when it resets."""
    spend = await anyio.to_thread.run_sync(srv.budgets.try_spend, key, n)
    if not spend.ok:
        srv.metrics.budget_refusals[key.id] += 1
        when = f"; resets at {spend.reset_at}" if spend.reset_at else "; it does not reset"
        raise ApiError(
            429,
            "over_budget",
            f"key '{key.id}': {spend.reason}: {n} reports asked, "
            f"{_remaining(spend.remaining_day, spend.remaining_total)} left{when}",
            headers={"Retry-After": str(_seconds_until(spend.reset_at))} if spend.reset_at else {},
            extra={"budget": spend.to_dict()},
        )
    return spend


async def score(srv: ServeState, key: ApiKey, reports: Sequence[Report]) -> np.ndarray:
    """Probabilities ``(n, L)`` from the micro-batcher; a request the model failed to score is refunded."""
    try:
        probs = await srv.batcher.submit(reports)  # (n, L)
        if not np.isfinite(probs).all():
            raise ApiError(500, "model_error", "the model produced non-finite scores; nothing was charged")
    except Exception:
        # a request the model failed to score costs the key nothing
        await anyio.to_thread.run_sync(srv.budgets.refund, key, len(reports))
        raise
    return probs


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
