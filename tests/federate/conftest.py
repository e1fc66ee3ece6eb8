"""The three synthetic hospitals, prepared once per session with a tiny random-init encoder."""

from __future__ import annotations

from pathlib import Path

import pytest

from federated import prepare, write_sites


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("federate")
    data = write_sites(root)
    sites = {s: prepare(p, root / "pristine" / s, name=s, model=tiny_bert) for s, p in data.items()}
    sites["data"] = root
    return sites
