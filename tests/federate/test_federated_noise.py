"""A curious federation server cannot regenerate a hospital's DP noise: it sees every message, update and
federation.json, and knows every flag and seed, yet a site prepared again from the same data and flags sends
another update; only a stated --noise-seed reproduces one, and the site's key never leaves its folder."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np

from dprad.federate.local import LocalTransport
from dprad.federate.server import FederationConfig, run_federation
from federated import prepare


def first_update(data: Path, out: Path, model: Path, *extra: str) -> dict[str, np.ndarray]:
    """Prepare hospital ``site_a`` at ``out`` and run one round beside ``site_b``; its round-1 update."""
    site_a = prepare(
        data / "site_a-cxr.csv", out / "site_a", name="site_a", model=model, rounds=1, extra=extra
    )
    site_b = prepare(
        data / "site_b-cxr.csv", out / "site_b", name="site_b", model=model, rounds=1, extra=extra
    )
    run_federation(FederationConfig(rounds=1, min_clients=2), LocalTransport([site_a, site_b]), out / "fed")
    with np.load(site_a / "updates" / "round-1.npz") as z:
        return {k: z[k] for k in z.files}


def test_a_curious_server_cannot_regenerate_a_sites_noise(
    prepared: dict[str, Path], tiny_bert: Path, tmp_path: Path
) -> None:
    data = prepared["data"]
    one = first_update(data, tmp_path / "one", tiny_bert)
    two = first_update(data, tmp_path / "two", tiny_bert)
    # same data, flags, seeds and global start: everything the server knows. Another update: the noise
    # is a function of nothing the server holds
    assert set(one) == set(two) and any(not np.array_equal(one[k], two[k]) for k in one)
    key_file = tmp_path / "one" / "site_a" / "noise.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    forms = (
        key,
        key.hex().encode(),
        str(int.from_bytes(key, "little")).encode(),
        str(int.from_bytes(key, "big")).encode(),
    )
    seen = [p for p in (tmp_path / "one").rglob("*") if p.is_file() and p.name != "noise.key"]
    assert any(p.name == "federation.json" for p in seen)
    for path in seen:  # what the server received and wrote, and the site's own shareable files
        blob = path.read_bytes()
        assert not any(f in blob for f in forms), path
    # a stated seed reproduces (tests, research), at the price the ledger states
    s1 = first_update(data, tmp_path / "s1", tiny_bert, "--noise-seed", "5")
    s2 = first_update(data, tmp_path / "s2", tiny_bert, "--noise-seed", "5")
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)
    assert not (tmp_path / "s1" / "site_a" / "noise.key").exists()
