"""The three synthetic hospitals, prepared once per session with a tiny random-init encoder; and no
federation process (server, client, SuperNode, ClientApp) outlives its test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fedprocs import kill_all

from federated import prepare, write_sites


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("federate")
    data = write_sites(root)
    sites = {s: prepare(p, root / "pristine" / s, name=s, model=tiny_bert) for s, p in data.items()}
    sites["data"] = root
    return sites


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    """Whatever happens in a test, none of the servers or clients it started (with their process groups)
    outlives it."""
    yield
    kill_all()
