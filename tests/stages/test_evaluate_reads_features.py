"""Evaluate and audit read back the frozen features training wrote to ``--feature-cache`` instead of
encoding the reports again (the cost that dominated them at a hospital's size, bench/scale.py); serving
and predict never read or write the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.audit.run_audit import audit_run
from dprad.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.metrics.evaluation import EvalOptions
from dprad.modes import load_run
from dprad.run import RunRecord
from dprad.stages.evaluate import evaluate_run
from dprad.stages.train import train

FAST = EvalOptions(n_boot=20)


def wf1(evaluation: dict) -> float:
    return float(evaluation["headline"]["weighted_f1"]["estimate"])


def _chunks(cache: Path) -> list[Path]:
    return sorted(cache.glob("features-*/chunk-*.npz"))


def test_evaluate_and_audit_read_the_kept_features(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "XDG_CACHE_HOME", str(tmp_path / "xdg")
    )  # the ONNX artefact stays in the test's folder
    data = tmp_path / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=60, seed=4)), CHEXPERT14), data)
    cache = tmp_path / "features"
    cfg = RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(tiny_bert), max_length=64),
        train=TrainConfig(mode="head", epochs=5.0, batch_size=64, lr=2.0, feature_cache=str(cache)),
    )
    result = train(cfg, tmp_path / "run")
    run = result.run_dir
    # --encoder-runtime auto: a head on the CPU resolves to onnx-int8, and config.json records that
    assert cfg.model.encoder_runtime == "auto"
    assert RunRecord.open(run).config.model.encoder_runtime == "onnx-int8"
    chunks = _chunks(cache)
    assert chunks, "training wrote no feature chunk"
    stamps = {p: p.stat().st_mtime_ns for p in chunks}

    # the kept features are what evaluate scores: the same test metrics as the run measured at its end,
    # and no chunk written or rewritten
    first = evaluate_run(run, data, options=FAST)
    assert first["split"] == "test"
    assert wf1(first) == pytest.approx(result.metrics["test"]["threshold_val"]["weighted_f1"], abs=1e-9)
    assert _chunks(cache) == chunks and all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    # poison the kept rows: evaluate and audit now score the poisoned features (they were read, not
    # recomputed); the HTTP API's and predict's loader does not read the cache, so its scores do not move
    reports = generate_reports(SynthConfig(n_patients=60, seed=4))
    before = load_run(run).predict(reports).probs
    audit_before = audit_run(run, attacks="loss", rng=np.random.default_rng(0), n_boot=20)
    rng = np.random.default_rng(0)
    for p in chunks:
        with np.load(p) as z:
            keys, feats = z["keys"], z["features"]
        with open(p, "wb") as f:
            np.savez(f, keys=keys, features=rng.normal(size=feats.shape).astype(feats.dtype))
    poisoned = evaluate_run(run, data, options=FAST)
    assert poisoned["calibration"] != first["calibration"]  # other probabilities
    audit_after = audit_run(run, attacks="loss", rng=np.random.default_rng(0), n_boot=20)
    assert audit_after["mia"]["attacks"] != audit_before["mia"]["attacks"]
    assert np.array_equal(load_run(run).predict(reports).probs, before)

    # without the cache, evaluate encodes the reports again, and onnx-int8 rows are a function of their
    # report alone: the same metrics as the kept features gave
    for p in chunks:
        p.unlink()
    cache.rename(tmp_path / "gone")
    again = evaluate_run(run, data, options=FAST)
    assert wf1(again) == pytest.approx(wf1(first), abs=1e-9)
