"""The frozen-encoder feature pass writes its store chunk by chunk: a pass killed with SIGKILL resumes
from the chunks on disk, encodes only the rest, and returns the same features bit for bit; a run directory
keeps its own store for a resume and deletes it when the run finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.local_models import load_tokenizer
from dprad.nn.feature_cache import FeatureStore, cached_features
from dprad.nn.model import load_encoder

CHUNK = 40
POOLING, MAX_LENGTH, MAX_TOKENS = "mean", 64, 2048

# a feature pass in its own process, slowed after each chunk so that the test can kill it between chunks
PASS = """
import sys, time
from pathlib import Path
from dprad import SynthConfig, generate_reports
from dprad.nn.feature_cache import FeatureStore, cached_features
from dprad.local_models import load_tokenizer
from dprad.nn.model import load_encoder

model, root = sys.argv[1], sys.argv[2]
texts = [r.text for r in generate_reports(SynthConfig(n_patients=120, seed=5))]
cached_features(
    load_encoder(Path(model)).eval(), load_tokenizer(model), texts, pooling="mean", max_length=64,
    max_tokens=2048, store=FeatureStore(root, model_dir=model, pooling="mean", max_length=64),
    progress=lambda done, total: time.sleep(0.5), chunk=40,
)
"""


def corpus_texts() -> list[str]:
    return [r.text for r in generate_reports(SynthConfig(n_patients=120, seed=5))]


def snapshot(store: FeatureStore) -> dict[str, tuple[int, int]]:
    """chunk file -> (inode, mtime in ns)"""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.chunks()}


def test_a_killed_pass_resumes_from_its_chunks_bit_for_bit(tiny_bert: Path, tmp_path: Path) -> None:
    texts = corpus_texts()
    unique = len(set(texts))
    assert unique > 4 * CHUNK  # several chunks
    model = str(tiny_bert)
    store = FeatureStore(tmp_path / "store", model_dir=model, pooling=POOLING, max_length=MAX_LENGTH)
    proc = subprocess.Popen(
        [sys.executable, "-c", PASS, model, str(tmp_path / "store")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(store.chunks()) < 2:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the pass wrote no two chunks in 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = snapshot(store)
    assert 2 <= len(finished) < -(-unique // CHUNK)  # killed mid-way
    for path in store.chunks():  # each chunk on disk is whole (written to a temporary file, then renamed)
        with np.load(path) as z:
            assert len(z["keys"]) == len(z["features"]) == CHUNK

    encoder, tokenizer = load_encoder(tiny_bert).eval(), load_tokenizer(model)
    seen: list[tuple[int, int]] = []
    resumed = cached_features(
        encoder,
        tokenizer,
        texts,
        pooling=POOLING,
        max_length=MAX_LENGTH,
        max_tokens=MAX_TOKENS,
        store=store,
        progress=lambda done, total: seen.append((done, total)),
        chunk=CHUNK,
    )
    # the finished chunks were read, not recomputed: untouched on disk, and only the rest was encoded
    after = snapshot(store)
    assert {k: after[k] for k in finished} == finished
    assert seen[-1] == (unique - CHUNK * len(finished),) * 2
    assert len(after) == -(-unique // CHUNK)

    whole = cached_features(
        encoder,
        tokenizer,
        texts,
        pooling=POOLING,
        max_length=MAX_LENGTH,
        max_tokens=MAX_TOKENS,
        store=None,
        chunk=CHUNK,
    )
    assert resumed.dtype == whole.dtype == np.float32
    assert np.array_equal(resumed, whole)  # bit for bit
    # a third pass reads everything back
    again: list[tuple[int, int]] = []
    read = cached_features(
        encoder,
        tokenizer,
        texts,
        pooling=POOLING,
        max_length=MAX_LENGTH,
        max_tokens=MAX_TOKENS,
        store=store,
        progress=lambda done, total: again.append((done, total)),
        chunk=CHUNK,
    )
    assert again == [] and np.array_equal(read, whole)


def test_repeated_texts_are_encoded_once(tiny_bert: Path) -> None:
    texts = corpus_texts()[:30]
    doubled = texts + texts[::-1]
    encoder, tokenizer = load_encoder(tiny_bert).eval(), load_tokenizer(str(tiny_bert))
    seen: list[tuple[int, int]] = []
    kw = dict(pooling=POOLING, max_length=MAX_LENGTH, max_tokens=MAX_TOKENS, store=None, chunk=CHUNK)
    out = cached_features(encoder, tokenizer, doubled, progress=lambda d, t: seen.append((d, t)), **kw)  # type: ignore[arg-type]
    assert seen[-1][1] == len(set(texts))
    assert np.array_equal(out[: len(texts)], out[len(texts) :][::-1])


class Crash(Exception):
    pass


def test_a_run_keeps_its_store_for_a_resume_and_deletes_it_when_done(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dprad.nn import feature_cache
    from dprad.stages.train import train

    monkeypatch.setattr(feature_cache, "FEATURE_CHUNK", 100)  # several chunks of this small corpus
    data = tmp_path / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=200, seed=3)), CHEXPERT14), data)
    cfg = RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(tiny_bert), max_length=MAX_LENGTH),
        privacy=PrivacyConfig(epsilon=3.0, noise_seed=7),  # a stated seed: two runs can be compared
        train=TrainConfig(mode="head", epochs=2.0, batch_size=64, checkpoint_every=1),
    )

    def crash_after_two(done: int, total: int) -> None:
        if done >= 200:
            raise Crash

    out = tmp_path / "run"
    with pytest.raises(Crash):
        train(cfg, out, on_features=crash_after_two)
    store = out / "features"
    kept = {p.name: p.stat().st_ino for p in store.rglob("chunk-*.npz")}
    assert len(kept) >= 2 + 2  # the public corpora's chunks, and two of the run's own

    seen: list[tuple[int, int]] = []
    train(cfg, out, on_features=lambda done, total: seen.append((done, total)))
    total = seen[0][1]
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert not store.exists()  # derived from the reports: gone with the checkpoint

    whole: list[tuple[int, int]] = []
    other = tmp_path / "whole"
    train(cfg, other, on_features=lambda done, total: whole.append((done, total)))
    assert whole[-1][1] == total + 200  # the uninterrupted run encoded what the crashed one had done
    for name in ("metrics.json", "privacy.json"):
        a, b = json.loads((out / name).read_text()), json.loads((other / name).read_text())
        assert a == b, name
    import torch

    ha, hb = torch.load(out / "model" / "head.pt"), torch.load(other / "model" / "head.pt")
    assert all(torch.equal(ha[k], hb[k]) for k in ha)
