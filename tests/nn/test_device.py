"""--device: auto picks CUDA when present; the same training runs on the GPU where one exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.nn.device import resolve_device
from dprad.stages.train import train


def test_device_names_resolve_or_fail_clearly() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DpradError, match="--device 'tpu' must be auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DpradError, match="no CUDA device is available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_private_lora_trains_on_the_device(device: str, tiny_bert: Path, tmp_path: Path) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here: the GPU path runs where one exists")
    path = tmp_path / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=120, seed=61)), CHEXPERT14), path)
    cfg = RunConfig(
        data=DataConfig(path=str(path)),
        model=ModelConfig(name=str(tiny_bert), max_length=48),
        privacy=PrivacyConfig(epsilon=8.0),
        train=TrainConfig(mode="lora", epochs=1.0, batch_size=64, device=device),
    )
    res = train(cfg, tmp_path / "run")
    assert res.ledger.private and res.metrics["test"]["threshold_0.5"]["weighted_f1"] >= 0
