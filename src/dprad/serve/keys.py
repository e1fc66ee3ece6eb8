"""API keys from a YAML file: who may call the server, in which role, with which budget and rate.

The file lists keys as ``id``, either ``key`` (the secret, hashed with SHA-256 as soon as it is read and
never kept) or ``key_sha256`` (the hex digest, so the file itself need not hold a secret), a ``role``,
optional ``budget_per_day`` / ``budget_total`` (reports) and ``rate_per_minute`` (requests)::

    keys:
      - id: radiology-ward
        key_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        role: client
        budget_per_day: 5000
        budget_total: 1000000
        rate_per_minute: 600
      - id: prometheus
        key: a-long-random-string
        role: monitor
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dprad.errors import DpradError

# role -> endpoints it may call (besides /healthz, which needs no key)
ROLES: dict[str, frozenset[str]] = {
    "client": frozenset({"classify", "model"}),
    "monitor": frozenset({"model", "metrics"}),
    "admin": frozenset({"classify", "model", "metrics"}),
}
FIELDS = ("id", "key", "key_sha256", "role", "budget_per_day", "budget_total", "rate_per_minute")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    key_sha256: str
    role: str
    budget_per_day: int | None = None  # reports per UTC day; None: unlimited
    budget_total: int | None = None  # reports over the key's lifetime; None: unlimited
    rate_per_minute: int | None = None  # requests per minute; None: unlimited

    def may(self, endpoint: str) -> bool:
        return endpoint in ROLES[self.role]


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[ApiKey, ...]

    def authenticate(self, raw: str | None) -> ApiKey | None:
        """The key whose hash matches ``raw`` (constant-time comparison), or None."""
        if not raw:
            return None
        digest = hash_key(raw)
        found = None
        for k in self.keys:  # compare against every key: the time taken does not depend on which matched
            if hmac.compare_digest(k.key_sha256, digest):
                found = k
        return found


def load_keys(path: str | Path) -> KeyRing:
    """Read and check the key file; every problem is one line naming the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise DpradError(f"{path}: no such key file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DpradError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    entries = doc.get("keys") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        raise DpradError(f"{path}: expected a non-empty list under 'keys'")
    keys: list[ApiKey] = []
    for i, entry in enumerate(entries, start=1):
        keys.append(_parse_entry(entry, where=f"{path}: key {i}"))
    ids = [k.id for k in keys]
    dup_ids = sorted({x for x in ids if ids.count(x) > 1})
    if dup_ids:
        raise DpradError(f"{path}: key id '{dup_ids[0]}' is listed twice")
    hashes = [k.key_sha256 for k in keys]
    if len(set(hashes)) != len(hashes):
        raise DpradError(f"{path}: two entries have the same key")
    return KeyRing(tuple(keys))


def _parse_entry(entry: Any, *, where: str) -> ApiKey:
    if not isinstance(entry, dict):
        raise DpradError(f"{where}: each key must be a mapping with id, key or key_sha256, role")
    unknown = sorted(set(map(str, entry)) - set(FIELDS))
    if unknown:
        raise DpradError(f"{where}: unknown field '{unknown[0]}' (fields are: {', '.join(FIELDS)})")
    kid = entry.get("id")
    if not isinstance(kid, str) or not _ID.match(kid):
        raise DpradError(f"{where}: 'id' must be 1-64 characters of letters, digits and _.:@-")
    where = f"{where} ('{kid}')"
    raw, digest = entry.get("key"), entry.get("key_sha256")
    if (raw is None) == (digest is None):
        raise DpradError(f"{where}: give exactly one of 'key' and 'key_sha256'")
    if raw is not None:
        if not isinstance(raw, str) or len(raw) < 16:
            raise DpradError(f"{where}: 'key' must be a string of at least 16 characters")
        digest = hash_key(raw)
    elif not isinstance(digest, str) or not _HEX64.match(digest.lower()):
        raise DpradError(f"{where}: 'key_sha256' must be 64 hex digits (sha256 of the key)")
    role = entry.get("role", "client")
    if role not in ROLES:
        raise DpradError(f"{where}: role '{role}' is not one of: {', '.join(ROLES)}")
    return ApiKey(
        id=kid,
        key_sha256=str(digest).lower(),
        role=str(role),
        budget_per_day=_limit(entry, "budget_per_day", where),
        budget_total=_limit(entry, "budget_total", where),
        rate_per_minute=_limit(entry, "rate_per_minute", where),
    )


def _limit(entry: dict[str, Any], name: str, where: str) -> int | None:
    v = entry.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise DpradError(f"{where}: '{name}' must be a whole number >= 0 (or left out for no limit)")
    return v
