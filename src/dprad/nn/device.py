"""Where torch runs: the device a run asks for, bf16 autocast on a GPU, and the token budget of a
no-grad scoring pass."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when one is present, else the CPU; or ``cpu`` / ``cuda[:i]``."""
    from dprad.errors import DpradError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DpradError(f"--device '{name}' must be auto, cpu or cuda[:i]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DpradError(f"--device {name}: no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        raise DpradError(f"--device '{name}' must be auto, cpu or cuda[:i]")
    return device


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast for the encoder's forward pass on a GPU; a no-op on the CPU. Per-sample gradients,
    clipping and noise stay in fp32 (dprad.privacy.dp_step)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# Tokens per scoring forward pass on a CPU. Training's max_tokens (8,192 by default) bounds memory; on a
# CPU a forward pass that large runs slower per token than smaller ones. bench/score_batching.py measures
# it on synthetic (public) reports, side by side in one run; the number is in the README.
CPU_SCORING_TOKENS = 2048


def scoring_tokens(max_tokens: int, device: torch.device) -> int:
    """Token budget of one no-grad forward pass: ``max_tokens``, capped at ``CPU_SCORING_TOKENS`` on a CPU."""
    return min(max_tokens, CPU_SCORING_TOKENS) if device.type == "cpu" else max_tokens
