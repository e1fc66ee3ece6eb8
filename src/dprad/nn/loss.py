"""The per-example loss every mode trains on."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def loss_per_example(logits: torch.Tensor, targets: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """Masked binary cross-entropy summed over the labels: (B, L) -> (B,).

    Summed, not averaged, so that one report's gradient norm does not shrink with the number of labels
    (which would leave the clipping norm far above the gradients and waste the noise).
    """
    y = torch.from_numpy(targets).to(logits.device, logits.dtype)  # (B, L)
    m = torch.from_numpy(mask).to(logits.device, logits.dtype)  # (B, L)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (B, L)
    return (bce * m).sum(-1)
