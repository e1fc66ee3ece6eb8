"""``torchrun --nproc-per-node 2 -m dprad train ...`` (two CPU processes, gloo) trains the same DP-LoRA
model, with the same ledger and metrics, as ``dprad train`` on one process with the same seeds."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.cli import main
from dprad.config import RunConfig
from dprad.data.table import reports_frame, write_table
from dprad.errors import DpradError
from dprad.stages.train import StepInfo, train

WORLD_KEYS = ("sampler", "library_versions")  # the sampler says how many processes drew and clipped


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=200, seed=5)), CHEXPERT14), path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(args: list[str], *, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "dprad", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def train_args(corpus: Path, model: Path, out: Path) -> list[str]:
    # --noise-multiplier, not --epsilon: calibrating sigma to an epsilon at q ~ 0.46 costs each process
    # 15-20 s of PLD accounting on a 2-core runner, identical on both sides, before any rank talks
    return [
        "train", str(corpus), "--model", str(model), "--mode", "lora", "--noise-multiplier", "1.0",
        "--epochs", "2", "--batch-size", "64", "--max-length", "48", "--device", "cpu", "--threads", "1",
        "--noise-seed", "3", "--out", str(out),  # a stated seed: one process and two draw the same noise
    ]  # fmt: skip


def adapter(run: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(run / "model" / "adapter" / "adapter_model.safetensors"))
    head = torch.load(run / "model" / "head.pt", weights_only=True)
    return {**weights, **{f"head.{k}": v for k, v in head.items()}}


def read(run: Path, name: str) -> Any:
    return json.loads((run / name).read_text())


def assert_same_model(one: Path, two: Path) -> None:
    w1, w2 = adapter(one), adapter(two)
    assert w1.keys() == w2.keys() and any("lora_A" in k for k in w1)
    for k in w1:  # the all-reduce sums in another order than one process: float tolerance
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6, msg=k)
    # the run moved the adapters (B starts at zero: an untrained pair would compare equal trivially)
    assert any("lora_B" in k and w1[k].abs().max() > 0 for k in w1)
    h1, h2 = read(one, "history.json"), read(two, "history.json")
    assert h1["batch_size"] == h2["batch_size"]  # the same Poisson batches
    assert h2["step_loss"] == pytest.approx(h1["step_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def single(corpus: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run1"
    threads = torch.get_num_threads()
    main(train_args(corpus, tiny_bert, out))
    assert torch.get_num_threads() == threads
    return out


def test_two_gloo_processes_train_the_run_one_process_trains(
    corpus: Path, tiny_bert: Path, single: Path, tmp_path: Path
) -> None:
    two = tmp_path / "run2"
    proc = torchrun(train_args(corpus, tiny_bert, two))
    assert proc.returncode == 0, proc.stderr[-3000:]

    led1, led2 = read(single, "privacy.json"), read(two, "privacy.json")
    assert {k: v for k, v in led1.items() if k not in WORLD_KEYS} == {
        k: v for k, v in led2.items() if k not in WORLD_KEYS
    }
    # patient-level DP (the synthetic corpus repeats patients): patients, not reports, are sharded
    assert led1["privacy_unit"] == "patient" and led1["sampler"] == "poisson-patient"
    assert led2["sampler"].startswith("poisson-patient; one draw shared by 2 processes")
    assert led2["steps"] >= 4 and led2["private"] is True
    assert any("trained by 2 processes (torch.distributed, gloo)" in n for n in read(two, "notes.json"))
    assert_same_model(single, two)
    m1, m2 = read(single, "metrics.json"), read(two, "metrics.json")
    for split in ("val", "test"):
        for rule in ("threshold_0.5", "threshold_val"):
            assert m2[split][rule]["weighted_f1"] == pytest.approx(m1[split][rule]["weighted_f1"], abs=1e-6)
    assert m2["thresholds"]["values"] == pytest.approx(m1["thresholds"]["values"], abs=1e-6)
    # rank 0 alone wrote the run: the same files, no temporary file or checkpoint left behind
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in single.iterdir())


def test_two_processes_resume_one_processs_checkpoint(
    corpus: Path, tiny_bert: Path, single: Path, tmp_path: Path
) -> None:
    cfg = RunConfig.from_dict(read(single, "config.json"))
    # the default secret noise: rank 0 reads the interrupted run's key and shares it with every rank
    cfg = cfg.with_(
        train=replace(cfg.train, checkpoint_every=1), privacy=replace(cfg.privacy, noise_seed=None)
    )
    out = tmp_path / "resumed"

    def crash(info: StepInfo) -> None:
        if info.step == 2:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, on_step=crash)
    assert (out / "checkpoint.pt").exists() and not (out / "privacy.json").exists()
    shutil.copytree(out, tmp_path / "one-process")
    # both ranks continue from rank 0's checkpoint at step 2 (a rank starting over would draw other batches)
    proc = torchrun(["train", "--config", str(out / "config.json"), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "checkpoint.pt").exists() and not (out / "noise.key").exists()
    # the same interrupted run resumed by one process: the same secret draws, the same model
    train(cfg, tmp_path / "one-process")
    assert_same_model(tmp_path / "one-process", out)


def test_distributed_runs_other_than_dp_lora_or_full_are_refused(
    corpus: Path, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; refused before any process group forms
    base = RunConfig.from_dict(read_config(corpus, tiny_bert))
    with pytest.raises(DpradError, match="multi-process training is DP-SGD only"):
        train(base.with_(privacy=replace(base.privacy, noise_multiplier=None)), tmp_path / "a")
    with pytest.raises(DpradError, match="--mode head trains on frozen features"):
        train(base.with_(train=replace(base.train, mode="head")), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def read_config(corpus: Path, model: Path) -> dict[str, Any]:
    return {
        "data": {"path": str(corpus)},
        "model": {"name": str(model), "max_length": 48},
        "privacy": {"noise_multiplier": 1.0},
        "train": {"mode": "lora", "epochs": 1, "batch_size": 64, "threads": 1, "device": "cpu"},
    }
