"""``dprad sweep`` and ``dprad demo``: thin commands over :mod:`dprad.sweep` and :mod:`dprad.demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dprad.commands.console import console, results_table, sweep_progress


def sweep(
    config: Annotated[Path, typer.Argument(help="sweep config (YAML): run sections + grid (see configs/)")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="sweep folder (default: sweeps/<config name>)")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="cells trained in parallel processes")] = 1,
) -> None:
    """Train and evaluate a grid of runs (datasets x models x modes x eps x seeds); resumable."""
    from dprad.sweep import SweepConfig, run_sweep

    cfg = SweepConfig.load(config)
    folder = out or Path("sweeps") / config.stem
    with sweep_progress(cfg.name, steps=jobs == 1) as (on_cell, on_step):
        result = run_sweep(cfg, folder, jobs=jobs, progress=on_cell, on_step=on_step if jobs == 1 else None)
    Console(width=200).print(results_table(result.table(), title=f"sweep {cfg.name}: {folder}"))
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"results: {result.results_csv} and {result.results_parquet}")
    console.print(f"privacy cost of choosing among the cells: {result.selection}")
    if result.report is not None:
        console.print(f"report: {result.report}")
    failed = sum(o.status == "failed" for o in result.outcomes)
    if failed:
        console.print(
            f"[red]{failed} of {len(result.outcomes)} cells failed[/red] (re-run the command to retry them)"
        )
        raise typer.Exit(1)


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="demo folder")] = Path("dprad-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="a smaller corpus and fewer steps")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="cells trained in parallel processes")] = 1,
) -> None:
    """The main job end to end on a synthetic corpus: label, sweep eps, evaluate, audit, report."""
    from dprad.demo import run_demo

    run_demo(out, quick=quick, jobs=jobs)


def register(app: typer.Typer) -> None:
    """Add ``sweep`` and ``demo`` to ``app``."""
    app.command("sweep")(sweep)
    app.command("demo")(demo)
