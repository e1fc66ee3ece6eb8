"""A head run trained on a non-torch encoder runtime scores with that runtime everywhere: ``dprad predict``
(load_run) and the HTTP API give the scores of the run's own runtime, not torch fp32's; LoRA refuses it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dprad.data.dataset import encode
from dprad.data.table import reports_frame, write_table
from dprad.encoder_runtime import frozen_encoder
from dprad.errors import DpradError
from dprad.modes import load_run
from dprad.modes.head import HeadMode, head_x
from dprad.nn.features import encoder_features
from dprad.run import RunRecord
from dprad.serve.app import ServeLimits, create_app, running
from dprad.serve.keys import hash_key
from dprad.stages.train import train

KEY = "runtime-client-key-0123456789"
RUNTIME = "int8"  # torch's own quantisation: no optional dependency, and rows scored one by one


def _cfg(data: Path, model: Path, runtime: str, mode: str = "head") -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(model), max_length=64, encoder_runtime=runtime),
        train=TrainConfig(mode=mode, epochs=5.0, batch_size=64, lr=2.0),
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=60, seed=3)), CHEXPERT14), path)
    return path


def test_predict_and_serve_use_the_runs_runtime(
    corpus: Path, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no artefact outside the test's folder
    run = train(_cfg(corpus, tiny_bert, RUNTIME), tmp_path / "run").run_dir
    record = RunRecord.open(run)
    assert record.config.model.encoder_runtime == RUNTIME  # written to config.json, read back
    reports = generate_reports(SynthConfig(n_patients=6, seed=9))[:8]
    predicted = load_run(run).predict(reports).probs  # (N, L)

    # the same head on each runtime's features, by hand: predict matches the run's runtime, not torch's
    fitted, _, tokenizer = HeadMode._restore(record)
    enc = encode(reports, tokenizer, record.schema, max_length=64)
    prior = bool(record.config.train.rule_prior)
    center = fitted.center.numpy()  # type: ignore[operator]
    by_runtime = {}
    for runtime in ("torch", RUNTIME):
        feats = encoder_features(
            frozen_encoder(str(tiny_bert), runtime=runtime),
            enc,
            pooling=str(record.config.model.pooling),
            max_tokens=4096,
        )  # (N, H)
        with torch.inference_mode():
            x = head_x(feats, center, [r.text for r in reports], record.schema, prior=prior)
            by_runtime[runtime] = torch.sigmoid(fitted(torch.from_numpy(x))).numpy()  # (N, L)
    np.testing.assert_allclose(predicted, by_runtime[RUNTIME], rtol=0, atol=1e-6)
    assert np.abs(by_runtime["torch"] - by_runtime[RUNTIME]).max() > 1e-5  # the runtimes do differ

    # the HTTP API answers with the same scores
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - id: c\n    key_sha256: {hash_key(KEY)}\n    role: client\n")
    app = create_app(
        run, keys_path=keys, state_dir=tmp_path / "state", limits=ServeLimits(max_reports_per_request=8)
    )
    with running(app) as url:
        r = httpx.post(
            f"{url}/v1/classify",
            json={"reports": [{"text": rep.text} for rep in reports]},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    out = r.json()
    served = np.array([[res["probabilities"][lab] for lab in out["labels"]] for res in out["results"]])
    np.testing.assert_allclose(served, predicted, rtol=0, atol=1e-6)


def test_a_fine_tuning_mode_refuses_another_runtime(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(DpradError, match="--encoder-runtime int8 is for the head mode"):
        train(_cfg(corpus, tiny_bert, "int8", mode="lora"), tmp_path / "run")
    with pytest.raises(DpradError, match="--encoder-runtime 'fp8' must be one of"):
        ModelConfig(encoder_runtime="fp8")


def test_predict_scores_block_by_block_with_progress(
    corpus: Path, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring in blocks (bounded memory, a progress bar) gives the scores of one call (onnx-int8 features
    are a function of their report alone); the losses of labelled and unlabelled reports are kept apart."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = train(_cfg(corpus, tiny_bert, "onnx-int8"), tmp_path / "run").run_dir
    predictor = load_run(run)
    reports = generate_reports(SynthConfig(n_patients=20, seed=5))[:20]
    reports[3] = replace(reports[3], labels=None)
    whole = predictor.predict(reports, block=len(reports))
    seen: list[int] = []
    blocks = predictor.predict(reports, block=7, progress=seen.append)
    assert len(reports) == 20 and seen == [7, 14, 20]
    # the features are identical; the head's (n, D) x (D, L) product may round its last bit by n
    assert blocks.ids == whole.ids and np.allclose(blocks.probs, whole.probs, rtol=0, atol=1e-6)
    assert np.isnan(blocks.loss[3]) and np.isfinite(np.delete(blocks.loss, 3)).all()  # type: ignore[index,arg-type]
    assert np.allclose(blocks.loss, whole.loss, rtol=1e-6, atol=0, equal_nan=True)  # type: ignore[arg-type]
