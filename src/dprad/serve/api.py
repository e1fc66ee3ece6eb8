"""The API's contract: the server's limits, the request body's shape, refusals, and the OpenAPI pieces.

The handlers read their own bodies and raise :class:`ApiError`, so FastAPI cannot infer the request body or
the refusals: they are spelled out here, and the fuzz test (tests/test_serve_fuzz.py) holds the server to
them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictStr


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


# ---------------------------------------------------------------- the OpenAPI description

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


def refusals(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for refusals: status (as ``s401=...``) -> description, each a JSON error body."""
    return {
        int(status.lstrip("s")): {
            "description": text,
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for status, text in described.items()
    }


AUTH_REFUSALS = refusals(
    s401="missing or unknown API key", s403="the key's role may not call this endpoint", s429="rate limited"
)
CLASSIFY_REFUSALS = refusals(
    s400="the body is not valid JSON, or a text or id is not valid Unicode",
    s413="the body, a report or the number of reports is over the limit",
    s422="the body is not the documented shape, or a text is empty",
    s429="rate limited, or over the key's budget (the body says which, and what is left)",
    s500="the model failed to score the reports (nothing was charged)",
)


@functools.cache
def _python_whitespace() -> str:
    """Every character ``str.strip()`` removes (computed once: it scans all code points)."""
    return "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def classify_body_schema(limits: ServeLimits) -> dict[str, Any]:
    # a text must hold a character that str.strip() keeps (check_limits refuses it as empty otherwise). The
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


def classify_openapi(limits: ServeLimits) -> dict[str, Any]:
    """The keyword arguments that document ``POST /v1/classify``: its body, its answer and its refusals."""
    return {
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": classify_body_schema(limits)}},
            }
        },
        "responses": {200: {"content": {"application/json": {"schema": CLASSIFY_SCHEMA}}}}
        | AUTH_REFUSALS
        | CLASSIFY_REFUSALS,
    }
