"""Query budgets in SQLite (WAL mode): atomic check-and-spend under concurrency, kept across restarts.

Every spend is one ``BEGIN IMMEDIATE`` transaction that reads what the key has spent today and in total,
refuses if the request does not fit, and otherwise records it: SQLite lets one writer in at a time, so
concurrent requests (threads or processes sharing the file) can never spend the same report twice. Only
counts are stored, keyed by key id and UTC day: never a report, a text or a key.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dprad.serve.keys import ApiKey

SCHEMA = """
CREATE TABLE IF NOT EXISTS spend_day (
    key_id TEXT NOT NULL, day TEXT NOT NULL, reports INTEGER NOT NULL, PRIMARY KEY (key_id, day)
);
CREATE TABLE IF NOT EXISTS spend_total (key_id TEXT PRIMARY KEY, reports INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Spend:
    """The outcome of one check-and-spend."""

    ok: bool
    requested: int
    remaining_day: int | None  # after this spend (or unchanged when refused); None: no daily limit
    remaining_total: int | None
    reset_at: str | None  # when the daily budget resets (ISO 8601, UTC); None when it is the total
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "requested": self.requested,
            "remaining_day": self.remaining_day,
            "remaining_total": self.remaining_total,
            "reset_at": self.reset_at,
        }


def utc_day(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y-%m-%d")


def next_midnight(now: datetime) -> str:
    day = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day + timedelta(days=1)).isoformat().replace("+00:00", "Z")


class BudgetStore:
    """Per-key report budgets in one SQLite file. Thread-safe: one connection per thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        con = self._con()
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(SCHEMA)

    def _con(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            con.execute("PRAGMA synchronous=FULL")  # a spend that was answered survives a power cut
            con.execute("PRAGMA busy_timeout=30000")
            self._local.con = con
        return con

    def try_spend(self, key: ApiKey, n: int, *, now: datetime | None = None) -> Spend:
        """Spend ``n`` reports of ``key``'s budget if they fit, atomically; refuse the whole request if not."""
        now = now or datetime.now(timezone.utc)
        day = utc_day(now)
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            spent_day, spent_total = self._spent(con, key.id, day)
            left_day = None if key.budget_per_day is None else key.budget_per_day - spent_day
            left_total = None if key.budget_total is None else key.budget_total - spent_total
            if left_total is not None and n > left_total:
                con.execute("ROLLBACK")
                return Spend(False, n, left_day, left_total, None, "total budget exhausted")
            if left_day is not None and n > left_day:
                con.execute("ROLLBACK")
                return Spend(False, n, left_day, left_total, next_midnight(now), "daily budget exhausted")
            con.execute(
                "INSERT INTO spend_day (key_id, day, reports) VALUES (?, ?, ?) "
                "ON CONFLICT (key_id, day) DO UPDATE SET reports = reports + excluded.reports",
                (key.id, day, n),
            )
            con.execute(
                "INSERT INTO spend_total (key_id, reports) VALUES (?, ?) "
                "ON CONFLICT (key_id) DO UPDATE SET reports = reports + excluded.reports",
                (key.id, n),
            )
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return Spend(
            True,
            n,
            None if left_day is None else left_day - n,
            None if left_total is None else left_total - n,
            next_midnight(now) if key.budget_per_day is not None else None,
        )

    def refund(self, key: ApiKey, n: int, *, now: datetime | None = None) -> None:
        """Give back ``n`` reports spent today (the request that spent them failed on our side)."""
        day = utc_day(now or datetime.now(timezone.utc))
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "UPDATE spend_day SET reports = MAX(reports - ?, 0) WHERE key_id = ? AND day = ?",
            (n, key.id, day),
        )
        con.execute("UPDATE spend_total SET reports = MAX(reports - ?, 0) WHERE key_id = ?", (n, key.id))
        con.execute("COMMIT")

    def spent(self, key_id: str, *, now: datetime | None = None) -> tuple[int, int]:
        """(reports spent today, reports spent in total) by ``key_id``."""
        return self._spent(self._con(), key_id, utc_day(now or datetime.now(timezone.utc)))

    @staticmethod
    def _spent(con: sqlite3.Connection, key_id: str, day: str) -> tuple[int, int]:
        row = con.execute(
            "SELECT reports FROM spend_day WHERE key_id = ? AND day = ?", (key_id, day)
        ).fetchone()
        tot = con.execute("SELECT reports FROM spend_total WHERE key_id = ?", (key_id,)).fetchone()
        return (int(row[0]) if row else 0, int(tot[0]) if tot else 0)

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


class RateLimiter:
    """Requests per minute per key: a sliding one-minute window kept in memory (resets on restart)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: ApiKey) -> tuple[bool, float]:
        """(allowed, seconds until the next request would be allowed)."""
        if key.rate_per_minute is None:
            return True, 0.0
        now = self._clock()
        with self._lock:
            hits = self._hits.setdefault(key.id, deque())
            while hits and now - hits[0] >= 60.0:
                hits.popleft()
            if len(hits) >= key.rate_per_minute:
                return False, 60.0 - (now - hits[0]) if hits else 60.0
            hits.append(now)
            return True, 0.0
