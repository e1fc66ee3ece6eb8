"""One optimisation step, private or not, over a logical batch split into physical micro-batches.

The private step reads like the algorithm (Abadi et al., 2016): per-report gradients (opacus's
``GradSampleModule`` hooks compute them), clip each to ``max_grad_norm`` and accumulate across the
micro-batches, add Gaussian noise of std ``noise_multiplier * max_grad_norm`` once per logical batch,
scale by the *expected* batch size ``q * n`` (not the realised one, which would leak the batch size), step.

Why not opacus's ``DPOptimizer``: its virtual-step machinery (``signal_skip_step`` / accumulated
iterations) cannot take an empty Poisson batch (no forward pass to hook) and couples accumulation to its
own data loader; the step below is the same arithmetic as its ``clip_and_accumulate`` / ``add_noise`` /
``scale_grad`` with the accumulation explicit. The per-sample gradients, the error-prone part, stay opacus's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

# per-example loss for the examples ``idx`` of one micro-batch -> (B,)
LossFn = Callable[[np.ndarray], torch.Tensor]


def per_sample_norms(grad_samples: Sequence[torch.Tensor]) -> torch.Tensor:
    """[(B, *p.shape)] -> (B,) the L2 norm of each example's whole gradient."""
    return torch.stack([g.reshape(len(g), -1).norm(2, dim=1) for g in grad_samples], dim=1).norm(2, dim=1)


def private_step(
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batches: Sequence[np.ndarray],
    loss_fn: LossFn,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: torch.Generator,
) -> float:
    """One DP-SGD step; returns the summed (unnoised) loss of the batch, for logging inside the institution."""
    summed = [torch.zeros_like(p) for p in params]
    total_loss = 0.0
    for idx in batches:
        losses = loss_fn(idx)  # (B,)
        with warnings.catch_warnings():
            # opacus hooks the first trainable module, whose inputs (frozen embeddings) need no gradient
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses.sum().backward()
        grad_samples = [p.grad_sample for p in params]  # type: ignore[attr-defined]  # [(B, *p.shape)]
        factor = (max_grad_norm / (per_sample_norms(grad_samples) + 1e-6)).clamp(max=1.0)  # (B,)
        for acc, g in zip(summed, grad_samples, strict=True):
            acc += torch.einsum("b,b...->...", factor, g)
        for p in params:
            p.grad_sample = None  # type: ignore[attr-defined]
            p.grad = None
        total_loss += float(losses.detach().sum())
    std = noise_multiplier * max_grad_norm
    for p, acc in zip(params, summed, strict=True):
        noise = torch.normal(0.0, std, size=acc.shape, generator=generator) if std > 0 else 0.0
        p.grad = (acc + noise) / expected_batch_size
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss


def plain_step(
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batches: Sequence[np.ndarray],
    loss_fn: LossFn,
    *,
    batch_size: int,
) -> float:
    """One non-private step: the mean loss over the logical batch, accumulated across micro-batches."""
    total_loss = 0.0
    for idx in batches:
        losses = loss_fn(idx)
        (losses.sum() / max(batch_size, 1)).backward()
        total_loss += float(losses.detach().sum())
    if batches:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    del params
    return total_loss
