"""Public priors as inputs, DP thresholds inside the ledger's epsilon, and their honest bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.modes import load_run
from dprad.privacy import compute_epsilon, epsilon_of, event_from_dict
from dprad.stages.train import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=240, seed=21)), CHEXPERT14), path)
    return path


def cfg(corpus: Path, model: Path, **privacy: object) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(corpus)),
        model=ModelConfig(name=str(model), max_length=48),
        privacy=PrivacyConfig(**privacy),  # type: ignore[arg-type]
        train=TrainConfig(mode="head", epochs=4.0, batch_size=64),
    )


def test_dp_thresholds_are_inside_the_ledger_total(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    run = train(cfg(corpus, tiny_bert, epsilon=2.0), tmp_path / "r").run_dir
    led = json.loads((run / "privacy.json").read_text())
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["privacy"]["thresholds"] == "dp" and metrics["thresholds"]["fitted_on"] == "val (DP)"
    # recompute every part from the ledger's own numbers
    train_part, th_part = led["parts"]
    train_eps = compute_epsilon(
        noise_multiplier=led["noise_multiplier"],
        sample_rate=led["sample_rate"],
        steps=led["steps"],
        delta=led["delta"],
    ).epsilon
    assert train_part["epsilon"] == pytest.approx(train_eps, rel=1e-9)
    import dp_accounting

    th_eps = epsilon_of(dp_accounting.GaussianDpEvent(th_part["noise_multiplier"]), delta=led["delta"])
    assert th_part["epsilon"] == pytest.approx(th_eps, rel=1e-9)
    total = epsilon_of(event_from_dict(led["event"]), delta=led["delta"])
    assert led["epsilon"] == pytest.approx(total, rel=1e-9)
    # the total, not the training part, is what the target bounds; both parts cost something
    assert max(train_eps, th_eps) < led["epsilon"] <= 2.0 and led["epsilon"] >= 0.99 * 2.0
    assert "validation" not in " ".join(led["not_protected"])
    assert "thresholds" in led["statement"] and "included in epsilon" in led["statement"]


def test_non_private_validation_thresholds_are_an_opt_in_the_ledger_flags(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    run = train(cfg(corpus, tiny_bert, epsilon=2.0, thresholds="val"), tmp_path / "r").run_dir
    led = json.loads((run / "privacy.json").read_text())
    assert [p["part"] for p in led["parts"]] == ["training (DP-SGD)"]
    assert any("WITHOUT DP" in x for x in led["not_protected"]) and "WITHOUT DP" in led["statement"]
    assert json.loads((run / "metrics.json").read_text())["thresholds"]["fitted_on"] == "val (NOT private)"


def test_the_rule_prior_is_on_by_default_recorded_and_used_after_reloading(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    res = train(cfg(corpus, tiny_bert, epsilon=2.0), tmp_path / "r")
    config = json.loads((res.run_dir / "config.json").read_text())
    assert config["train"]["rule_prior"] is True and config["train"]["public_warm_start"] is True
    notes = json.loads((res.run_dir / "notes.json").read_text())
    assert any("rule prior" in n for n in notes)
    # the reloaded model reads the rules too: its test predictions reproduce the training-time metrics
    test_ids = set(json.loads((res.run_dir / "splits.json").read_text())["test"])
    reports = [r for r in generate_reports(SynthConfig(n_patients=240, seed=21)) if r.id in test_ids]
    probs = load_run(res.run_dir).predict(reports).probs
    from dprad.data.reports import label_matrix
    from dprad.metrics.scores import summary

    y, m = label_matrix(reports, CHEXPERT14)
    assert summary(y, probs, mask=m)["weighted_f1"] == pytest.approx(
        res.metrics["test"]["threshold_0.5"]["weighted_f1"], abs=1e-9
    )
    off = train(
        cfg(corpus, tiny_bert, epsilon=2.0).with_(
            train=TrainConfig(mode="head", epochs=4.0, batch_size=64, rule_prior=False)
        ),
        tmp_path / "off",
    )
    assert json.loads((off.run_dir / "config.json").read_text())["train"]["rule_prior"] is False
    w_on = np.asarray(res.ledger.trainable_parameters)
    assert off.ledger.trainable_parameters < int(w_on)  # the prior adds 4L inputs per label


def test_noise_multiplier_runs_also_account_their_thresholds(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    led = train(cfg(corpus, tiny_bert, noise_multiplier=3.0), tmp_path / "r").ledger
    assert len(led.parts) == 2 and led.epsilon is not None
    assert led.epsilon > led.parts[0]["epsilon"] and led.parts[1]["epsilon"] > 0
