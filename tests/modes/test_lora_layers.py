"""--lora-layers K: LoRA in the top K layers trained on cached hidden states of the frozen bottom."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.config import DataConfig, LoraConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.reports import label_matrix
from dprad.data.table import reports_frame, write_table
from dprad.metrics.scores import summary
from dprad.modes import load_run
from dprad.stages.train import train


def test_top_layer_lora_trains_saves_and_reloads(tiny_bert: Path, tmp_path: Path) -> None:
    path = tmp_path / "synth.csv"
    reports = generate_reports(SynthConfig(n_patients=160, seed=51))
    write_table(reports_frame(reports, CHEXPERT14), path)
    cfg = RunConfig(
        data=DataConfig(path=str(path)),
        model=ModelConfig(name=str(tiny_bert), max_length=48),
        lora=LoraConfig(layers=1),
        privacy=PrivacyConfig(epsilon=8.0),
        train=TrainConfig(mode="lora", epochs=2.0, batch_size=64, lr=1e-2),
    )
    res = train(cfg, tmp_path / "run")
    adapter = json.loads((res.run_dir / "model" / "adapter" / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == [1]  # the top layer of the 2-layer tiny encoder only
    from safetensors.torch import load_file

    weights = load_file(str(res.run_dir / "model" / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert (
        lora_b and all(".layer.1." in k for k in weights) and any(torch.count_nonzero(v) > 0 for v in lora_b)
    )
    notes = json.loads((res.run_dir / "notes.json").read_text())
    assert any("top 1 layers" in n for n in notes)
    # the reloaded whole-encoder model reproduces the training-time test metrics
    test_ids = set(json.loads((res.run_dir / "splits.json").read_text())["test"])
    test = [r for r in reports if r.id in test_ids]
    y, m = label_matrix(test, CHEXPERT14)
    again = summary(y, load_run(res.run_dir).predict(test).probs, mask=m)
    assert again["weighted_f1"] == pytest.approx(
        res.metrics["test"]["threshold_0.5"]["weighted_f1"], abs=1e-9
    )
    assert again["macro_auroc"] == pytest.approx(
        res.metrics["test"]["threshold_0.5"]["macro_auroc"], abs=1e-6
    )
