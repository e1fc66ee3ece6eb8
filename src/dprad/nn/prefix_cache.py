"""Frozen-prefix caching for LoRA in the top k layers of a BERT-family encoder.

With LoRA only in the last k of N layers, the embeddings and the first N - k layers are frozen: their
output for a report never changes during training. So they run once per report (``cache_hidden_states``,
like the head mode's features, without dropout and without gradients), and every DP step runs only the top
k layers over the cached hidden states (``PrefixLoraClassifier``). The DP step itself is unchanged: the
per-report map "report -> cached hidden states" is fixed and data-independent across reports, so
per-sample gradients of the top (opacus ``GradSampleModule`` on the classifier) are exactly those of the
whole model.

The LoRA adapter lives in the whole peft-wrapped encoder (``attach_top_lora``: peft's
``layers_to_transform``); ``split_encoder`` shares the top layers' modules with it (no copies), so after
training ``PrefixLoraClassifier.full_classifier(encoder)`` is the ordinary ``ReportClassifier`` over raw
token ids, and the adapter saves and loads as any other.

Supported: BERT, RoBERTa (XLM-R, CamemBERT) and ELECTRA (an ``embeddings`` module and an
``encoder.layer`` list). ALBERT is refused: all of its layers share one set of weights, so LoRA "in the top
k layers" would change the bottom ones too and the cache would go stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dprad.data.dataset import Encoded, collate, inference_batches
from dprad.errors import DpradError
from dprad.nn.device import scoring_tokens
from dprad.nn.model import ENCODER_TYPES, ReportClassifier, center_tensor, head_input, pool

PREFIX_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


def _base_model(encoder: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (LoRA layers injected), or the model itself."""
    get_base = getattr(encoder, "get_base_model", None)
    return get_base() if callable(get_base) else encoder


def _checked(encoder: nn.Module, k: int) -> tuple[nn.Module, nn.ModuleList]:
    model = _base_model(encoder)
    kind = str(getattr(getattr(model, "config", None), "model_type", ""))
    if kind == "albert":
        raise DpradError(
            "--lora-layers: ALBERT shares one set of layer weights across all its layers, so LoRA in the top "
            "layers would change the bottom ones too and a cached prefix would be wrong; use LoRA in all layers"
        )
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if kind not in PREFIX_TYPES or not isinstance(layers, nn.ModuleList) or not hasattr(model, "embeddings"):
        raise DpradError(
            f"--lora-layers: frozen-prefix caching supports {', '.join(PREFIX_TYPES)} encoders, not '{kind}'"
        )
    if not 1 <= k <= len(layers):
        raise DpradError(f"--lora-layers {k}: the encoder has {len(layers)} layers (use 1..{len(layers)})")
    return model, layers


def attach_top_lora(
    encoder: nn.Module,
    *,
    k: int,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: tuple[str, ...] | None = None,
) -> nn.Module:
    """Wrap the encoder with peft LoRA in its last ``k`` layers only; only the LoRA matrices are trainable."""
    from peft import LoraConfig, get_peft_model

    model, layers = _checked(encoder, k)
    kind = str(model.config.model_type)  # type: ignore[union-attr]
    targets = list(target_modules or ENCODER_TYPES[kind])
    n = len(layers)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        layers_to_transform=list(range(n - k, n)),
        layers_pattern="layer",
    )
    try:
        return get_peft_model(encoder, cfg)
    except ValueError as err:
        raise DpradError(f"--lora-targets {','.join(targets)}: {err}") from None


def _attention_mask(config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    """(B, T) 0/1 -> whatever the configured attention implementation takes (None, 4-D bool or additive)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)


def _run_layers(
    layers: Iterable[nn.Module], config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    mask = _attention_mask(config, hidden, attention_mask)
    for layer in layers:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out  # (B, T, H)
    return hidden


class EncoderBottom(nn.Module):
    """Embeddings and the first N - k layers: input_ids (B, T), attention_mask (B, T) -> (B, T, H)."""

    def __init__(self, model: nn.Module, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.config = model.config
        embeddings = model.embeddings
        assert isinstance(embeddings, nn.Module)
        self.embeddings: nn.Module = embeddings
        project = getattr(model, "embeddings_project", None)  # ELECTRA: embedding width -> H
        self.project: nn.Module | None = project if isinstance(project, nn.Module) else None
        self.layers = nn.ModuleList(layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids=input_ids)  # (B, T, E)
        if self.project is not None:
            hidden = self.project(hidden)  # (B, T, H)
        return _run_layers(self.layers, self.config, hidden, attention_mask)


class EncoderTop(nn.Module):
    """The last k layers (the encoder's own modules, shared): hidden (B, T, H), mask (B, T) -> (B, T, H)."""

    def __init__(self, config: Any, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _run_layers(self.layers, self.config, hidden, attention_mask)


def split_encoder(encoder: nn.Module, k: int) -> tuple[EncoderBottom, EncoderTop]:
    """(bottom: embeddings + layers [0, N - k), top: layers [N - k, N)), sharing the encoder's modules.

    The bottom must hold no trainable parameter (its output is cached): attach LoRA with
    ``attach_top_lora(encoder, k=k, ...)``, not to all layers.
    """
    model, layers = _checked(encoder, k)
    n = len(layers)
    bottom = EncoderBottom(model, list(layers[: n - k]))
    trainable = [name for name, p in bottom.named_parameters() if p.requires_grad]
    if trainable:
        raise DpradError(
            f"--lora-layers {k}: '{trainable[0]}' below the top {k} layers is trainable, so its output cannot be "
            "cached; attach LoRA to the top layers only (attach_top_lora) or freeze the bottom"
        )
    return bottom, EncoderTop(model.config, list(layers[n - k :]))


@dataclass(frozen=True)
class HiddenCache:
    """Every report's hidden states after the frozen bottom, stored flat: report i is
    ``flat[offsets[i]:offsets[i + 1]]``, (T_i, H). Indexing gives those per-report tensors."""

    flat: torch.Tensor  # (sum T_i, H)
    offsets: np.ndarray  # (N + 1,)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.flat[int(self.offsets[i]) : int(self.offsets[i + 1])]  # (T_i, H)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(
        self, idx: np.ndarray, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> hidden (B, T, H) zero-padded, attention_mask (B, T); T = longest report in ``idx``."""
        lengths = self.lengths[idx]
        t = int(lengths.max())
        hidden = torch.zeros((len(idx), t, self.flat.shape[1]), dtype=dtype)
        attention = torch.zeros((len(idx), t), dtype=torch.long)
        for row, i in enumerate(idx):
            hidden[row, : lengths[row]] = self[int(i)]
            attention[row, : lengths[row]] = 1
        if device is not None:
            hidden, attention = hidden.to(device, non_blocking=True), attention.to(device, non_blocking=True)
        return hidden, attention


def cache_hidden_states(
    bottom: nn.Module,
    enc: Encoded,
    *,
    max_tokens: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> HiddenCache:
    """Run the frozen bottom once over every report (length-sorted micro-batches, inference mode, eval
    mode: no dropout) and keep each report's unpadded hidden states, on the CPU in ``dtype``."""
    hidden_width = int(bottom.config.hidden_size)  # type: ignore[union-attr, arg-type]
    offsets = np.concatenate([[0], np.cumsum(enc.lengths)]).astype(np.int64)
    flat = torch.zeros((int(offsets[-1]), hidden_width), dtype=dtype)
    was_training = bottom.training
    bottom.eval()
    try:
        with torch.inference_mode():
            budget = scoring_tokens(max_tokens, torch.device(device))
            for idx in inference_batches(np.arange(len(enc)), enc.lengths, max_tokens=budget):
                input_ids, attention, _, _ = collate(enc, idx)
                h = bottom(input_ids.to(device), attention.to(device))  # (B, T, H)
                for row, i in enumerate(idx):
                    flat[offsets[i] : offsets[i + 1]] = h[row, : enc.lengths[i]].to("cpu", dtype)
    finally:
        bottom.train(was_training)
    return HiddenCache(flat=flat, offsets=offsets)


class PrefixLoraClassifier(nn.Module):
    """cached hidden (B, T, H) + mask (B, T) -> top k layers (LoRA) -> pooled (B, H) -> head -> logits (B, L)."""

    def __init__(
        self,
        top: EncoderTop,
        num_labels: int,
        *,
        pooling: str,
        prior_dim: int = 0,
        center: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.top = top
        self.pooling = pooling
        self.prior_dim = prior_dim
        self.head = nn.Linear(int(top.config.hidden_size) + prior_dim, num_labels)
        self.center: torch.Tensor | None
        self.register_buffer("center", None if center is None else center_tensor(center))

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, prior: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.top(hidden, attention_mask)  # (B, T, H)
        return self.head(head_input(pool(h, attention_mask, self.pooling), prior, self.center))  # (B, L)

    def full_classifier(self, encoder: nn.Module) -> ReportClassifier:
        """The same model over token ids: the whole (peft) encoder this top was split from, with this head."""
        center = None if self.center is None else self.center.cpu().numpy()
        full = ReportClassifier(
            encoder, self.head.out_features, pooling=self.pooling, prior_dim=self.prior_dim, center=center
        )
        full.head.load_state_dict(self.head.state_dict())
        return full
