"""The audit log: one JSON line per request, never the report text.

Each line holds the time, the key id, the endpoint, the HTTP status, the number of reports, a keyed hash
(HMAC-SHA-256 under a server secret) of each report's text, the id of that secret, the labels returned, and
the latency. A governance board holding the secret can check whether a given report was sent
(:func:`was_sent`); without it the hashes cannot be reversed by hashing common phrasings, as a plain
SHA-256 of a short report could. The secret is generated on first start into the server's state folder
(``audit.secret``, mode 0600) or given by the user; each line records ``hmac_key_id`` (the first 16 hex
characters of the secret's SHA-256), so lines written before a rotation stay checkable with the old secret.

Lines are appended and fsynced before the response is complete; when the current file passes
``max_bytes`` it is renamed with a timestamp and a new one is started. Old files are never rewritten or
deleted by dprad.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dprad.errors import DpradError

CURRENT = "audit.jsonl"
PATTERN = "audit*.jsonl"
SECRET_FILE = "audit.secret"  # in the state folder, beside (not inside) the audit folder
SECRET_BYTES = 32  # generated secrets
MIN_SECRET_BYTES = 16  # given secrets


# ---------------------------------------------------------------- the secret behind the keyed hashes


@dataclass(frozen=True)
class AuditKey:
    """A secret for HMAC-SHA-256 of report texts; ``key_id`` names it in each audit line."""

    secret: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.secret).hexdigest()[:16]

    def digest(self, text: str) -> str:
        return hmac.new(self.secret, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def digests(self, texts: Sequence[str]) -> tuple[str, ...]:
        return tuple(self.digest(t) for t in texts)


def read_secret(path: str | Path) -> AuditKey:
    """The secret in ``path``: refused when group or others may open it, or when it is under 16 bytes."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DpradError(f"{path}: no such audit secret file") from None
    if not stat.S_ISREG(st.st_mode):
        raise DpradError(f"{path}: the audit secret is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if os.name == "posix" and mode & 0o077:
        raise DpradError(
            f"{path}: the audit secret is open to group or others (mode {mode:04o}); run: chmod 600 {path}"
        )
    secret = path.read_bytes()
    if len(secret) < MIN_SECRET_BYTES:
        raise DpradError(
            f"{path}: the audit secret has {len(secret)} bytes; it needs at least {MIN_SECRET_BYTES}"
        )
    return AuditKey(secret)


def ensure_secret(state_dir: str | Path) -> Path:
    """``state_dir/audit.secret``: created on first call with 32 random bytes, mode 0600; kept after that.

    The bytes go to a temporary file created with O_EXCL and mode 0600 (never readable by others, not even
    for a moment), fsynced, then hard-linked to the final name: the link fails if another process got there
    first, so the secret appears whole or not at all, and is never replaced.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / SECRET_FILE
    if path.exists():
        return path
    tmp = state_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    _write_new(tmp, secrets.token_bytes(SECRET_BYTES))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another server on this state folder made it first: use theirs
    finally:
        tmp.unlink()
    _fsync_dir(state_dir)
    return path


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def server_key(state_dir: str | Path, secret_file: str | Path | None = None) -> tuple[AuditKey, Path]:
    """The key a server hashes with, and its file: the user's ``secret_file``, or the state folder's."""
    path = Path(secret_file) if secret_file is not None else ensure_secret(state_dir)
    return read_secret(path), path


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class AuditRecord:
    time: str
    key_id: str | None
    endpoint: str
    status: int
    latency_ms: float
    n_reports: int = 0
    report_hmac: tuple[str, ...] = ()  # HMAC-SHA-256 (hex) of each report text, under the server's secret
    hmac_key_id: str | None = None  # which secret: AuditKey.key_id
    labels: tuple[tuple[str, ...], ...] = ()  # per report: the labels decided positive
    error: str | None = None  # our own message (never echoes the request body)
    client: str | None = None  # the peer address

    def to_json(self) -> str:
        d = asdict(self)
        d["report_hmac"] = list(self.report_hmac)
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
        _fsync_dir(self.directory)  # the rename itself survives a crash


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


# ---------------------------------------------------------------- checking whether a text was sent


@dataclass(frozen=True)
class WasSent:
    """The lines holding a text's keyed hash, and the lines the given secrets could not check."""

    matches: tuple[dict[str, Any], ...]  # time, key_id, endpoint, status, hmac_key_id of each matching line
    checked: int  # lines with report hashes under one of the given secrets
    other_keys: dict[str, int]  # hmac_key_id -> lines with report hashes under a secret not given
    unkeyed: int  # lines with report hashes but no keyed hash (written before keyed hashes)

    @property
    def found(self) -> bool:
        return bool(self.matches)

    @property
    def unchecked(self) -> int:
        return sum(self.other_keys.values()) + self.unkeyed

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "matches": list(self.matches),
            "checked_lines": self.checked,
            "other_key_lines": dict(self.other_keys),
            "unkeyed_lines": self.unkeyed,
        }


MATCH_FIELDS = ("time", "key_id", "endpoint", "status", "hmac_key_id")


def was_sent(log_dir: str | Path, text: str, keys: Iterable[AuditKey]) -> WasSent:
    """Every line of ``log_dir`` whose report hashes include ``text`` under one of ``keys``."""
    wanted = {k.key_id: k.digest(text) for k in keys}
    if not wanted:
        raise DpradError("give at least one audit secret to check the log with")
    matches: list[dict[str, Any]] = []
    other: dict[str, int] = {}
    checked = unkeyed = 0
    for rec in read_records(log_dir):
        digests = rec.get("report_hmac") or []
        kid = rec.get("hmac_key_id")
        if not digests:
            unkeyed += bool(rec.get("report_sha256"))
            continue
        if kid not in wanted:
            other[str(kid)] = other.get(str(kid), 0) + 1
            continue
        checked += 1
        if wanted[kid] in digests:
            matches.append({f: rec.get(f) for f in MATCH_FIELDS})
    return WasSent(tuple(matches), checked, other, unkeyed)
