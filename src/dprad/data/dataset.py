"""Tokenised reports, samplers, and length-sorted physical micro-batches with dynamic padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dprad.data.reports import Report, label_matrix
from dprad.data.schemas import LabelSchema, UncertainPolicy


@dataclass(frozen=True)
class Encoded:
    ids: list[np.ndarray]  # N arrays of token ids, truncated to max_length
    lengths: np.ndarray  # (N,)
    targets: np.ndarray  # (N, L) float32
    mask: np.ndarray  # (N, L) float32, 0 where a label is ignored
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)


def encode(
    reports: Sequence[Report],
    tokenizer: Any,
    schema: LabelSchema,
    *,
    max_length: int,
    policy: UncertainPolicy = UncertainPolicy.ONES,
) -> Encoded:
    texts = [r.text for r in reports]
    enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []
    ids = [np.asarray(x, dtype=np.int64) for x in enc]
    y, mask = label_matrix(reports, schema, policy=policy)
    return Encoded(
        ids, np.array([len(x) for x in ids], dtype=np.int64), y, mask, int(tokenizer.pad_token_id or 0)
    )


def micro_batches(indices: np.ndarray, lengths: np.ndarray, *, max_tokens: int) -> list[np.ndarray]:
    """Split a logical batch into physical ones: sorted by length, each padded size <= max_tokens.

    The split changes memory and speed only: gradients are summed across the micro-batches.
    """
    if len(indices) == 0:
        return []
    order = indices[np.argsort(lengths[indices], kind="stable")]
    out: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        longest = int(lengths[order[end - 1]])
        if (end - start) * longest > max_tokens and end - 1 > start:
            out.append(order[start : end - 1])
            start = end - 1
    out.append(order[start:])
    return out


def inference_batches(
    indices: np.ndarray, lengths: np.ndarray, *, max_tokens: int, max_padding: float = 0.02
) -> list[np.ndarray]:
    """Length-sorted micro-batches for scoring, cut where padding would pass ``max_padding`` of a batch.

    Training splits only by ``max_tokens`` (``micro_batches``). Scoring a few hundred reports (a server's
    micro-batch) that way pads every forward pass heavily, because each micro-batch spans a wide range of
    lengths: 21% more padded than real tokens on 256 synthetic reports. Here a batch also ends once adding
    the next, longer report would make more than ``max_padding`` of its padded tokens padding, provided it
    already holds ``max_tokens // 8`` real tokens (tiny batches cost per-call overhead, most on a GPU).
    ``bench/score_batching.py`` measures both cuts side by side. Outputs equal up to float rounding.
    """
    if len(indices) == 0:
        return []
    order = indices[np.argsort(lengths[indices], kind="stable")]
    sizes = lengths[order].astype(np.int64)
    floor = max(1, max_tokens // 8)
    out: list[np.ndarray] = []
    start, real = 0, 0
    for end in range(len(order)):
        longest = int(sizes[end])
        padded = (end - start + 1) * longest
        too_big = padded > max_tokens and end > start
        too_padded = end > start and padded - (real + longest) > max_padding * padded and real >= floor
        if too_big or too_padded:
            out.append(order[start:end])
            start, real = end, 0
        real += longest
    out.append(order[start:])
    return out


def collate(enc: Encoded, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> input_ids (B, T), attention_mask (B, T), targets (B, L), label mask (B, L); T = longest in batch."""
    t = int(enc.lengths[idx].max())
    input_ids = torch.full((len(idx), t), enc.pad_id, dtype=torch.long)
    attention = torch.zeros((len(idx), t), dtype=torch.long)
    for row, i in enumerate(idx):
        n = int(enc.lengths[i])
        input_ids[row, :n] = torch.from_numpy(enc.ids[i])
        attention[row, :n] = 1
    return input_ids, attention, torch.from_numpy(enc.targets[idx]), torch.from_numpy(enc.mask[idx])


class PoissonSampler:
    """Each step, every example joins the batch independently with probability ``sample_rate``.

    This is the sampling the privacy accountant assumes; batches vary in size and can be empty.
    """

    name = "poisson"

    def __init__(self, n: int, sample_rate: float, rng: np.random.Generator) -> None:
        self.n, self.sample_rate, self.rng = n, sample_rate, rng

    def sample(self) -> np.ndarray:
        return np.flatnonzero(self.rng.random(self.n) < self.sample_rate)


class ShuffleSampler:
    """Fixed-size batches from a reshuffled permutation each epoch (non-private training only)."""

    name = "shuffle"

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator) -> None:
        self.n, self.batch_size, self.rng = n, batch_size, rng
        self._perm = np.empty(0, dtype=np.int64)

    def sample(self) -> np.ndarray:
        if len(self._perm) < self.batch_size:
            self._perm = np.concatenate([self._perm, self.rng.permutation(self.n)])
        batch, self._perm = self._perm[: self.batch_size], self._perm[self.batch_size :]
        return batch
