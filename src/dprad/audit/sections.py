"""``RUN/audit.json`` holds one section per audit (``canary``, ``mia``, ``attribute``, ``extraction``):
each audit adds or replaces its own section and keeps the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dprad import io
from dprad.run import RunRecord, files


def write_sections(run: RunRecord, **sections: Any) -> dict[str, Any]:
    """Merge ``sections`` into the run's audit.json (atomically) and return the whole file's content,
    with the ledger's promise (``theory``) beside what the attacks measured."""
    led = run.ledger
    theory = {"private": led.private, "mode": run.mode, "epsilon": led.epsilon, "delta": led.delta}
    audit = {**run.audit_sections(), "run": str(run.path), "theory": theory, **sections}
    io.write_json(Path(run.path) / files.AUDIT, audit)
    return audit
