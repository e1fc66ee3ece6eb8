"""The audit log: one JSON line per request, never the report text.

Each line holds the time, the key id, the endpoint, the HTTP status, the number of reports, the SHA-256 of
each report's text (so a governance board can check whether a given report was sent, without the log
holding it), the labels returned, and the latency. Lines are appended and fsynced before the response is
complete; when the current file passes ``max_bytes`` it is renamed with a timestamp and a new one is
started. Old files are never rewritten or deleted by dprad.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dprad.errors import DpradError

CURRENT = "audit.jsonl"
PATTERN = "audit*.jsonl"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    time: str
    key_id: str | None
    endpoint: str
    status: int
    latency_ms: float
    n_reports: int = 0
    report_sha256: tuple[str, ...] = ()
    labels: tuple[tuple[str, ...], ...] = ()  # per report: the labels decided positive
    error: str | None = None  # our own message (never echoes the request body)
    client: str | None = None  # the peer address

    def to_json(self) -> str:
        d = asdict(self)
        d["report_sha256"] = list(self.report_sha256)
        d["labels"] = [list(x) for x in self.labels]
        return json.dumps(d, separators=(",", ":"))


@dataclass
class AuditLog:
    """Append-only JSONL with fsync and rotation by size. Safe to call from many threads."""

    directory: Path
    max_bytes: int = 50_000_000
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def current(self) -> Path:
        return self.directory / CURRENT

    def write(self, record: AuditRecord) -> None:
        line = (record.to_json() + "\n").encode("utf-8")
        with self._lock:
            path = self.current
            if path.exists() and path.stat().st_size + len(line) > self.max_bytes and path.stat().st_size > 0:
                self._rotate(path)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _rotate(self, path: Path) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.directory / f"audit-{stamp}.jsonl"
        i = 1
        while target.exists():
            target = self.directory / f"audit-{stamp}-{i}.jsonl"
            i += 1
        os.replace(path, target)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_records(log_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Every line of every audit file in ``log_dir``, oldest file first (rotated files, then the current)."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise DpradError(f"{log_dir}: no such audit-log folder")
    files = sorted(p for p in log_dir.glob(PATTERN) if p.name != CURRENT)
    if (log_dir / CURRENT).exists():
        files.append(log_dir / CURRENT)
    if not files:
        raise DpradError(f"{log_dir}: no audit*.jsonl file in this folder")
    for path in files:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    raise DpradError(f"{path}: line {lineno}: not valid JSON") from None


SUMMARY_COLUMNS = (
    "key_id",
    "requests",
    "ok",
    "refused_budget",
    "refused_other",
    "errors",
    "reports_scored",
    "latency_p50_ms",
    "latency_p99_ms",
    "first",
    "last",
)


def summarize(log_dir: str | Path) -> pd.DataFrame:
    """Usage per key: requests, outcomes, reports scored, latency, first and last request."""
    rows: dict[str, dict[str, Any]] = {}
    lat: dict[str, list[float]] = {}
    for rec in read_records(log_dir):
        kid = rec.get("key_id") or "(no key)"
        row = rows.setdefault(
            kid,
            {c: 0 for c in SUMMARY_COLUMNS}
            | {"key_id": kid, "first": rec.get("time"), "last": rec.get("time")},
        )
        status = int(rec.get("status", 0))
        row["requests"] += 1
        if 200 <= status < 300:
            row["ok"] += 1
            if str(rec.get("endpoint", "")).endswith("/v1/classify"):
                row["reports_scored"] += int(rec.get("n_reports", 0))
        elif status == 429:
            row["refused_budget"] += 1
        elif 400 <= status < 500:
            row["refused_other"] += 1
        else:
            row["errors"] += 1
        row["last"] = rec.get("time")
        lat.setdefault(kid, []).append(float(rec.get("latency_ms", float("nan"))))
    for kid, row in rows.items():
        values = np.asarray(lat[kid], dtype=float)
        row["latency_p50_ms"] = round(float(np.nanquantile(values, 0.5)), 2)
        row["latency_p99_ms"] = round(float(np.nanquantile(values, 0.99)), 2)
    return pd.DataFrame([rows[k] for k in sorted(rows)], columns=list(SUMMARY_COLUMNS))


def hashes(texts: Sequence[str]) -> tuple[str, ...]:
    return tuple(text_sha256(t) for t in texts)
