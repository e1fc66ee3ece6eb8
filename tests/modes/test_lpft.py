"""LP-FT: a linear probe (the head mode), then fine-tuning from it, composed in one ledger."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.config import DataConfig, LoraConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.modes import get_mode, load_run
from dprad.modes.encoder import EncoderMode
from dprad.privacy import dpsgd_event, epsilon_of, event_from_dict
from dprad.privacy.noise import NoiseSource
from dprad.stages.plan import plan_run
from dprad.stages.train import fit_probe, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lpft") / "synth.csv"
    reports = generate_reports(SynthConfig(n_patients=220, seed=21, prevalence={"Pneumothorax": 0.08}))
    write_table(reports_frame(reports, CHEXPERT14), path)
    return path


def config(
    data: Path, model: Path, mode: str, *, epsilon: float | None, layers: int | None = None
) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(model), max_length=64),
        lora=LoraConfig(layers=layers),
        privacy=PrivacyConfig(epsilon=epsilon),
        train=TrainConfig(mode=mode, epochs=1.0, batch_size=64, lr=1e-3),
    )


@pytest.mark.parametrize(
    ("mode", "epsilon", "layers"),
    [("lora", 4.0, None), ("lora", None, None), ("lora", 4.0, 1), ("full", 4.0, None)],
    ids=["dp-lora", "lora", "dp-lora-top1", "dp-full"],
)
def test_phase_two_starts_at_the_probe(
    corpus: Path, tiny_bert: Path, mode: str, epsilon: float | None, layers: int | None
) -> None:
    """Before the first fine-tuning step (LoRA's B = 0, or the untouched encoder) the classifier computes
    exactly the trained probe's logits on every split."""
    plan = plan_run(config(corpus, tiny_bert, mode, epsilon=epsilon, layers=layers))
    assert plan.probe is not None and plan.probe.mode == "head" and plan.probe.steps > 0
    if epsilon is not None:  # independent draws and noise per phase
        assert plan.probe.cfg.train.seed != plan.cfg.train.seed
    # the size note (LP-FT measured no better than the head up to AUTO_MEASURED_UP_TO) is LoRA's alone:
    # full fine-tuning was not on the curve
    assert any(n.startswith("LP-FT on ") for n in plan.notes) == (mode == "lora" and epsilon is not None)
    probe_head = fit_probe(plan.probe, [], noise=NoiseSource.from_seed(0))
    from dprad.modes.head import HeadMode

    # the probe's own probabilities, through the head mode's frozen-feature path
    head_mode = HeadMode(plan.probe, notes=[])
    head_mode.build()
    head_mode.head.load_state_dict(probe_head.state_dict())
    fine = get_mode(plan.mode)(plan, notes=[])
    assert isinstance(fine, EncoderMode)
    fine.start_from(probe_head)
    fine.build()
    from dprad.data.schemas import UncertainPolicy
    from dprad.modes.encoder import encoder_predictor

    tuned = encoder_predictor(
        fine.scoring_model(),
        tokenizer=fine.tokenizer,
        schema=plan.schema,
        max_length=plan.cfg.model.max_length,
        max_tokens=plan.cfg.train.max_tokens,
        policy=UncertainPolicy.ONES,
        mode=plan.mode,
        prior=True,
    )
    for split in ("val", "test"):
        reports = plan.splits.as_dict()[split]
        want = head_mode._predictor()._logits(reports)[0]  # (N, L) the probe on frozen features
        got = tuned._logits(reports)[0]  # (N, L) the whole classifier over token ids
        assert want.shape == got.shape and np.ptp(want) > 1.0  # a real, non-constant probe
        # float32: logits of magnitude ~20 have a spacing of 2e-6, so the logits agree to 1e-5 relative
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # probabilities: within the logits' 1e-5 (a sigmoid's slope is at most 1/4)
        np.testing.assert_allclose(fine.probs(split), head_mode.probs(split), atol=1e-5, rtol=0)


def test_two_phase_ledger_recomputes_from_its_own_numbers(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    target = 4.0
    result = train(config(corpus, tiny_bert, "lora", epsilon=target), tmp_path / "run")
    led = json.loads((tmp_path / "run" / "privacy.json").read_text())
    probe, tune, th = led["parts"]
    assert probe["part"].startswith("linear probe") and tune["part"].startswith("fine-tuning")
    assert th["part"].startswith("thresholds")
    # the total from the parts' own numbers, composed with dp-accounting's PLD accountant
    import dp_accounting

    events = [
        dpsgd_event(noise_multiplier=p["noise_multiplier"], sample_rate=p["sample_rate"], steps=p["steps"])
        for p in (probe, tune)
    ]
    events.append(dp_accounting.GaussianDpEvent(th["noise_multiplier"]))
    total = epsilon_of(dp_accounting.ComposedDpEvent(events), delta=led["delta"])
    assert total == pytest.approx(led["epsilon"], rel=1e-9)
    assert epsilon_of(event_from_dict(led["event"]), delta=led["delta"]) == pytest.approx(
        led["epsilon"], rel=1e-9
    )
    # calibration spends the target: not over, and within 1% under
    assert target * 0.99 <= led["epsilon"] <= target * (1 + 1e-6)
    # each part is its own epsilon, and the composition is below their sum (PLD is tighter)
    for p in (probe, tune):
        one = epsilon_of(
            dpsgd_event(
                noise_multiplier=p["noise_multiplier"], sample_rate=p["sample_rate"], steps=p["steps"]
            ),
            delta=led["delta"],
        )
        assert one == pytest.approx(p["epsilon"], rel=1e-9)
    assert led["epsilon"] < probe["epsilon"] + tune["epsilon"] + th["epsilon"]
    # the probe took its share of the training budget (target less the thresholds' share)
    assert probe["epsilon"] == pytest.approx(0.9 * 0.9 * target, rel=0.02)
    config_json = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config_json["train"]["probe"] is True
    # at a size where it was measured no better than the head, the run says so, with phase 2's steps
    notes = json.loads((tmp_path / "run" / "notes.json").read_text())
    assert any(
        n.startswith(
            f"LP-FT on {config_json['derived']['train_size']:,} training units: phase 2 takes {tune['steps']} DP-SGD"
        )
        for n in notes
    )
    assert config_json["derived"]["probe"]["steps"] == probe["steps"]
    assert result.ledger.epsilon == led["epsilon"]
    # the run loads back with its probe's input transform and scores as it did at the end of training
    assert (tmp_path / "run" / "model" / "center.pt").is_file()
    pred = load_run(tmp_path / "run")
    from dprad.run import RunRecord

    test, _ = RunRecord.open(tmp_path / "run").split_reports("test")
    probs = pred.predict(test).probs
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    from dprad.data.reports import label_matrix
    from dprad.metrics.scores import summary

    y, m = label_matrix(test, CHEXPERT14)
    again = summary(y, probs, mask=m, labels=CHEXPERT14.labels)["weighted_f1"]
    assert again == pytest.approx(metrics["test"]["threshold_0.5"]["weighted_f1"], abs=1e-9)


def test_no_probe_keeps_the_random_head(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    cfg = config(corpus, tiny_bert, "lora", epsilon=4.0)
    cfg = cfg.with_(train=replace(cfg.train, probe=False))
    plan = plan_run(cfg)
    assert plan.probe is None and plan.cfg.train.public_warm_start is None
    train(cfg, tmp_path / "run")
    led = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert [p["part"][:8] for p in led["parts"]] == ["training", "threshol"]
    assert not (tmp_path / "run" / "model" / "center.pt").exists()
