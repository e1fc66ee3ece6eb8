"""A trained classifier ready for inference: per-label probabilities and per-example loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import expit

from dprad.data.dataset import Encoded
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema
from dprad.features import loss_per_example


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


# reports -> (logits (N, L), their encoding, whose targets / mask give the per-example loss)
LogitsFn = Callable[[Sequence[Report]], tuple[np.ndarray, Encoded]]


class Predictor:
    """A trained classifier ready for inference: no gradients, length-sorted micro-batches. Each mode
    supplies how reports become logits (see ``dprad.modes``)."""

    def __init__(self, logits: LogitsFn, *, schema: LabelSchema, mode: str, tokenizer: Any = None) -> None:
        self._logits, self.schema, self.mode, self.tokenizer = logits, schema, mode, tokenizer

    def predict(self, reports: Sequence[Report]) -> Predictions:
        if not reports:
            return Predictions([], np.zeros((0, len(self.schema)), dtype=np.float32), np.zeros(0))
        logits, enc = self._logits(reports)
        loss = loss_per_example(torch.from_numpy(logits), enc.targets, enc.mask).numpy()
        has_labels = np.array([r.labels is not None for r in reports])
        return Predictions([r.id for r in reports], expit(logits), np.where(has_labels, loss, np.nan))
