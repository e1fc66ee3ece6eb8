"""The LLM teacher: any OpenAI-compatible chat server that runs on premises (vLLM, llama.cpp, Ollama).

Reports are protected health information, so the teacher refuses any endpoint that is not loopback
(127.0.0.0/8, ::1, ``localhost``) or a host the user allow-listed. It asks for the schema's labels as JSON
(structured output where the server supports it), validates the answer strictly, retries malformed
answers, server errors and time-outs with exponential backoff, caches answers on disk keyed by report
hash + model + prompt version, and reports every failure instead of dropping it.

Servers take a JSON schema for the answer in different dialects (``STRUCTURED_FORMATS``): OpenAI's
``json_schema`` (vLLM, llama.cpp's ``llama-server``, Ollama's OpenAI API) and ``json_object`` with a
``schema`` field (llama-cpp-python's server, which refuses ``json_schema`` with HTTP 500). ``auto`` tries
them in that order and falls back to a plain prompt (strict parsing) when the server rejects both; the
dialect that worked is in the summary. ``tests/test_llm_server.py`` runs a real llama-cpp-python server.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlparse

from dprad import io
from dprad.config import setting
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema
from dprad.errors import DpradError

PROMPT_VERSION = "dprad-llm-v1"
StructuredFormat = Literal["json_schema", "json_object", "none"]  # the dialects, in the order auto tries them
Structured = Literal["auto", StructuredFormat]
STRUCTURED_FORMATS: tuple[StructuredFormat, ...] = get_args(StructuredFormat)
STRUCTURED: tuple[Structured, ...] = get_args(Structured)


@dataclass(frozen=True)
class LLMConfig:
    """The LLM teacher's settings; each field's help (``metadata["help"]``, :func:`dprad.config.setting`)
    is its ``dprad label --llm-*`` flag's."""

    url: str = field(metadata={"help": "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"})
    model: str = field(metadata={"help": "model name the server knows"})
    allow_hosts: tuple[str, ...] = setting((), "an on-premises host allowed besides loopback")
    timeout_s: float = setting(60.0, "seconds per request")
    max_retries: int = 3
    backoff_s: float = 0.5
    concurrency: int = 4
    cache_dir: str | None = setting(None, "answer cache folder")
    structured: Structured = setting(
        "auto",
        "how the server takes the answer's JSON schema: auto (json_schema, then json_object, then none), "
        "json_schema (vLLM, llama-server, Ollama), json_object (llama-cpp-python) or none",
    )
    api_key: str | None = None  # from the environment only (dispatch.API_KEY_ENV), never a flag
    # bounds an answer; a schema-constrained answer for 18 labels is about 200 tokens
    max_tokens: int = setting(512, "tokens per answer at most")

    def __post_init__(self) -> None:
        if self.structured not in STRUCTURED:
            raise DpradError(f"--llm-structured '{self.structured}' must be {', '.join(STRUCTURED)}")
        if self.max_tokens < 1:
            raise DpradError(f"--llm-max-tokens {self.max_tokens} must be at least 1")


@dataclass
class LLMSummary:
    requested: int = 0
    cached: int = 0
    answered: int = 0
    retries: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # report id -> last error
    structured_output: str = "json_schema"  # the dialect in use when labelling ended

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "cached": self.cached,
            "answered": self.answered,
            "retries": self.retries,
            "failed": len(self.failed),
            "failures": self.failed,
            "structured_output": self.structured_output,
            "prompt_version": PROMPT_VERSION,
        }


def check_endpoint(url: str, allow_hosts: Sequence[str] = ()) -> None:
    """Refuse endpoints off the premises: only loopback or an explicitly allow-listed host."""
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise DpradError(f"--llm-url '{url}' is not an http(s) URL")
    host = parsed.hostname
    if host in allow_hosts or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise DpradError(
        f"--llm-url '{url}': host '{host}' is not loopback and not allow-listed; reports are protected health "
        "information and must not leave the premises by accident (pass --llm-allow-host HOST for an on-premises server)"
    )


def system_prompt(schema: LabelSchema) -> str:
    labels = "\n".join(f"- {lab}" for lab in schema.labels)
    return (
        "You label radiology reports. For each finding below answer 1 if the report states it is present, "
        "0 if the report states it is absent, -1 if the report is uncertain about it (possible, cannot exclude, "
        "versus), and null if the report does not mention it. History alone is not a current finding.\n"
        f"Findings:\n{labels}\n"
        "Answer with one JSON object whose keys are exactly these finding names and whose values are 1, 0, -1 or null."
    )


def answer_schema(schema: LabelSchema) -> dict[str, Any]:
    """The JSON schema of an answer: every label, each 1, 0, -1 or null."""
    return {
        "type": "object",
        "properties": {lab: {"enum": [1, 0, -1, None]} for lab in schema.labels},
        "required": list(schema.labels),
        "additionalProperties": False,
    }


def response_format(schema: LabelSchema, dialect: str) -> dict[str, Any] | None:
    """The request's ``response_format`` in one of ``STRUCTURED_FORMATS`` (None: a plain prompt)."""
    if dialect == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": "labels", "strict": True, "schema": answer_schema(schema)},
        }
    if dialect == "json_object":
        return {"type": "json_object", "schema": answer_schema(schema)}
    return None


def parse_answer(content: str, schema: LabelSchema) -> dict[str, int]:
    """Strict: a JSON object, known keys only, values in {1, 0, -1, null}. Raises ValueError otherwise."""
    text = content.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    if fenced:
        text = fenced.group(1)
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError("the answer is not a JSON object")
    unknown = set(obj) - set(schema.labels)
    if unknown:
        raise ValueError(f"unknown label(s) {sorted(unknown)}")
    out: dict[str, int] = {}
    for k, v in obj.items():
        if v is None:
            continue
        if isinstance(v, bool) or v not in (1, 0, -1):
            raise ValueError(f"label '{k}' has value {v!r}, not 1, 0, -1 or null")
        out[k] = int(v)
    return out


def refuses_format(err: urllib.error.HTTPError) -> bool:
    """Whether an error is the server refusing ``response_format`` (and not, say, a report longer than the
    context). llama-cpp-python 0.3.36 answers an unknown ``type`` with HTTP 500 whose body names the field."""
    try:
        body = err.read(4096).decode("utf-8", "replace").lower()
    except OSError:
        return False
    return "response_format" in body or "json_schema" in body


class LLMTeacher:
    def __init__(self, config: LLMConfig, schema: LabelSchema) -> None:
        check_endpoint(config.url, config.allow_hosts)
        self.config, self.schema = config, schema
        first = STRUCTURED_FORMATS[0] if config.structured == "auto" else config.structured
        self.summary = LLMSummary(structured_output=first)
        self._lock = threading.Lock()

    def _reject(self, dialect: str) -> bool:
        """The server refused ``dialect``: move to the next one (auto only). False when none is left."""
        with self._lock:
            if self.summary.structured_output != dialect:
                return True  # another request already moved on
            if self.config.structured != "auto" or dialect == "none":
                return False
            self.summary.structured_output = STRUCTURED_FORMATS[STRUCTURED_FORMATS.index(dialect) + 1]
            return True

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.summary, what, getattr(self.summary, what) + 1)

    def _cache_path(self, text: str) -> Path | None:
        if not self.config.cache_dir:
            return None
        key = hashlib.sha256(
            "\x00".join([PROMPT_VERSION, self.config.model, self.schema.name, text]).encode()
        ).hexdigest()
        return Path(self.config.cache_dir) / key[:2] / f"{key}.json"

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        url = self.config.url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:
            result: dict[str, Any] = json.loads(resp.read().decode())
            return result

    def label_one(self, report: Report) -> dict[str, int] | None:
        cache = self._cache_path(report.text)
        if cache is not None and cache.exists():
            self._count("cached")
            return parse_answer(cache.read_text(), self.schema)
        self._count("requested")
        last = ""
        attempt = 0
        while attempt <= self.config.max_retries:
            if attempt:
                self._count("retries")
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            attempt += 1
            dialect = self.summary.structured_output
            body: dict[str, Any] = {
                "model": self.config.model,
                "temperature": 0,
                "max_tokens": self.config.max_tokens,
                "messages": [
                    {"role": "system", "content": system_prompt(self.schema)},
                    {"role": "user", "content": report.text},
                ],
            }
            fmt = response_format(self.schema, dialect)
            if fmt is not None:
                body["response_format"] = fmt
            try:
                reply = self._post(body)
                content = reply["choices"][0]["message"]["content"]
                labels = parse_answer(content, self.schema)
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
                if (
                    err.code in (400, 422, 500)
                    and fmt is not None
                    and refuses_format(err)
                    and self._reject(dialect)
                ):
                    attempt -= 1  # a refused dialect is not a failed attempt: ask again in the next one
                    continue
                if err.code < 500 and err.code != 429:
                    break
                continue
            except (urllib.error.URLError, TimeoutError, OSError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
                continue
            except (ValueError, KeyError, IndexError, TypeError) as err:
                last = f"malformed answer: {err}"
                continue
            if cache is not None:
                io.write_text(cache, json.dumps(labels))
            self._count("answered")
            return labels
        with self._lock:
            self.summary.failed[report.id] = last
        return None

    def label(
        self, reports: Sequence[Report], *, progress: Callable[[int], None] | None = None
    ) -> list[dict[str, int] | None]:
        out: list[dict[str, int] | None] = [None] * len(reports)
        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            futures = {pool.submit(self.label_one, r): i for i, r in enumerate(reports)}
            for done, fut in enumerate(futures, start=1):
                out[futures[fut]] = fut.result()
                if progress:
                    progress(done)
        return out
