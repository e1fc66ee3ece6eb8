"""The HTTP API of a trained run: ``create_app(run_dir, ...)`` returns a FastAPI application.

``POST /v1/classify`` scores reports (per-label probability and the run's decision at its recorded
thresholds), ``GET /v1/model`` describes the model (schema, thresholds, privacy ledger, metrics),
``GET /healthz`` says it is up, ``GET /metrics`` is Prometheus text. Every request, refused or not, leaves
one audit line (see :mod:`dprad.serve.auditlog`): keyed hashes (HMAC-SHA-256) of report texts, never
the texts.

The pieces: :mod:`~dprad.serve.api` (limits, request shape, refusals, OpenAPI), :mod:`~dprad.serve.deps`
(the server's state, API keys, body parsing, budgets), :mod:`~dprad.serve.routes` (the handlers),
:mod:`~dprad.serve.model_info` (``GET /v1/model``), :mod:`~dprad.serve.prometheus` and
:mod:`~dprad.serve.live` (a monitor reference of live traffic). This module assembles them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from dprad.errors import DpradError
from dprad.metrics.drift import tokenizer_vocab
from dprad.privacy.ledger import noise_warning
from dprad.run import RunRecord
from dprad.serve.api import ApiError, ServeLimits
from dprad.serve.auditlog import AuditLog, AuditRecord, now_iso, server_key
from dprad.serve.batcher import MicroBatcher
from dprad.serve.budgets import BudgetStore, RateLimiter
from dprad.serve.deps import ServeState, state_of
from dprad.serve.keys import load_keys
from dprad.serve.live import LiveReference
from dprad.serve.model_info import model_info
from dprad.serve.prometheus import ServerMetrics
from dprad.serve.routes import add_routes

__all__ = ["AUDIT_DIR", "BUDGET_DB", "ApiError", "ServeLimits", "create_app", "running", "serve_state"]

BUDGET_DB = "budgets.sqlite"
AUDIT_DIR = "audit"


def create_app(
    run_dir: str | Path,
    *,
    keys_path: str | Path,
    state_dir: str | Path,
    limits: ServeLimits = ServeLimits(),
    record_reference: str | Path | None = None,
    record_every: int = 1000,
    audit_secret_file: str | Path | None = None,
    force: bool = False,
) -> FastAPI:
    """Load the run and the keys, open the budget database and the audit log, and build the app.

    The audit log hashes report texts under ``audit_secret_file`` when given, else under
    ``state_dir/audit.secret`` (generated on first start, mode 0600, reused after that). A private run
    whose DP noise is not secret (a stated ``--noise-seed``, or a run from before secret noise) is refused
    (``DpradError``, one line) unless ``force``; its ``GET /v1/model`` then carries the warning.
    """
    server = serve_state(
        run_dir,
        keys_path=keys_path,
        state_dir=Path(state_dir),
        limits=limits,
        record_reference=record_reference,
        record_every=record_every,
        audit_secret_file=audit_secret_file,
        force=force,
    )
    app = FastAPI(
        title="dprad",
        summary=f"classifier of run {server.run}",
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.server = server
    app.state.budgets, app.state.audit, app.state.metrics = server.budgets, server.audit, server.metrics
    app.middleware("http")(audit_every_request)
    app.exception_handler(ApiError)(api_error)
    # the framework's own refusals (404, 405 with its Allow header, a body it rejects) in the product's shape
    app.exception_handler(HTTPException)(http_error)
    app.exception_handler(RequestValidationError)(validation_error)
    add_routes(app, limits)
    return app


def serve_state(
    run_dir: str | Path,
    *,
    keys_path: str | Path,
    state_dir: Path,
    limits: ServeLimits,
    record_reference: str | Path | None,
    record_every: int,
    audit_secret_file: str | Path | None,
    force: bool = False,
) -> ServeState:
    """What the handlers read: the run (through RunRecord) and its model, the keys, the audit key, the
    budget database, the audit log, the counters, the micro-batcher and the live reference, if asked.
    A run whose DP noise is not secret is refused unless ``force`` (see ``create_app``)."""
    from dprad.modes import load_run

    record = RunRecord.open(run_dir)
    warning = noise_warning(record.ledger)
    if warning and not force:
        raise DpradError(
            f"{run_dir}: its DP noise is not secret, so its guarantee does not hold against whoever can "
            f"regenerate it: {warning} --force to serve it anyway"
        )
    keys = load_keys(keys_path)
    audit_key, _ = server_key(state_dir, audit_secret_file)
    predictor = load_run(record)
    schema, thresholds, rule = predictor.schema, record.thresholds.array, record.thresholds.describe()
    info = model_info(record, mode=predictor.mode, limits=limits)
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
    return ServeState(
        run=record.name,
        schema=schema,
        label_names=np.asarray(schema.labels),  # (L,)
        thresholds=thresholds,
        rule=rule,
        model_info=info,
        public_info=model_info(record, mode=predictor.mode, limits=limits, public=True),
        limits=limits,
        keys=keys,
        rate=RateLimiter(),
        budgets=BudgetStore(state_dir / BUDGET_DB),
        audit=AuditLog(state_dir / AUDIT_DIR, max_bytes=limits.audit_max_bytes),
        audit_key=audit_key,
        metrics=ServerMetrics(),
        batcher=MicroBatcher(
            lambda rs: predictor.predict(rs).probs,
            max_wait_ms=limits.batch_wait_ms,
            max_reports=limits.batch_max_reports,
        ),
        live=live,
        record_every=record_every,
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    srv: ServeState = app.state.server
    await srv.batcher.start()
    try:
        yield
    finally:
        await srv.batcher.stop()
        if srv.live is not None:
            srv.live.write()
        srv.budgets.close()


async def audit_every_request(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """One audit line per request, refused or not, and the request counters and latency histogram."""
    srv = state_of(request)
    t0 = time.perf_counter()
    request.state.audit = {}
    try:
        response = await call_next(request)
    except Exception:  # noqa: BLE001 - an unexpected failure is still audited, with no detail leaked
        response = JSONResponse({"error": {"code": "internal", "message": "internal error"}}, status_code=500)
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
        hmac_key_id=srv.audit_key.key_id,
        labels=tuple(info.get("labels", ())),
        error=info.get("error"),
        client=request.client.host if request.client else None,
    )
    await anyio.to_thread.run_sync(srv.audit.write, record)
    srv.metrics.observe(endpoint, response.status_code, seconds)
    return response


async def api_error(request: Request, err: ApiError) -> JSONResponse:
    # a message may quote a field name the client sent: never let it carry a lone surrogate into the body
    message = err.message.encode("utf-8", "backslashreplace").decode("utf-8")
    request.state.audit["error"] = message
    body = {"error": {"code": err.code, "message": message}} | err.extra
    return JSONResponse(body, status_code=err.status, headers=err.headers)


# the framework's refusals by status: (code, message) in the product's error shape
FRAMEWORK_ERRORS = {
    404: ("not_found", "no such endpoint"),
    405: (
        "method_not_allowed",
        "this endpoint does not answer that method (the Allow header lists those it does)",
    ),
}


async def http_error(request: Request, err: Exception) -> JSONResponse:
    """A refusal raised by FastAPI / Starlette themselves (no route, a method the route does not take, ...),
    answered like the product's own: ``{"error": {"code", "message"}}``, with the framework's headers."""
    assert isinstance(err, HTTPException)
    code, message = FRAMEWORK_ERRORS.get(err.status_code, (_slug(err.status_code), _phrase(err.status_code)))
    request.state.audit["error"] = message
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=err.status_code, headers=err.headers
    )


async def validation_error(request: Request, _: Exception) -> JSONResponse:
    """A request FastAPI's own validation refused (the handlers read their bodies themselves, so none today)."""
    request.state.audit["error"] = "invalid request"
    return JSONResponse({"error": {"code": "invalid_request", "message": "invalid request"}}, status_code=422)


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return f"refused ({status})"


def _slug(status: int) -> str:
    return "_".join(_phrase(status).replace("-", " ").split()) or "error"


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
