"""Load a run directory and predict: per-label probabilities and per-example loss."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import expit

from dprad.data.dataset import Encoded
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema
from dprad.errors import DpradError
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


def load_run(run_dir: str | Path) -> Predictor:
    """Rebuild the classifier of a finished run directory in one call (the mode registry knows how)."""
    from dprad.config import MODE_ALIASES
    from dprad.modes import get_mode

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "model" / "head.pt").is_file():
        raise DpradError(f"{run_dir}: not a finished dprad run directory (no config.json / model/head.pt)")
    cfg = json.loads((run_dir / "config.json").read_text())
    schema = LabelSchema.from_dict(json.loads((run_dir / "schema.json").read_text()), source=str(run_dir))
    mode = cfg["train"]["mode"]
    return get_mode(MODE_ALIASES.get(mode, mode)).load(run_dir, cfg, schema)
