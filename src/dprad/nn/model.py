"""The classifier: a local Hugging Face encoder, a pooling choice, LoRA (peft) and a multi-label head."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dprad.config import POOLINGS, Pooling
from dprad.errors import DpradError
from dprad.local_models import declared_pooling, resolve_model_dir
from dprad.nn.inputs import PRIOR_NORM

ENCODER_TYPES = {
    "bert": ("query", "value"),
    "albert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "camembert": ("query", "value"),
    "electra": ("query", "value"),
    "deberta": ("in_proj",),
    "deberta-v2": ("query_proj", "value_proj"),
    "distilbert": ("q_lin", "v_lin"),
    "mpnet": ("q", "v"),
}


def encoder_type(model_dir: Path) -> str:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    kind = str(getattr(cfg, "model_type", ""))
    if kind not in ENCODER_TYPES or getattr(cfg, "is_decoder", False):
        raise DpradError(
            f"--model {model_dir}: model type '{kind}' is not a supported encoder ({', '.join(sorted(ENCODER_TYPES))})"
        )
    return kind


def resolve_pooling(pooling: str, model_dir: Path) -> Pooling:
    """``auto`` -> what the checkpoint was trained with (sentence-transformers declare it), else CLS."""
    if pooling not in POOLINGS:  # a config refuses it when built; this guards direct callers
        raise DpradError(f"--pooling '{pooling}' must be one of {', '.join(POOLINGS)}")
    if pooling == "mean" or pooling == "cls":
        return pooling
    return declared_pooling(model_dir) or "cls"


def load_encoder(model_dir: Path) -> nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    encoder_type(model_dir)
    level, bars_off = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled() is False
    hf_logging.set_verbosity_error()  # the unused pooler weights are expected: dprad pools itself
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(level)
        if not bars_off:
            hf_logging.enable_progress_bar()
    return model


def hidden_size(encoder: nn.Module) -> int:
    """The encoder's hidden width H (works through peft wrappers)."""
    return int(encoder.config.hidden_size)  # type: ignore[union-attr, arg-type]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H)."""
    if how == "cls":
        return hidden[:, 0]
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class ReportClassifier(nn.Module):
    """encoder -> pooled (B, H) [+ public prior inputs (B, P)] -> linear head -> logits (B, L).

    With ``center`` (LP-FT: the head came from the head mode's probe) the head reads exactly what the probe
    read: the pooled output centred on the public mean and scaled to unit norm, beside the prior block,
    the row rescaled as :func:`dprad.priors.combine_features` does (:func:`probe_inputs`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int,
        *,
        pooling: str,
        prior_dim: int = 0,
        center: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.prior_dim = prior_dim
        hidden = hidden_size(encoder)
        self.head = nn.Linear(hidden + prior_dim, num_labels)
        self.center: torch.Tensor | None
        self.register_buffer("center", None if center is None else center_tensor(center))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prior: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        return self.head(head_input(pool(h, attention_mask, self.pooling), prior, self.center))  # (B, L)


def center_tensor(center: np.ndarray) -> torch.Tensor:
    """A public feature centre as a float32 buffer of its own: (H,)."""
    return torch.from_numpy(np.asarray(center, dtype=np.float32).copy())  # (H,)


def with_prior(pooled: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
    """(B, H) [+ (B, P)] -> (B, H + P): the head reads the public rule readings beside the encoder."""
    return pooled if prior is None else torch.cat([pooled, prior.to(pooled.dtype)], dim=-1)


def probe_inputs(pooled: torch.Tensor, prior: torch.Tensor | None, center: torch.Tensor) -> torch.Tensor:
    """The head mode's input rows, differentiably (the tensor twin of ``modes.head.head_x``):
    (B, H) pooled -> centred on the public mean (H,), unit norm [| (B, 4L) prior block] / sqrt(1 + PN^2)."""
    x = pooled.float() - center  # (B, H), fp32 even under bf16 autocast
    x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    if prior is None:
        return x
    return torch.cat([x, prior.to(x.dtype)], dim=-1) / math.sqrt(1.0 + PRIOR_NORM**2)  # (B, H + 4L)


def head_input(pooled: torch.Tensor, prior: torch.Tensor | None, center: torch.Tensor | None) -> torch.Tensor:
    """What the classification head reads: the probe's inputs after LP-FT (``center`` given), else the
    pooled output beside the prior block."""
    return with_prior(pooled, prior) if center is None else probe_inputs(pooled, prior, center)


class FeatureHead(nn.Module):
    """The head alone, over frozen pooled features that were centred on a public mean and L2-normalised:
    (B, H) -> (B, L). ``center`` is kept as a buffer so that a saved head carries it."""

    def __init__(self, hidden: int, num_labels: int, *, center: np.ndarray | None = None) -> None:
        super().__init__()
        self.head = nn.Linear(hidden, num_labels)
        c = torch.zeros(hidden) if center is None else torch.from_numpy(np.asarray(center, dtype=np.float32))
        self.register_buffer("center", c)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


def attach_lora(
    encoder: nn.Module,
    *,
    kind: str,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: tuple[str, ...] | None,
) -> nn.Module:
    """Wrap the encoder with peft LoRA; only the LoRA matrices stay trainable."""
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules or ENCODER_TYPES[kind])
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    try:
        return get_peft_model(encoder, cfg)
    except ValueError as err:
        raise DpradError(f"--lora-targets {','.join(targets)}: {err}") from None


def freeze_for_dp_full(encoder: nn.Module) -> None:
    """Full fine-tuning under DP: position / token-type embeddings take [1, T]-shaped ids that break
    per-sample gradients, so they (and the shared word embeddings) stay frozen."""
    for name, p in encoder.named_parameters():
        if "embeddings" in name:
            p.requires_grad_(False)


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "FeatureHead",
    "ReportClassifier",
    "attach_lora",
    "encoder_type",
    "load_encoder",
    "pool",
    "resolve_model_dir",
    "resolve_pooling",
]
