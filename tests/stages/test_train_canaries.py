"""The one-run canary audit inside a training run: canaries enter between planning and fitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.stages.train import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=240, seed=31)), CHEXPERT14), path)
    return path


def test_canaries_train_are_audited_and_never_reach_the_metrics(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    cfg = RunConfig(
        data=DataConfig(path=str(corpus)),
        model=ModelConfig(name=str(tiny_bert), max_length=48),
        privacy=PrivacyConfig(epsilon=1.0, unit="report"),  # so that n counts reports, canaries included
        train=TrainConfig(mode="head", epochs=3.0, batch_size=64, audit_canaries=60),
    )
    res = train(cfg, tmp_path / "r")
    run = res.run_dir
    audit = json.loads((run / "audit.json").read_text())["canary"]
    splits = json.loads((run / "splits.json").read_text())
    in_train = [i for i in splits["train"] if i.startswith("canary-")]
    assert audit["m"] == 60 and audit["canaries"]["included"] == len(in_train) == res.ledger.canaries
    assert 10 < len(in_train) < 50  # each canary in with probability 1/2
    assert not [i for i in splits["val"] + splits["test"] if i.startswith("canary-")]
    assert res.ledger.dataset_size == len(splits["train"])  # n counts the canaries that trained
    # the audit's lower bound is a true statement about this run: it never exceeds the ledger's epsilon
    assert audit["ledger_epsilon"] == res.ledger.epsilon and audit["exceeds_ledger"] is False
    assert 0 <= audit["epsilon_lower_bound"] <= audit["ceiling"]
    assert len(audit["canary_losses"]["in"]) == len(in_train)
    # a run with the same config reproduces the same canaries (their draw is part of the config)
    again = train(cfg, tmp_path / "r2")
    assert json.loads((again.run_dir / "splits.json").read_text()) == splits
