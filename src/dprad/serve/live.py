"""A monitor reference of live traffic (``dprad serve --record-reference DIR``): scores only, no text."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from dprad.data.schemas import LabelSchema
from dprad.io import write_json
from dprad.metrics.drift import reference_from_arrays, text_features
from dprad.run.files import REFERENCE


class LiveReference:
    """Scores, word counts and OOV rates of served reports, written as a monitor reference (no text)."""

    def __init__(
        self,
        directory: Path,
        *,
        schema: LabelSchema,
        thresholds: np.ndarray,
        rule: str,
        vocab: Collection[str],
    ) -> None:
        self.path = Path(directory) / REFERENCE
        self.schema, self.thresholds, self.rule, self.vocab = schema, thresholds, rule, vocab
        self.probs: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.oov: list[np.ndarray] = []
        self.unwritten = 0

    def add(self, texts: Sequence[str], probs: np.ndarray) -> None:
        lengths, oov = text_features(texts, self.vocab)
        self.probs.append(probs)
        self.lengths.append(lengths)
        self.oov.append(oov)
        self.unwritten += len(texts)

    def write(self) -> None:
        if not self.probs:
            return
        ref = reference_from_arrays(
            np.concatenate(self.probs),
            np.concatenate(self.lengths),
            np.concatenate(self.oov),
            labels=self.schema.labels,
            critical=self.schema.critical,
            thresholds=self.thresholds,
            threshold_rule=self.rule,
            source="live traffic",
        )
        write_json(self.path, ref)
        self.unwritten = 0
