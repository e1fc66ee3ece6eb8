"""Every DP draw of a run comes from a secret key: two runs differ, a stated --noise-seed reproduces, a killed
run resumes its own draws, and the key is written nowhere that outlives the run."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
import torch

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.privacy.ledger import NOISE_SECRET, NOISE_STATED, noise_source, noise_warning
from dprad.stages.train import StepInfo, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=200, seed=5)), CHEXPERT14), path)
    return path


def cfg(data: Path, model: Path, *, noise_seed: int | None = None, **train: object) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(model), max_length=64),
        privacy=PrivacyConfig(epsilon=3.0, noise_seed=noise_seed),
        train=TrainConfig(mode="head", **{"epochs": 2.0, "batch_size": 32, "checkpoint_every": 1} | train),  # type: ignore[arg-type]
    )


def head(run: Path) -> dict[str, torch.Tensor]:
    return dict(torch.load(run / "model" / "head.pt"))


def test_private_runs_draw_fresh_noise_and_a_stated_seed_reproduces(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    a = train(cfg(corpus, tiny_bert), tmp_path / "a")
    b = train(cfg(corpus, tiny_bert), tmp_path / "b")
    # same data, flags and train.seed: before secret noise these were bit-identical
    assert not torch.equal(head(tmp_path / "a")["head.weight"], head(tmp_path / "b")["head.weight"])
    assert noise_source(a.ledger) == NOISE_SECRET and noise_warning(a.ledger) is None
    assert "secret key" in a.ledger.statement
    s1 = train(cfg(corpus, tiny_bert, noise_seed=7), tmp_path / "s1")
    s2 = train(cfg(corpus, tiny_bert, noise_seed=7), tmp_path / "s2")
    for k, v in head(tmp_path / "s1").items():
        assert torch.equal(v, head(tmp_path / "s2")[k])
    assert s1.metrics == s2.metrics and s1.ledger.to_dict() == s2.ledger.to_dict()
    assert noise_source(s1.ledger) == NOISE_STATED
    warning = noise_warning(s1.ledger)
    assert warning is not None and "stated seed" in warning and warning in s1.ledger.statement
    assert a.ledger.to_dict()["noise"]["source"] == "os-entropy" and b.ledger.epsilon == a.ledger.epsilon


def test_a_killed_secret_run_resumes_its_own_draws_and_leaves_no_key(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    c = cfg(corpus, tiny_bert)

    def crash(info: StepInfo) -> None:
        if info.step == 3:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(c, tmp_path / "one", on_step=crash)
    key = tmp_path / "one" / "noise.key"
    assert key.exists() and (tmp_path / "one" / "checkpoint.pt").exists()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    seen: list[int] = []
    train(c, tmp_path / "one", on_step=lambda s: seen.append(s.step))
    train(c, tmp_path / "two")
    assert seen[0] == 4  # resumed, not restarted
    # both resumed the same secret draws (a fresh key would give other weights, as the test above shows)
    for k, v in head(tmp_path / "one").items():
        assert torch.equal(v, head(tmp_path / "two")[k])
    for run in ("one", "two"):
        assert not (tmp_path / run / "noise.key").exists() and not (tmp_path / run / "checkpoint.pt").exists()
