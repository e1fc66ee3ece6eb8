from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IU_CSV = SHARED_DATA / "iu-xray" / "indiana_reports.csv"
CT_MANUAL_CSV = SHARED_DATA / "ct-rate-manual" / "train.csv"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real benchmark file {path} is absent (it lives in ../shared/data, which CI has)")
    return path


@pytest.fixture
def iu_csv() -> Path:
    return need(IU_CSV)


@pytest.fixture
def ct_manual_csv() -> Path:
    return need(CT_MANUAL_CSV)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("tiny") / "bert", "bert")


@pytest.fixture(scope="session")
def tiny_albert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("tiny") / "albert", "albert")
