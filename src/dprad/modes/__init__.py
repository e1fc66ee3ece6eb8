"""Training modes, one file each, in one registry: adding a mode is one file plus one line here."""

from __future__ import annotations

from dprad.errors import DpradError
from dprad.modes.base import Mode, ModeDefaults
from dprad.modes.full import FullMode
from dprad.modes.head import HeadMode
from dprad.modes.lora import LoraMode

REGISTRY: dict[str, type[Mode]] = {m.name: m for m in (HeadMode, LoraMode, FullMode)}


def get_mode(name: str) -> type[Mode]:
    if name not in REGISTRY:
        raise DpradError(
            f"--mode '{name}' is not one of auto, {', '.join(REGISTRY)} (or dp-{'/dp-'.join(REGISTRY)})"
        )
    return REGISTRY[name]


__all__ = ["REGISTRY", "Mode", "ModeDefaults", "get_mode"]
