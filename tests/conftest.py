from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IU_CSV = SHARED_DATA / "iu-xray" / "indiana_reports.csv"
CT_MANUAL_CSV = SHARED_DATA / "ct-rate-manual" / "train.csv"
OLD_RUNS = Path(__file__).resolve().parent / "fixtures" / "run-before-19"


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


@pytest.fixture
def old_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The private head of tests/fixtures/run-before-19 (its README): written by dprad before secret noise,
    so its noise was seeded from config.json's train.seed; its ledger names the base model by the absolute
    path it had (/tmp/fixgen/encoder) and quotes the validation split's size. Copied with its sibling
    dp-lora run, its encoder and corpus rebuilt beside it, and the working folder set there (the runs name
    their data and encoder relative to where they were trained)."""
    import shutil

    from dprad import CHEXPERT14, SynthConfig, generate_reports
    from dprad.data.table import reports_frame, write_table
    from tiny import make_tiny_encoder

    here = tmp_path / "run-before-19"
    shutil.copytree(OLD_RUNS, here)
    make_tiny_encoder(here / "encoder", "bert")
    write_table(
        reports_frame(generate_reports(SynthConfig(n_patients=120, seed=3)), CHEXPERT14), here / "reports.csv"
    )
    monkeypatch.chdir(here)
    return here / "runs" / "dp-head"
