"""Frozen-encoder features and the per-example loss."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    cache_dir: str | None = None,
) -> PublicCorpus:
    """Sentence embeddings share a large common direction; removing the public mean before L2
    normalisation makes the linear head's job (and its clipped, noised gradients) far easier. Measured
    during development on IU X-ray at eps = 10 (40 epochs): weighted F1 0.627 without centring, 0.692 with."""
    from dprad.data.dataset import encode
    from dprad.data.schemas import CHEXPERT14, CTRATE18

    labelled, texts = {}, {}
    for modality, schema in (("cxr", CHEXPERT14), ("ct", CTRATE18)):
        reports = public_reports(modality, n_patients=n_patients)
        texts[schema.name] = [r.text for r in reports]
        enc = encode(reports, tokenizer, schema, max_length=max_length)
        x = cached_features(
            encoder,
            enc,
            texts[schema.name],
            pooling=pooling,
            max_length=max_length,
            max_tokens=max_tokens,
            model_dir=model_dir,
            cache_dir=cache_dir if model_dir else None,
        )
        labelled[schema.name] = (x, enc.targets, enc.mask)
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


def cached_features(
    encoder: nn.Module,
    enc: Encoded,
    texts: Sequence[str],
    *,
    pooling: str,
    max_length: int,
    max_tokens: int,
    model_dir: str,
    cache_dir: str | None,
) -> np.ndarray:
    """:func:`encoder_features`, with rows reused from a per-text store in ``cache_dir``: only texts the
    store has not seen with this encoder, pooling and truncation go through the encoder. Other splits of
    the same data, sweeps, audit canaries and reference models then cost no second feature pass.

    The store holds features derived from the reports: it is as sensitive as the reports themselves and
    lives only where the user puts it (``--feature-cache``); nothing is cached by default.
    """
    if not cache_dir:
        return encoder_features(encoder, enc, pooling=pooling, max_tokens=max_tokens)
    bucket = hashlib.sha256(f"{model_dir}\0{pooling}\0{max_length}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"features-{bucket}.npz"
    keys = text_keys(texts)
    known_keys, known = np.zeros(0, dtype="U32"), np.zeros((0, hidden_size(encoder)), dtype=np.float32)
    if path.is_file():
        with np.load(path) as z:
            known_keys, known = z["keys"], z["features"]
    row = {k: i for i, k in enumerate(known_keys.tolist())}
    missing = np.array([i for i, k in enumerate(keys.tolist()) if k not in row], dtype=np.int64)
    if len(missing):
        sub = Encoded(
            [enc.ids[i] for i in missing],
            enc.lengths[missing],
            enc.targets[missing],
            enc.mask[missing],
            enc.pad_id,
        )
        fresh = encoder_features(encoder, sub, pooling=pooling, max_tokens=max_tokens)  # (M, H)
        new_keys, first = np.unique(keys[missing], return_index=True)
        known_keys = np.concatenate([known_keys, new_keys])
        known = np.concatenate([known, fresh[first]])
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: numpy would append a suffix to a bare temp name
                np.savez(f, keys=known_keys, features=known)

        io.write_with(path, write)
        row = {k: i for i, k in enumerate(known_keys.tolist())}
    return known[[row[k] for k in keys.tolist()]]  # (N, H)
