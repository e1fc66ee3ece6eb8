"""The route handlers: ``GET /healthz``, ``GET /v1/model``, ``GET /metrics``, ``POST /v1/classify``.

Each names its endpoint in the request's audit record first, then authorizes (:mod:`dprad.serve.deps`).
The handlers carry no docstrings on purpose: FastAPI would publish them as the operations' descriptions.
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from dprad.data.reports import Report
from dprad.serve.api import AUTH_REFUSALS, ServeLimits, classify_openapi
from dprad.serve.budgets import Spend
from dprad.serve.deps import ServeState, authorize, charge, classify_request, score, state_of


def add_routes(app: FastAPI, limits: ServeLimits) -> None:
    """Register the handlers, in the order (and so with the operation ids) the OpenAPI document lists."""
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/v1/model", model, methods=["GET"], responses=AUTH_REFUSALS)
    app.add_api_route(
        "/metrics",
        prometheus,
        methods=["GET"],
        response_class=PlainTextResponse,
        responses=AUTH_REFUSALS,
    )
    app.add_api_route("/v1/classify", classify, methods=["POST"], **classify_openapi(limits))


async def healthz(request: Request) -> dict[str, Any]:
    request.state.audit["endpoint"] = "GET /healthz"
    srv = state_of(request)
    return {"status": "ok", "run": srv.run, "labels": len(srv.schema)}


async def model(request: Request) -> dict[str, Any]:
    request.state.audit["endpoint"] = "GET /v1/model"
    key = authorize(request, "model")
    srv = state_of(request)
    # evaluation counts on the run's own validation / test splits were computed without DP (supports and
    # recalls as small as one patient): only admin keys see them; the other roles get what the ledger covers
    return srv.model_info if key.role == "admin" else srv.public_info


async def prometheus(request: Request) -> PlainTextResponse:
    request.state.audit["endpoint"] = "GET /metrics"
    authorize(request, "metrics")
    srv = state_of(request)
    return PlainTextResponse(
        srv.metrics.render(srv.batcher), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


async def classify(request: Request) -> JSONResponse:
    info = request.state.audit
    info["endpoint"] = "POST /v1/classify"
    key = authorize(request, "classify")
    srv = state_of(request)
    req = await classify_request(request)
    spend = await charge(srv, key, len(req.reports))
    reports = [
        Report(id=r.id if r.id is not None else str(i), patient_id=r.id or str(i), text=r.text)
        for i, r in enumerate(req.reports)
    ]
    probs = await score(srv, key, reports)  # (n, L)
    decisions = probs >= srv.thresholds[None, :]  # (n, L)
    positive = [tuple(srv.label_names[row].tolist()) for row in decisions]
    info["labels"] = positive
    srv.metrics.reports_scored[key.id] += len(reports)
    if srv.live is not None:
        srv.live.add([r.text for r in req.reports], probs)
        if srv.live.unwritten >= srv.record_every:
            await anyio.to_thread.run_sync(srv.live.write)
    return JSONResponse(_classified(srv, reports, probs, decisions, positive, spend))


def _classified(
    srv: ServeState,
    reports: list[Report],
    probs: np.ndarray,
    decisions: np.ndarray,
    positive: list[tuple[str, ...]],
    spend: Spend,
) -> dict[str, Any]:
    """The answer to a classify request (see ``CLASSIFY_SCHEMA``)."""
    labels = srv.schema.labels
    return {
        "run": srv.run,
        "labels": list(labels),
        "threshold_rule": srv.rule,
        "results": [
            {
                "id": rep.id,
                "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, row, strict=True)},
                "decisions": {lab: bool(d) for lab, d in zip(labels, dec, strict=True)},
                "positive": list(pos),
            }
            for rep, row, dec, pos in zip(reports, probs, decisions, positive, strict=True)
        ],
        "budget": spend.to_dict(),
    }
