"""The frozen-encoder feature pass: pooled last-layer features of encoded reports or of texts, (N, H)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dprad.data.dataset import Encoded, collate, inference_batches
from dprad.nn.device import autocast, scoring_tokens
from dprad.nn.model import hidden_size, pool


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
