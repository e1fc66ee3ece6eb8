"""The sweep's own files in a cell's run directory: ``cell.json`` (the cell's spec, attempts, status and
last error) and ``done.json`` (written last). They are the sweep's, not the run's: the run's own files are
read only through :class:`dprad.run.RunRecord`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dprad import io
from dprad.run.files import EVALUATION, PRIVACY

CELL = "cell.json"
DONE = "done.json"


@dataclass(frozen=True)
class CellOutcome:
    """What running one cell came to (``run_cell``), as the results table records it."""

    cell: str
    status: str  # done | failed
    error: str
    wall_s: float | None
    reused: bool
    attempts: int


def read_state(path: Path) -> dict[str, Any]:
    """``cell.json`` or ``done.json``; missing or unreadable reads as empty (the cell is then redone)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def write_cell_state(
    run_dir: Path, spec: dict[str, Any], attempts: int, status: str, error: str = ""
) -> None:
    io.write_json(run_dir / CELL, {"spec": spec, "attempts": attempts, "status": status, "error": error})


def cell_finished(run_dir: Path) -> bool:
    """The cell's run finished, was evaluated, and the sweep marked it done."""
    return all((run_dir / f).is_file() for f in (DONE, PRIVACY, EVALUATION))
