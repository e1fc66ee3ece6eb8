"""The noise-replay attack: under a stated (guessable) seed it regenerates the noise from the run's files and
recovers the noiseless clipped-gradient sum; under the default secret noise it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.audit.noise_replay import BEFORE, momentum_coefficients, noise_replay_audit
from dprad.cli import main
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.modes.head import HeadMode
from dprad.privacy.dp_step import clip_and_accumulate
from dprad.privacy.noise import NoiseSource
from dprad.run import RunRecord
from dprad.stages.plan import plan_run
from dprad.stages.train import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=200, seed=3)), CHEXPERT14), path)
    return path


def one_step(data: Path, model: Path, noise_seed: int | None) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(model), max_length=64),
        privacy=PrivacyConfig(noise_multiplier=2.0, noise_seed=noise_seed, thresholds="0.5"),
        train=TrainConfig(mode="head", epochs=0.2, batch_size=32, lr=100.0, seed=3),
    )


def true_clipped_sum(c: RunConfig) -> list[np.ndarray]:
    """What the attacker should recover: the run's first step's sum of clipped gradients, computed with the
    training data and the stated seed's Poisson sample, without noise."""
    plan = plan_run(c)
    with torch.random.fork_rng():
        torch.manual_seed(c.train.seed)
        mode = HeadMode(plan, notes=[])
        mode.build()
    privacy = plan.privacy()
    assert c.privacy.noise_seed is not None
    idx = privacy.sampler(NoiseSource.from_seed(c.privacy.noise_seed).stream("sampler").generator).sample()
    module = privacy.wrap(mode.trainable)
    params = [p for p in module.parameters() if p.requires_grad]
    summed, _ = clip_and_accumulate(
        params,
        mode.batches(idx),
        mode.loss_fn(module),
        max_grad_norm=privacy.max_grad_norm,
        groups=privacy.unit_groups,  # patient-level clipping, as the run did
    )
    return [s.double().numpy() for s in summed]


def test_replay_recovers_the_gradient_sum_under_a_stated_seed_and_fails_on_secret_noise(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    # lr 100: one large step, so that float32 rounding of the weights stays below the 1e-5 checked
    stated = one_step(corpus, tiny_bert, noise_seed=7)  # 7: a seed anyone would try
    run = train(stated, tmp_path / "stated")
    assert run.ledger.steps == 1
    found = noise_replay_audit(RunRecord.open(tmp_path / "stated"))
    assert found["regenerated"] is True and found["best_candidate"]["seed"] == 7, found
    assert found["rho"] < 0.5 and "REGENERATED" in found["verdict"]
    # the residual is the noiseless clipped-gradient sum, to float32 precision
    from dprad.audit.noise_replay import replay, start_and_final

    record = RunRecord.open(tmp_path / "stated")
    start, final = start_and_final(record)
    fit = replay(start, final, record.config.to_dict(), lr=100.0,
                 expected_batch_size=float(run.ledger.expected_batch_size or 0), steps=1,
                 noise_std=2.0 * float(run.ledger.max_grad_norm or 0))  # fmt: skip
    truth = true_clipped_sum(stated)
    err = np.sqrt(sum(np.sum((r - t) ** 2) for r, t in zip(fit.recovered, truth, strict=True)))
    norm = np.sqrt(sum(np.sum(t**2) for t in truth))
    assert norm > 0 and err / norm < 1e-5, (err, norm)

    secret = one_step(corpus, tiny_bert, noise_seed=None)
    train(secret, tmp_path / "secret")
    missed = noise_replay_audit(RunRecord.open(tmp_path / "secret"))
    assert missed["regenerated"] is False and missed["rho"] > 1.0 and "not regenerated" in missed["verdict"]
    assert missed["candidates_tried"] >= 30 and missed["noise_source"] == "os-entropy"


def test_a_run_written_before_secret_noise_is_regenerated_from_its_own_config(old_run: Path) -> None:
    """The committed fixture's private head, trained by dprad before secret noise (fixture README): its
    noise comes back from config.json's train.seed, under the old torch-generator convention."""
    out = noise_replay_audit(RunRecord.open(old_run))
    assert out["noise_source"] == "written-seed" and out["regenerated"] is True, out
    assert out["best_candidate"] == {"seed": 0, "from": "config.json train.seed", "convention": BEFORE}
    assert out["rho"] < 0.1


def test_the_audit_command_and_serve_say_it_of_a_run_and_its_export(
    old_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dprad audit RUN --attack noise-replay`` writes its section and prints the verdict; on an export it
    prints and writes nothing into it; ``dprad serve`` refuses such a run without --force, before serving."""
    run = old_run
    main(["audit", str(run), "--attack", "noise-replay"])
    assert "noise replay: REGENERATED" in capsys.readouterr().out
    section = json.loads((run / "audit.json").read_text())["noise_replay"]
    assert section["regenerated"] is True and section["best_candidate"]["from"] == "config.json train.seed"
    main(["export", str(run), "--out", str(tmp_path / "ex"), "--force"])
    capsys.readouterr()
    before = sorted(p.name for p in (tmp_path / "ex").iterdir())
    main(["audit", str(tmp_path / "ex"), "--attack", "noise-replay"])
    # the export ships train.seed (it cannot be withheld: it seeds the public start), so it falls too
    assert "noise replay: REGENERATED" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == before
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys: []\n")
    with pytest.raises(SystemExit) as ex:
        main(["serve", str(run), "--keys", str(keys), "--port", "18123"])
    err = capsys.readouterr()
    assert ex.value.code == 2 and "--force" in err.err and "serving" not in err.out


def test_momentum_coefficients_follow_torchs_sgd() -> None:
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0, momentum=0.9)
    grads = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])]
    for g in grads:
        w.grad = g.clone()
        opt.step()
    np.testing.assert_allclose(-w.detach().numpy(), momentum_coefficients(3, 0.9), rtol=1e-6)
