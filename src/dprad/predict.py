"""Load a run directory and predict: per-label probabilities and per-example loss."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from torch import nn

from dprad.data.dataset import collate, encode, micro_batches
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema, UncertainPolicy
from dprad.errors import DpradError
from dprad.features import encoder_features, head_inputs, loss_per_example


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


class Predictor:
    """A trained classifier ready for inference (no gradients, length-sorted micro-batches)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        tokenizer: Any,
        schema: LabelSchema,
        pooling: str,
        mode: str,
        max_length: int,
        max_tokens: int = 8192,
        encoder: nn.Module | None = None,
        uncertain_policy: UncertainPolicy = UncertainPolicy.ONES,
    ) -> None:
        self.model, self.tokenizer, self.schema = model, tokenizer, schema
        self.pooling, self.mode, self.max_length, self.max_tokens = pooling, mode, max_length, max_tokens
        self.encoder = encoder  # set for head-only runs: the frozen feature extractor
        self.uncertain_policy = uncertain_policy

    def predict(self, reports: Sequence[Report]) -> Predictions:
        enc = encode(
            reports, self.tokenizer, self.schema, max_length=self.max_length, policy=self.uncertain_policy
        )
        logits = np.zeros((len(reports), len(self.schema)), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            if self.encoder is not None:
                feats = encoder_features(self.encoder, enc, pooling=self.pooling, max_tokens=self.max_tokens)
                center = self.model.center.numpy()  # type: ignore[operator]
                logits[:] = self.model(torch.from_numpy(head_inputs(feats, center))).numpy()
            else:
                for idx in micro_batches(np.arange(len(enc)), enc.lengths, max_tokens=self.max_tokens):
                    input_ids, attention, _, _ = collate(enc, idx)
                    logits[idx] = self.model(input_ids, attention).float().numpy()
            t = torch.from_numpy(logits)
            loss = loss_per_example(t, enc.targets, enc.mask).numpy()
        self.model.train(was_training)
        has_labels = np.array([r.labels is not None for r in reports])
        loss = np.where(has_labels, loss, np.nan)
        return Predictions([r.id for r in reports], expit(logits), loss)


def load_run(run_dir: str | Path) -> Predictor:
    """Rebuild the classifier of a finished run directory in one call."""
    from dprad.local_models import load_tokenizer
    from dprad.model import FeatureHead, ReportClassifier, hidden_size, load_encoder

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "model" / "head.pt").is_file():
        raise DpradError(f"{run_dir}: not a finished dprad run directory (no config.json / model/head.pt)")
    cfg = json.loads((run_dir / "config.json").read_text())
    schema = LabelSchema.from_dict(json.loads((run_dir / "schema.json").read_text()), source=str(run_dir))
    model_dir = Path(cfg["derived"]["model_dir"])
    mode, pooling = cfg["train"]["mode"], cfg["model"]["pooling"]
    encoder = load_encoder(model_dir)
    head_state = torch.load(run_dir / "model" / "head.pt", weights_only=True)
    if mode in ("dp-lora", "lora"):
        from peft import PeftModel

        encoder = PeftModel.from_pretrained(encoder, str(run_dir / "model" / "adapter"))
    elif mode in ("dp-full", "full"):
        encoder = load_encoder(run_dir / "model" / "encoder")
    model: nn.Module
    if mode in ("dp-head", "head"):
        model = FeatureHead(hidden_size(encoder), len(schema))
        model.load_state_dict(head_state)
    else:
        model = ReportClassifier(encoder, len(schema), pooling=pooling)
        model.head.load_state_dict(head_state)
    return Predictor(
        model,
        tokenizer=load_tokenizer(str(model_dir)),
        schema=schema,
        pooling=pooling,
        mode=mode,
        max_length=int(cfg["model"]["max_length"]),
        max_tokens=int(cfg["train"]["max_tokens"]),
        encoder=encoder if mode in ("dp-head", "head") else None,
        uncertain_policy=UncertainPolicy(cfg["data"]["uncertain_policy"]),
    )
