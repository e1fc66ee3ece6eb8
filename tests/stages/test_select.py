"""Non-private fine-tuning ships the epoch with the lowest validation loss; epoch 0 is LP-FT's probe."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.reports import label_matrix
from dprad.data.table import reports_frame, write_table
from dprad.errors import DpradError
from dprad.metrics.scores import report_log_loss
from dprad.modes import load_run
from dprad.run import RunRecord
from dprad.stages.fit import StepInfo
from dprad.stages.plan import plan_run
from dprad.stages.select import PATIENCE
from dprad.stages.train import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("select") / "synth.csv"
    reports = generate_reports(SynthConfig(n_patients=200, seed=5))
    write_table(reports_frame(reports, CHEXPERT14), path)
    return path


def config(data: Path, model: Path, *, lr: float, epsilon: float | None = None, **train: object) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(model), max_length=64),
        privacy=PrivacyConfig(epsilon=epsilon),
        train=TrainConfig(mode="lora", epochs=3.0, batch_size=32, lr=lr, **train),  # type: ignore[arg-type]
    )


def val_loss(run: Path) -> float:
    """The shipped model's validation loss, recomputed from the saved run."""
    reports, schema = RunRecord.open(run).split_reports("val")
    y, m = label_matrix(reports, schema)
    return report_log_loss(y, load_run(run).predict(reports).probs, mask=m)


def test_the_shipped_model_is_the_epoch_with_the_lowest_validation_loss(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    res = train(config(corpus, tiny_bert, lr=3e-3), tmp_path / "run")
    assert RunRecord.open(res.run_dir).config.train.select_epoch is True  # on when not private
    history = json.loads((tmp_path / "run" / "history.json").read_text())["val_loss_per_epoch"]
    assert history[0]["step"] == 0 and len(history) >= 3  # the probe, then at least PATIENCE epochs
    assert res.ledger.steps == history[-1]["step"]  # the steps taken, whether or not it stopped early
    best = min(history, key=lambda h: h["val_loss"])
    assert val_loss(tmp_path / "run") == pytest.approx(best["val_loss"], rel=1e-4)
    notes = json.loads((tmp_path / "run" / "notes.json").read_text())
    assert any(n.startswith("epoch selection (not private)") for n in notes)


def test_a_fine_tuning_that_hurts_ships_the_probe(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    """A learning rate that wrecks the model: every epoch is worse on validation than the probe, so the run
    stops after PATIENCE epochs and ships the probe; without selection it trains on and ships the wreck."""
    kept = train(config(corpus, tiny_bert, lr=1.0), tmp_path / "kept")
    history = json.loads((tmp_path / "kept" / "history.json").read_text())["val_loss_per_epoch"]
    assert min(history, key=lambda h: h["val_loss"])["step"] == 0
    assert len(history) == 1 + PATIENCE and all(h["val_loss"] > history[0]["val_loss"] for h in history[1:])
    notes = json.loads((tmp_path / "kept" / "notes.json").read_text())
    assert any("LP-FT's probe" in n for n in notes)
    assert not any(n.startswith("LP-FT on ") for n in notes)  # the size note is for private runs
    planned = plan_run(config(corpus, tiny_bert, lr=1.0)).steps
    assert any(n.startswith("early stop (not private)") and f"of {planned} planned" in n for n in notes)
    assert kept.ledger.steps == history[-1]["step"] < planned
    assert len(json.loads((tmp_path / "kept" / "history.json").read_text())["step_loss"]) == kept.ledger.steps
    assert val_loss(tmp_path / "kept") == pytest.approx(history[0]["val_loss"], rel=1e-4)
    last = train(config(corpus, tiny_bert, lr=1.0, select_epoch=False), tmp_path / "last")
    assert "val_loss_per_epoch" not in json.loads((tmp_path / "last" / "history.json").read_text())
    assert last.ledger.steps == planned
    assert val_loss(tmp_path / "last") > val_loss(tmp_path / "kept")
    assert (
        kept.metrics["val"]["threshold_val"]["weighted_f1"]
        >= last.metrics["val"]["threshold_val"]["weighted_f1"]
    )
    # the probe it ships is the `--mode head` run at the same seed (a non-private probe takes the run's
    # seed) on the same torch features (LP-FT's encoder is torch): the same head weights bit for bit, and
    # the same test metrics
    plain = config(corpus, tiny_bert, lr=1.0)
    head = train(
        plain.with_(train=TrainConfig(mode="head"), model=replace(plain.model, encoder_runtime="torch")),
        tmp_path / "head",
    )
    wk, wh = (
        torch.load(tmp_path / "kept" / "model" / "head.pt"),
        torch.load(tmp_path / "head" / "model" / "head.pt"),
    )
    assert all(
        torch.equal(wk[k], wh[f"head.{k}"]) for k in ("weight", "bias")
    )  # the head run's adds its centre
    for split in ("val", "test"):
        for key in ("threshold_val", "threshold_0.5"):
            got, want = kept.metrics[split][key], head.metrics[split][key]
            assert got["weighted_f1"] == pytest.approx(want["weighted_f1"], abs=1e-6), (split, key)


def test_a_resumed_run_selects_over_every_epoch(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    c = config(corpus, tiny_bert, lr=1.0)
    c = c.with_(train=replace(c.train, checkpoint_every=1))
    whole = train(c, tmp_path / "whole")

    def crash(info: StepInfo) -> None:
        if info.epoch > 1.5:  # after epoch 1's validation, before the end
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(c, tmp_path / "resumed", on_step=crash)
    resumed = train(c, tmp_path / "resumed")
    ha = json.loads((tmp_path / "whole" / "history.json").read_text())["val_loss_per_epoch"]
    hb = json.loads((tmp_path / "resumed" / "history.json").read_text())["val_loss_per_epoch"]
    assert [h["step"] for h in ha] == [h["step"] for h in hb]
    assert [h["val_loss"] for h in hb] == pytest.approx([h["val_loss"] for h in ha], rel=1e-4)
    wa = torch.load(tmp_path / "whole" / "model" / "head.pt")
    wb = torch.load(tmp_path / "resumed" / "model" / "head.pt")
    for k in wa:  # the probe (epoch 0), restored from the checkpoint's selection state
        torch.testing.assert_close(wa[k], wb[k])
    assert whole.metrics["val"] == resumed.metrics["val"]


def test_private_runs_never_select(corpus: Path, tiny_bert: Path) -> None:
    plan = plan_run(config(corpus, tiny_bert, lr=1e-3, epsilon=4.0))
    assert plan.cfg.train.select_epoch is False
    with pytest.raises(DpradError, match=r"--select-epoch .* does not account"):
        plan_run(config(corpus, tiny_bert, lr=1e-3, epsilon=4.0, select_epoch=True))
    with pytest.raises(DpradError, match="--select-epoch is for --mode lora or full"):
        plan_run(config(corpus, tiny_bert, lr=1e-3).with_(train=TrainConfig(mode="head", select_epoch=True)))
