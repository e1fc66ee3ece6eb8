"""The files of a run directory and the one place they are parsed (with one-line errors naming the file)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dprad.errors import DpradError

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
MODEL = "model"

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


def as_written(obj: Any) -> Any:
    """``obj`` as it reads back after being written as JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(obj))


def mapping(x: object) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}
