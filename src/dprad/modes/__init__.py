"""Training modes, one file each, in one registry: adding a mode is one file plus one line here."""

from __future__ import annotations

from pathlib import Path

from dprad.errors import DpradError
from dprad.modes.base import Mode, ModeDefaults
from dprad.modes.full import FullMode
from dprad.modes.head import HeadMode
from dprad.modes.lora import LoraMode
from dprad.modes.predictor import Predictor
from dprad.run import RunRecord
from dprad.run.files import HEAD_WEIGHTS, weights_file

REGISTRY: dict[str, type[Mode]] = {m.name: m for m in (HeadMode, LoraMode, FullMode)}


def get_mode(name: str) -> type[Mode]:
    if name not in REGISTRY:
        raise DpradError(
            f"--mode '{name}' is not one of auto, {', '.join(REGISTRY)} (or dp-{'/dp-'.join(REGISTRY)})"
        )
    return REGISTRY[name]


def load_run(run: str | Path | RunRecord, *, feature_cache: bool = False) -> Predictor:
    """Rebuild the classifier of a finished run directory (or of its export) in one call (the mode registry
    knows how). ``feature_cache``: see :meth:`Mode.load` (evaluation only, never serving)."""
    record = run if isinstance(run, RunRecord) else RunRecord.open(run)
    if weights_file(record.model_path, HEAD_WEIGHTS) is None:  # head.safetensors (an export) or head.pt
        raise DpradError(f"{record.path}: not a finished dprad run directory (no model/head.pt)")
    return get_mode(record.mode).load(record, feature_cache=feature_cache)


__all__ = ["REGISTRY", "Mode", "ModeDefaults", "Predictor", "get_mode", "load_run"]
