"""``dprad audit RUN``: the promised epsilon beside what attacks measure, in one table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from dprad.commands.console import render_audit


def audit(
    run: Path = typer.Argument(..., help="a finished run directory"),
    attack: str = typer.Option("loss,lira,rmia", "--attack", help="comma-separated: loss, lira, rmia"),
    reference_models: int = typer.Option(16, "--reference-models", help="k models trained on random halves"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="bootstrap resamples for the CIs"),
    seed: int = typer.Option(0, "--seed", help="seed of the reference models' halves and the bootstrap"),
) -> None:
    """Attack a finished run (membership inference, LiRA, RMIA) and write RUN/audit.json."""
    import numpy as np

    from dprad.audit.run_audit import audit_run
    from dprad.stages.train import train

    err = Console(stderr=True)
    result = audit_run(
        run,
        attacks=attack,
        reference_models=reference_models,
        rng=np.random.default_rng(seed),
        n_boot=bootstrap,
        on_progress=lambda msg: err.print(f"[dim]{msg}[/dim]"),
        train_fn=train,
    )
    render_audit(result, Console(width=160))


def register(app: typer.Typer) -> None:
    """Add ``audit`` to ``app``."""
    app.command("audit")(audit)
