"""The LLM teacher: any OpenAI-compatible chat server that runs on premises (vLLM, llama.cpp, Ollama).

Reports are protected health information, so the teacher refuses any endpoint that is not loopback
(127.0.0.0/8, ::1, ``localhost``) or a host the user allow-listed. It asks for the schema's labels as JSON
(structured output where the server supports it), validates the answer strictly, retries malformed
answers, server errors and time-outs with exponential backoff, caches answers on disk keyed by report
hash + model + prompt version, and reports every failure instead of dropping it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dprad import io
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema
from dprad.errors import DpradError

PROMPT_VERSION = "dprad-llm-v1"


@dataclass(frozen=True)
class LLMConfig:
    url: str  # base URL of the OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1
    model: str
    allow_hosts: tuple[str, ...] = ()
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 0.5
    concurrency: int = 4
    cache_dir: str | None = None
    structured: bool = True
    api_key: str | None = None


@dataclass
class LLMSummary:
    requested: int = 0
    cached: int = 0
    answered: int = 0
    retries: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # report id -> last error
    structured_output: bool = True

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


def response_schema(schema: LabelSchema) -> dict[str, Any]:
    value = {"enum": [1, 0, -1, None]}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "labels",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": dict.fromkeys(schema.labels, value),
                "required": list(schema.labels),
                "additionalProperties": False,
            },
        },
    }


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


class LLMTeacher:
    def __init__(self, config: LLMConfig, schema: LabelSchema) -> None:
        check_endpoint(config.url, config.allow_hosts)
        self.config, self.schema = config, schema
        self.summary = LLMSummary(structured_output=config.structured)
        self._structured = config.structured

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
            self.summary.cached += 1
            return parse_answer(cache.read_text(), self.schema)
        self.summary.requested += 1
        last = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.summary.retries += 1
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            body: dict[str, Any] = {
                "model": self.config.model,
                "temperature": 0,
                "messages": [
                    {"role": "system", "content": system_prompt(self.schema)},
                    {"role": "user", "content": report.text},
                ],
            }
            if self._structured:
                body["response_format"] = response_schema(self.schema)
            try:
                reply = self._post(body)
                content = reply["choices"][0]["message"]["content"]
                labels = parse_answer(content, self.schema)
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
                if (
                    err.code == 400 and self._structured
                ):  # server without structured output: plain JSON prompt
                    self._structured = False
                    self.summary.structured_output = False
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
            self.summary.answered += 1
            return labels
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
