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


@pytest.fixture(scope="session")
def old_runs_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fixtures/run-before-19 (its README): two private runs written by dprad before secret noise, with
    what the repository does not hold rebuilt beside them: the tiny encoder (seed 0), the synthetic corpus,
    and the weights, retrained from each run's own config.json with the pre-fix generators
    (``legacy_noise.LegacySource``); the retrained metrics.json must equal the committed one, which shows the
    weights are the ones the old code trained."""
    import json
    import shutil

    from dprad import CHEXPERT14, SynthConfig, generate_reports
    from dprad.config import RunConfig
    from dprad.data.table import reports_frame, write_table
    from dprad.run.files import as_run_config
    from dprad.stages.train import train
    from legacy_noise import LegacySource
    from tiny import make_tiny_encoder

    here = tmp_path_factory.mktemp("old") / "run-before-19"
    shutil.copytree(OLD_RUNS, here)
    make_tiny_encoder(here / "encoder", "bert")
    write_table(
        reports_frame(generate_reports(SynthConfig(n_patients=120, seed=3)), CHEXPERT14), here / "reports.csv"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(here)  # the runs name their data and encoder relative to where they were trained
        for name in ("dp-head", "dp-lora"):
            run = here / "runs" / name
            cfg = RunConfig.from_dict(as_run_config(json.loads((run / "config.json").read_text())))
            again = train(cfg, here / "retrained" / name, noise=LegacySource.of(cfg.train.seed))
            assert again.metrics == json.loads((run / "metrics.json").read_text()), name
            shutil.copytree(again.run_dir / "model", run / "model")
    shutil.rmtree(here / "retrained")
    return here


@pytest.fixture
def old_run(old_runs_built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The private head of the rebuilt pre-fix runs (``old_runs_built``), copied with its sibling dp-lora run to
    a fresh folder, and the working folder set there (the runs name their data and encoder relative to
    where they were trained). Its noise was seeded from config.json's train.seed; its ledger names the base
    model by the absolute path it had (/tmp/fixgen/encoder) and quotes the validation split's size."""
    import shutil

    here = tmp_path / "run-before-19"
    shutil.copytree(old_runs_built, here)
    monkeypatch.chdir(here)
    return here / "runs" / "dp-head"
