"""The frozen encoder's runtimes (dprad.encoder_runtime) on a tiny random-init BERT: close to torch fp32,
deterministic, the same after a fresh load from the ONNX cache, and refused where they cannot run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dprad.data.dataset import Encoded, encode
from dprad.data.schemas import CHEXPERT14
from dprad.encoder_runtime import RUNTIMES, frozen_encoder
from dprad.errors import DpradError
from dprad.local_models import load_tokenizer
from dprad.nn.features import encoder_features
from dprad.nn.model import hidden_size
from dprad.nn.public import public_reports

# (minimum, mean) cosine of each report's pooled features to torch fp32's; int8 weights and activations
# on a random-init encoder move them most
CLOSE = {
    "torch": (0.99999, 0.99999),
    "onnx": (0.99999, 0.99999),
    "int8": (0.97, 0.99),
    "onnx-int8": (0.97, 0.99),
}


@pytest.fixture(scope="module")
def reports_enc(tiny_bert: Path) -> Encoded:
    reports = public_reports("cxr", n_patients=12)[:24]
    return encode(reports, load_tokenizer(str(tiny_bert)), CHEXPERT14, max_length=64)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")  # one export per module, reused as a user's cache is


@pytest.fixture(scope="module")
def fp32(tiny_bert: Path, reports_enc: Encoded) -> np.ndarray:
    return features(frozen_encoder(tiny_bert, runtime="torch"), reports_enc)  # (N, H)


def features(encoder: torch.nn.Module, enc: Encoded) -> np.ndarray:
    return encoder_features(encoder, enc, pooling="mean", max_tokens=512)  # (N, H)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_is_close_to_fp32_and_deterministic(
    runtime: str, tiny_bert: Path, reports_enc: Encoded, onnx_cache: Path, fp32: np.ndarray
) -> None:
    base = fp32
    encoder = frozen_encoder(tiny_bert, runtime=runtime, threads=1, cache_dir=onnx_cache)
    assert hidden_size(encoder) == base.shape[1]
    assert next(encoder.parameters()).device.type == "cpu"
    x = features(encoder, reports_enc)
    cos = cosines(x, base)
    low, mean = CLOSE[runtime]
    assert cos.min() > low and cos.mean() > mean, (runtime, cos.min(), cos.mean())
    assert np.array_equal(x, features(encoder, reports_enc))  # the same call, the same features
    fresh = frozen_encoder(tiny_bert, runtime=runtime, threads=1, cache_dir=onnx_cache)  # from the cache
    assert np.array_equal(x, features(fresh, reports_enc))


@pytest.mark.parametrize("runtime", ["int8", "onnx-int8"])
def test_quantised_features_do_not_depend_on_the_batch(
    runtime: str, tiny_bert: Path, reports_enc: Encoded, onnx_cache: Path
) -> None:
    encoder = frozen_encoder(tiny_bert, runtime=runtime, threads=1, cache_dir=onnx_cache)
    together = features(encoder, reports_enc)
    for i in (0, 5):
        one = Encoded(
            [reports_enc.ids[i]],
            reports_enc.lengths[i : i + 1],
            reports_enc.targets[i : i + 1],
            reports_enc.mask[i : i + 1],
            reports_enc.pad_id,
        )
        assert np.array_equal(features(encoder, one)[0], together[i])


def test_onnx_int8_runs_reports_side_by_side_with_the_same_features(
    tiny_bert: Path, reports_enc: Encoded, onnx_cache: Path
) -> None:
    """Reports spread over worker threads, one core each: the features do not depend on how many."""
    one = frozen_encoder(tiny_bert, runtime="onnx-int8", threads=1, cache_dir=onnx_cache)
    three = frozen_encoder(tiny_bert, runtime="onnx-int8", threads=3, cache_dir=onnx_cache)
    assert three.workers == 3 and one.workers == 1  # type: ignore[attr-defined]
    assert np.array_equal(features(one, reports_enc), features(three, reports_enc))


def test_onnx_artefacts_are_cached_once_by_content(tiny_bert: Path, tmp_path: Path) -> None:
    frozen_encoder(tiny_bert, runtime="onnx-int8", cache_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0].startswith("encoder-fp32-") and names[1].startswith("encoder-int8-")
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    frozen_encoder(tiny_bert, runtime="onnx-int8", cache_dir=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps  # reused, not rebuilt


def test_unknown_runtime_and_gpu_quantisation_are_refused(tiny_bert: Path) -> None:
    with pytest.raises(DpradError, match="must be one of") as err:
        frozen_encoder(tiny_bert, runtime="tensorrt")
    assert "\n" not in str(err.value)
    for runtime in ("int8", "onnx", "onnx-int8"):
        with pytest.raises(DpradError, match="CPU only") as err:
            frozen_encoder(tiny_bert, runtime=runtime, device="cuda")
        assert "\n" not in str(err.value)
