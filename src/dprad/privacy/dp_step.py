"""One optimisation step, private or not, over a logical batch split into physical micro-batches.

The private step reads like the algorithm (Abadi et al., 2016): per-report gradients (opacus's
``GradSampleModule`` hooks compute them), clip each to ``max_grad_norm`` and accumulate across the
micro-batches, add Gaussian noise of std ``noise_multiplier * max_grad_norm`` once per logical batch,
scale by the *expected* batch size ``q * n`` (not the realised one, which would leak the batch size), step.

Patient-level DP (``groups=``): the privacy unit is the patient. Each sampled patient's per-report
gradients are summed into one gradient, which is clipped to ``max_grad_norm``; a patient with 20 reports
moves the model no more than a patient with one. The sampler must be Poisson over patients
(``dprad.data.sampling.PatientPoissonSampler``) and ``expected_batch_size`` the expected number of
patients, ``q * n_patients``.

Why not opacus's ``DPOptimizer``: its virtual-step machinery (``signal_skip_step`` / accumulated
iterations) cannot take an empty Poisson batch (no forward pass to hook), couples accumulation to its
own data loader, and clips rows of ``grad_sample`` only (no per-patient sums); the step below is the same
arithmetic as its ``clip_and_accumulate`` / ``add_noise`` / ``scale_grad`` with the accumulation explicit.
The per-sample gradients, the error-prone part, stay opacus's. The clip / noise arithmetic is done in
float32 whatever the parameters' dtype, and the noise comes from ``noise``, a stream of the run's secret
``privacy.noise.NoiseSource`` (hardened Gaussian draws on the CPU, moved to the accumulator's device).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from dprad.privacy.noise import NoiseStream

# per-example loss for the examples ``idx`` of one micro-batch -> (B,)
LossFn = Callable[[np.ndarray], torch.Tensor]


def per_sample_norms(grad_samples: Sequence[torch.Tensor]) -> torch.Tensor:
    """[(B, *p.shape)] -> (B,) the L2 norm of each example's whole gradient."""
    return torch.stack([g.flatten(1).norm(2, dim=1) for g in grad_samples], dim=1).norm(2, dim=1)


def clip_factors(grad_samples: Sequence[torch.Tensor], max_grad_norm: float) -> torch.Tensor:
    """[(B, *p.shape)] -> (B,) the factor min(1, C / norm) that clips each row's whole gradient to C."""
    return (max_grad_norm / (per_sample_norms(grad_samples) + 1e-6)).clamp(max=1.0)


def _backward(losses: torch.Tensor, params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Backward the summed per-example losses (B,) -> per-example gradients [(B, *p.shape)] in float32."""
    with warnings.catch_warnings():
        # opacus hooks the first trainable module, whose inputs (frozen embeddings) need no gradient
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        losses.sum().backward()
    grad_samples = [p.grad_sample.float() for p in params]  # type: ignore[attr-defined]
    for p in params:
        p.grad_sample = None  # type: ignore[attr-defined]
        p.grad = None
    return grad_samples


def _split_patients(batches: Sequence[np.ndarray], groups: np.ndarray) -> np.ndarray:
    """The patients whose reports sit in more than one micro-batch (their sums must wait for all of them)."""
    per_batch = [np.unique(groups[idx]) for idx in batches if len(idx)]
    if not per_batch:
        return np.empty(0, dtype=np.int64)
    patients, seen = np.unique(np.concatenate(per_batch), return_counts=True)
    return patients[seen > 1]


def clip_and_accumulate(
    params: Sequence[torch.nn.Parameter],
    batches: Sequence[np.ndarray],
    loss_fn: LossFn,
    *,
    max_grad_norm: float,
    groups: np.ndarray | None = None,
) -> tuple[list[torch.Tensor], float]:
    """The sum over the logical batch of clipped per-unit gradients (float32, one per parameter), and the
    summed loss. The unit is the example, or with ``groups`` (``groups[i]`` = patient of example ``i``) the
    patient: the per-example gradients of each patient are summed (across micro-batches) before clipping.

    Memory, patient level: a patient whose reports all fall into one micro-batch is summed and clipped
    there; only patients split across micro-batches are held, as (P_split, *p.shape) sums, to the end.
    """
    summed = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    total_loss = 0.0
    if groups is None:
        for idx in batches:
            losses = loss_fn(idx)  # (B,)
            grad_samples = _backward(losses, params)  # [(B, *p.shape)]
            factor = clip_factors(grad_samples, max_grad_norm)  # (B,)
            for acc, g in zip(summed, grad_samples, strict=True):
                acc += torch.einsum("b,b...->...", factor, g)
            total_loss += float(losses.detach().sum())
        return summed, total_loss

    groups = np.asarray(groups)
    split = _split_patients(batches, groups)  # (P_split,) sorted
    pending: list[torch.Tensor] | None = None  # [(P_split, *p.shape)] sums of the split patients
    for idx in batches:
        if len(idx) == 0:
            continue
        losses = loss_fn(idx)  # (B,)
        grad_samples = _backward(losses, params)  # [(B, *p.shape)]
        patients, inverse = np.unique(groups[idx], return_inverse=True)  # (P_mb,), (B,)
        inv = torch.from_numpy(inverse.astype(np.int64)).to(summed[0].device)  # (B,)
        per_patient = [  # [(P_mb, *p.shape)] each patient's summed gradient within this micro-batch
            torch.zeros((len(patients), *g.shape[1:]), dtype=g.dtype, device=g.device).index_add_(0, inv, g)
            for g in grad_samples
        ]
        is_split = np.isin(patients, split)  # (P_mb,)
        whole = torch.from_numpy(np.flatnonzero(~is_split)).to(inv.device)  # patients complete here
        factor = clip_factors([s[whole] for s in per_patient], max_grad_norm)  # (P_whole,)
        for acc, s in zip(summed, per_patient, strict=True):
            acc += torch.einsum("p,p...->...", factor, s[whole])
        if is_split.any():
            if pending is None:
                pending = [
                    torch.zeros((len(split), *p.shape), dtype=torch.float32, device=p.device) for p in params
                ]
            rows = np.flatnonzero(is_split)
            slots = torch.from_numpy(np.searchsorted(split, patients[rows])).to(inv.device)  # (P_here,)
            sel = torch.from_numpy(rows).to(inv.device)
            for buf, s in zip(pending, per_patient, strict=True):
                buf.index_add_(0, slots, s[sel])
        total_loss += float(losses.detach().sum())
    if pending is not None:
        factor = clip_factors(pending, max_grad_norm)  # (P_split,)
        for acc, buf in zip(summed, pending, strict=True):
            acc += torch.einsum("p,p...->...", factor, buf)
    return summed, total_loss


def gaussian_noise(summed: Sequence[torch.Tensor], *, std: float, noise: NoiseStream) -> list[torch.Tensor]:
    """One draw of N(0, std^2) per coordinate, parameter by parameter (the order fixes the stream)."""
    if std <= 0:
        return [torch.zeros_like(acc) for acc in summed]
    return noise.gaussian_like(summed, std=std)


def apply_step(
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    noised: Sequence[torch.Tensor],
    *,
    expected_batch_size: float,
) -> None:
    """Scale the noised sum by the expected batch size (in units), set it as the gradient, step."""
    for p, g in zip(params, noised, strict=True):
        p.grad = (g / expected_batch_size).to(p.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def private_step(
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batches: Sequence[np.ndarray],
    loss_fn: LossFn,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    noise: NoiseStream,
    groups: np.ndarray | None = None,
) -> float:
    """One DP-SGD step; returns the summed (unnoised) loss of the batch, for logging inside the institution.

    ``groups`` (patient-level DP): ``groups[i]`` is the patient index of example ``i``, for every index in
    ``batches`` (pass the whole training set's array); ``expected_batch_size`` is then ``q * n_patients``.
    """
    summed, total_loss = clip_and_accumulate(
        params, batches, loss_fn, max_grad_norm=max_grad_norm, groups=groups
    )
    drawn = gaussian_noise(summed, std=noise_multiplier * max_grad_norm, noise=noise)
    apply_step(
        params,
        optimizer,
        [acc + z for acc, z in zip(summed, drawn, strict=True)],
        expected_batch_size=expected_batch_size,
    )
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
