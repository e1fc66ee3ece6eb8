"""The frozen-encoder features of texts, kept chunk by chunk in a :class:`FeatureStore` so that a killed
pass, other splits, sweeps and canaries skip finished work."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from dprad import io
from dprad.nn.features import text_features
from dprad.nn.model import hidden_size


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """(N,) 32-character SHA-256 prefixes of the texts: the feature store's row keys."""
    return np.array([hashlib.sha256(t.encode("utf-8")).hexdigest()[:32] for t in texts], dtype="U32")


# Reports per chunk of a feature pass: each chunk is tokenised, encoded and (with a store) written on its
# own, so a killed pass loses at most one chunk and no more than one chunk's token ids are held at once.
FEATURE_CHUNK = 2048

# (reports encoded so far, reports this pass encodes): the command layer draws it as a progress bar
FeatureProgress = Callable[[int, int], None]


class FeatureStore:
    """Frozen-encoder features of texts under one encoder, pooling and truncation: a folder of chunk
    files (``chunk-<hash of its keys>.npz``: keys (n,), features (n, H)), each written atomically when its
    chunk is done. Features are derived from the reports and as sensitive as they are: the store lives in
    ``--feature-cache`` (kept and shared across runs) or in the run directory (deleted when it finishes).
    """

    def __init__(
        self, root: str | Path, *, model_dir: str, pooling: str, max_length: int, runtime: str = "torch"
    ) -> None:
        # the encoder's runtime (dprad.encoder_runtime) is part of the key: int8 and fp32 rows never mix;
        # torch's key is the one stores had before runtimes existed
        what = f"{model_dir}\0{pooling}\0{max_length}" + ("" if runtime == "torch" else f"\0{runtime}")
        bucket = hashlib.sha256(what.encode()).hexdigest()[:16]
        self.legacy = Path(root) / f"features-{bucket}.npz"  # one file, as dprad wrote it before chunks
        self.folder = Path(root) / f"features-{bucket}"

    def chunks(self) -> list[Path]:
        found = sorted(self.folder.glob("chunk-*.npz")) if self.folder.is_dir() else []
        return ([self.legacy] if self.legacy.is_file() else []) + found

    def fill(self, first: dict[str, int], out: np.ndarray) -> set[str]:
        """Copy the stored row of every key in ``first`` (key -> row of ``out``); the keys found."""
        found: set[str] = set()
        for path in self.chunks():
            with np.load(path) as z:
                keys, feats = z["keys"].tolist(), z["features"]  # (n,), (n, H)
            for i, k in enumerate(keys):
                row = first.get(k)
                if row is not None and k not in found:
                    out[row] = feats[i]
                    found.add(k)
        return found

    def add(self, keys: np.ndarray, features: np.ndarray) -> Path:
        """Write one finished chunk: keys (n,), features (n, H)."""
        name = hashlib.sha256("\0".join(keys.tolist()).encode()).hexdigest()[:24]
        path = self.folder / f"chunk-{name}.npz"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: numpy would append a suffix to a bare temp name
                np.savez(f, keys=keys, features=features)

        io.write_with(path, write)
        return path


def cached_features(
    encoder: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str,
    max_length: int,
    max_tokens: int,
    store: FeatureStore | None,
    progress: FeatureProgress | None = None,
    chunk: int | None = None,
) -> np.ndarray:
    """Frozen-encoder features of ``texts``, (N, H): rows the ``store`` holds are read back, the rest go
    through the encoder chunk by chunk, each chunk written to the store as soon as it is done. Other
    splits of the same data, sweeps, canaries and a run resumed after a kill then skip finished work.

    A row's last bits depend on the batch it was encoded in (padding changes the shapes of the products),
    so the chunks are fixed by the texts alone: the texts the store lacks, each once, in order of first
    appearance, cut every ``chunk`` (default :data:`FEATURE_CHUNK`); batches are cut inside a chunk from
    its lengths. A pass resumed from the chunks a killed pass wrote encodes exactly the chunks it had
    left, the same way, and so returns the same features, bit for bit.
    """
    chunk = chunk or FEATURE_CHUNK  # reports per chunk
    keys = text_keys(texts).tolist()
    out = np.zeros((len(texts), hidden_size(encoder)), dtype=np.float32)  # (N, H)
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    found = store.fill(first, out) if store is not None else set()
    todo = np.array([i for k, i in first.items() if k not in found], dtype=np.int64)  # first appearances
    if progress is not None and len(todo):
        progress(0, len(todo))
    for lo in range(0, len(todo), chunk):
        idx = todo[lo : lo + chunk]  # (n,)
        feats = text_features(
            encoder,
            tokenizer,
            [texts[i] for i in idx],
            pooling=pooling,
            max_length=max_length,
            max_tokens=max_tokens,
        )  # (n, H)
        out[idx] = feats
        if store is not None:
            store.add(np.array([keys[i] for i in idx], dtype="U32"), feats)
        if progress is not None:
            progress(lo + len(idx), len(todo))
    repeats = np.array([i for i, k in enumerate(keys) if first[k] != i], dtype=np.int64)
    if len(repeats):  # a text seen twice: the row of its first appearance
        out[repeats] = out[[first[keys[i]] for i in repeats]]
    return out
