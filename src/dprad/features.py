"""Frozen-encoder features and the per-example loss."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dprad import io
from dprad.data.dataset import Encoded, collate, inference_batches
from dprad.data.reports import Report
from dprad.model import hidden_size, pool


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when one is present, else the CPU; or ``cpu`` / ``cuda[:i]``."""
    from dprad.errors import DpradError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DpradError(f"--device '{name}' must be auto, cpu or cuda[:i]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DpradError(f"--device {name}: no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        raise DpradError(f"--device '{name}' must be auto, cpu or cuda[:i]")
    return device


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast for the encoder's forward pass on a GPU; a no-op on the CPU. Per-sample gradients,
    clipping and noise stay in fp32 (dprad.privacy.dp_step)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# Tokens per scoring forward pass on a CPU. Training's max_tokens (8,192 by default) bounds memory; on a
# CPU a forward pass that large runs slower per token than smaller ones. bench/score_batching.py measures
# it on synthetic (public) reports, side by side in one run; the number is in the README.
CPU_SCORING_TOKENS = 2048


def scoring_tokens(max_tokens: int, device: torch.device) -> int:
    """Token budget of one no-grad forward pass: ``max_tokens``, capped at ``CPU_SCORING_TOKENS`` on a CPU."""
    return min(max_tokens, CPU_SCORING_TOKENS) if device.type == "cpu" else max_tokens


def encoder_features(encoder: nn.Module, enc: Encoded, *, pooling: str, max_tokens: int) -> np.ndarray:
    """Pooled last-layer features of every report, (N, H) float32, computed without gradients.

    The encoder is frozen and was not trained on these reports, so features are a per-report map:
    DP-SGD on top of them protects the reports exactly as DP-SGD on the whole model would.
    """
    out = np.zeros((len(enc), hidden_size(encoder)), dtype=np.float32)
    if len(enc) == 0:
        return out
    was_training = encoder.training
    device = next(encoder.parameters()).device
    encoder.eval()
    with torch.inference_mode():
        budget = scoring_tokens(max_tokens, device)
        for idx in inference_batches(np.arange(len(enc)), enc.lengths, max_tokens=budget):
            input_ids, attention, _, _ = collate(enc, idx)
            input_ids, attention = input_ids.to(device), attention.to(device)
            with autocast(device):
                h = encoder(input_ids=input_ids, attention_mask=attention).last_hidden_state  # (B, T, H)
            out[idx] = pool(h, attention, pooling).float().cpu().numpy()
    encoder.train(was_training)
    return out


@dataclass(frozen=True)
class PublicCorpus:
    """Features of dprad's synthetic chest X-ray and CT corpora. They are public (made by code from a
    seed), so using them costs no privacy."""

    center: np.ndarray  # (H,) mean raw feature over both corpora
    labelled: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # schema -> raw (N, H), targets, mask
    texts: dict[str, list[str]]  # schema -> the reports' texts (for public, label-free priors)


def public_reports(modality: str, *, n_patients: int = 400) -> list[Report]:
    """dprad's public synthetic reports: their own seed stream, which `dprad synth` cannot produce, so
    they share no report with a user's synthetic corpus (a test checks the defaults of both modalities)."""
    from dprad.data.synth import PUBLIC_STREAM, SynthConfig, generate_reports

    return generate_reports(SynthConfig(modality=modality, n_patients=n_patients, stream=PUBLIC_STREAM))


def public_corpus(
    encoder: nn.Module,
    tokenizer: object,
    *,
    pooling: str,
    max_length: int,
    max_tokens: int,
    n_patients: int = 400,
    model_dir: str = "",
    cache_dir: str | Path | None = None,
) -> PublicCorpus:
    """Sentence embeddings share a large common direction; removing the public mean before L2
    normalisation makes the linear head's job (and its clipped, noised gradients) far easier. Measured
    during development on IU X-ray at eps = 10 (40 epochs): weighted F1 0.627 without centring, 0.692 with.

    ``cache_dir`` (with ``model_dir``): the root of a :class:`FeatureStore` the features are kept in."""
    from dprad.data.reports import label_matrix
    from dprad.data.schemas import CHEXPERT14, CTRATE18

    store = None
    if cache_dir and model_dir:
        runtime = str(
            getattr(encoder, "runtime", "torch")
        )  # a RuntimeEncoder says which; torch's own does not
        store = FeatureStore(
            cache_dir, model_dir=model_dir, pooling=pooling, max_length=max_length, runtime=runtime
        )
    labelled, texts = {}, {}
    for modality, schema in (("cxr", CHEXPERT14), ("ct", CTRATE18)):
        reports = public_reports(modality, n_patients=n_patients)
        texts[schema.name] = [r.text for r in reports]
        x = cached_features(
            encoder,
            tokenizer,
            texts[schema.name],
            pooling=pooling,
            max_length=max_length,
            max_tokens=max_tokens,
            store=store,
        )  # (N, H)
        labelled[schema.name] = (x, *label_matrix(reports, schema))
    center = np.concatenate([x for x, _, _ in labelled.values()]).mean(0)
    return PublicCorpus(center=center, labelled=labelled, texts=texts)


def warm_start(
    head: nn.Module, x: np.ndarray, y: np.ndarray, mask: np.ndarray, *, steps: int = 200, lr: float = 10.0
) -> None:
    """Fit the head non-privately on public data (full batch, SGD with momentum): a starting point that
    costs no privacy, so the private steps only have to adapt it."""
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    xt = torch.from_numpy(x)
    for _ in range(steps):
        loss = loss_per_example(head(xt), y, mask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


def head_inputs(features: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Centre on the public mean, then scale every report's feature vector to unit norm: (N, H) -> (N, H)."""
    x = features - center[None, :]
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def loss_per_example(logits: torch.Tensor, targets: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """Masked binary cross-entropy summed over the labels: (B, L) -> (B,).

    Summed, not averaged, so that one report's gradient norm does not shrink with the number of labels
    (which would leave the clipping norm far above the gradients and waste the noise).
    """
    y = torch.from_numpy(targets).to(logits.device, logits.dtype)  # (B, L)
    m = torch.from_numpy(mask).to(logits.device, logits.dtype)  # (B, L)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (B, L)
    return (bce * m).sum(-1)


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


def text_features(
    encoder: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str,
    max_length: int,
    max_tokens: int,
) -> np.ndarray:
    """:func:`encoder_features` of texts, tokenised here: (n, H)."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"] if texts else []
    arrays = [np.asarray(x, dtype=np.int64) for x in ids]
    none = np.zeros((len(arrays), 0), dtype=np.float32)  # no labels: features only
    enc = Encoded(
        arrays,
        np.array([len(x) for x in arrays], dtype=np.int64),
        none,
        none,
        int(tokenizer.pad_token_id or 0),
    )
    return encoder_features(encoder, enc, pooling=pooling, max_tokens=max_tokens)


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
