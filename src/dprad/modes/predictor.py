"""A trained classifier ready for inference: per-label probabilities and per-example loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from scipy.special import expit

from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema
from dprad.nn.loss import loss_per_example


@dataclass(frozen=True)
class Predictions:
    ids: list[str]
    probs: np.ndarray  # (N, L)
    loss: np.ndarray | None  # (N,) per-example loss where labels are known, else NaN

    def frame(self, schema: LabelSchema) -> pd.DataFrame:
        df = pd.DataFrame(self.probs, columns=list(schema.labels))
        df.insert(0, "id", self.ids)
        df["loss"] = self.loss if self.loss is not None else np.nan
        return df


# Reports scored per call of a mode's logits: the feature pass's chunk (dprad.nn.feature_cache.FEATURE_CHUNK)
PREDICT_BLOCK = 2048

# reports -> (logits (N, L), their encoding, whose targets / mask give the per-example loss)
LogitsFn = Callable[[Sequence[Report]], tuple[np.ndarray, "Labelled"]]


class Labelled(Protocol):
    """What the loss reads of the reports scored: an :class:`~dprad.data.dataset.Encoded`, or only the
    labels (``dprad.modes.head.Targets``) where no token ids were needed."""

    targets: np.ndarray  # (N, L)
    mask: np.ndarray  # (N, L)


class Predictor:
    """A trained classifier ready for inference: no gradients, length-sorted micro-batches. Each mode
    supplies how reports become logits (see ``dprad.modes``)."""

    def __init__(self, logits: LogitsFn, *, schema: LabelSchema, mode: str, tokenizer: Any = None) -> None:
        self._logits, self.schema, self.mode, self.tokenizer = logits, schema, mode, tokenizer

    def predict(
        self,
        reports: Sequence[Report],
        *,
        progress: Callable[[int], None] | None = None,
        block: int | None = None,
    ) -> Predictions:
        """Scores of ``reports``, ``block`` reports at a time (default :data:`PREDICT_BLOCK`: no more than
        one block's token ids held at once, whatever N); ``progress(done)`` after each block."""
        block = block or PREDICT_BLOCK
        if not reports:
            return Predictions([], np.zeros((0, len(self.schema)), dtype=np.float32), np.zeros(0))
        probs, losses = [], []
        for lo in range(0, len(reports), block):
            part = reports[lo : lo + block]
            logits, enc = self._logits(part)  # (n, L)
            loss = loss_per_example(torch.from_numpy(logits), enc.targets, enc.mask).numpy()  # (n,)
            probs.append(expit(logits))
            losses.append(np.where([r.labels is not None for r in part], loss, np.nan))
            if progress is not None:
                progress(lo + len(part))
        return Predictions([r.id for r in reports], np.concatenate(probs), np.concatenate(losses))
