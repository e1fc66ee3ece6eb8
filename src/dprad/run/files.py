"""The files of a run directory and the one place they are parsed (with one-line errors naming the file)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dprad.errors import DpradError

if TYPE_CHECKING:
    import torch

CONFIG = "config.json"
PRIVACY = "privacy.json"  # written last: its presence marks a finished run
METRICS = "metrics.json"
SCHEMA = "schema.json"
SPLITS = "splits.json"
NOTES = "notes.json"
HISTORY = "history.json"
AUDIT = "audit.json"
REFERENCE = "reference.json"
EVALUATION = "evaluation.json"
OTHER_EVALUATIONS = "evaluation-*.json"  # a pattern: evaluations on other datasets (domain transfer)
EVALUATIONS = "evaluation*.json"  # a pattern: every evaluation of a run (evaluation.json and the others)
MODEL = "model"
CHECKPOINT = "checkpoint.pt"  # while training: the model, optimizer and sampler state (resumable)
# while training (and at a federated site, for its life): the secret DP key every noise draw comes from,
# owner-only; deleted when a run finishes, never exported (privacy/noise.py)
NOISE_KEY = "noise.key"

# an export (``dprad export``): what a run shares, and what marks a directory as one
MANIFEST = "MANIFEST.json"  # every file of the export, its SHA-256 and why it is safe to share
THRESHOLDS = "thresholds.json"  # the shipped thresholds (a run keeps them in metrics.json)
ENCODER = "encoder"  # the base encoder, bundled (a run names it in config.json's derived.model_dir)
MODEL_CARD = "MODEL_CARD.md"

# the weights of a run's model/ (``.pt``, torch pickles) or of an export's (``.safetensors``)
HEAD_WEIGHTS = "head"
CENTER_WEIGHTS = "center"  # LP-FT: the public feature centre the head's inputs are centred on

# every file a training run writes (a fresh start removes any left by an earlier run)
RUN_FILES = (PRIVACY, METRICS, HISTORY, SCHEMA, SPLITS, NOTES, AUDIT, REFERENCE)


def read_json(path: Path) -> Any:
    """One JSON file of a run: a clear one-line error when it is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DpradError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    except FileNotFoundError:
        raise DpradError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DpradError(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err})") from None


def read_object(path: Path) -> dict[str, Any]:
    """A run file that must hold a JSON object."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DpradError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw


# settings a run's config.json lacks when an older dprad wrote it, and the value that code used: a run
# directory's config is a whole dump, so a missing key means "before the setting existed", not "default"
WRITTEN_BEFORE: dict[tuple[str, str], Any] = {
    ("privacy", "threshold_default"): 0.5,  # the DP thresholds' default until it became a setting
    ("train", "select_epoch"): False,  # non-private fine-tuning shipped its last step
    ("model", "encoder_runtime"): "torch",  # the frozen encoder ran in torch fp32 before runtimes existed
}


def as_run_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A run directory's config.json with what an older dprad wrote filled in as that code behaved."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    for (section, key), value in WRITTEN_BEFORE.items():
        if isinstance(out.get(section), dict):
            out[section].setdefault(key, value)
    return out


def weights_file(model_dir: Path, stem: str) -> Path | None:
    """``model_dir/stem.safetensors`` (an export) or ``model_dir/stem.pt`` (a run), whichever is there."""
    for suffix in (".safetensors", ".pt"):
        if (model_dir / f"{stem}{suffix}").is_file():
            return model_dir / f"{stem}{suffix}"
    return None


def read_weights(model_dir: Path, stem: str) -> dict[str, torch.Tensor] | None:
    """The tensors of ``stem`` in a model folder, by name (a bare tensor saved as ``stem.pt`` is named
    ``stem``), or None when neither ``stem.safetensors`` nor ``stem.pt`` is there."""
    path = weights_file(model_dir, stem)
    if path is None:
        return None
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise DpradError(f"{path}: not a readable safetensors file ({err})") from None
    import torch

    obj = torch.load(path, weights_only=True)
    return dict(obj) if isinstance(obj, dict) else {stem: obj}


def as_written(obj: Any) -> Any:
    """``obj`` as it reads back after being written as JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(obj))


def mapping(x: object) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}
