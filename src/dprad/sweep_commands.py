"""``dprad sweep`` and ``dprad demo``: thin commands over :mod:`dprad.sweep` and :mod:`dprad.demo`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table


def results_table(df: Any, *, title: str = "") -> Table:
    """The sweep's results as a console table: one row per cell, F1 and AUROC with their 95% CIs."""
    t = Table(title=title or None)
    for col in (
        "cell",
        "mode",
        "eps target",
        "eps spent",
        "weighted F1 [95% CI]",
        "macro AUROC [95% CI]",
        "status",
        "s",
    ):
        t.add_column(col, justify="left" if col in ("cell", "mode", "status") else "right")
    for r in df.itertuples(index=False):
        status = str(r.status) + (" (reused)" if bool(r.reused) else "")
        if r.status == "failed":
            status = f"failed: {str(r.error)[:80]}"
        t.add_row(
            str(r.cell),
            str(r.mode),
            _eps(r.epsilon_target),
            _eps(r.epsilon_spent),
            _ci(r.weighted_f1, r.weighted_f1_low, r.weighted_f1_high),
            _ci(r.macro_auroc, r.macro_auroc_low, r.macro_auroc_high),
            status,
            "" if _nan(r.wall_s) else f"{r.wall_s:.0f}",
        )
    return t


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _eps(x: Any) -> str:
    if _nan(x):
        return "-"
    return "inf" if math.isinf(x) else f"{x:.3g}"


def _ci(est: Any, low: Any, high: Any) -> str:
    if _nan(est):
        return "-"
    if _nan(low):
        return f"{est:.3f}"
    return f"{est:.3f} [{low:.3f}, {high:.3f}]"


def register(app: typer.Typer) -> None:
    """Add ``dprad sweep`` and ``dprad demo`` to ``app``."""

    @app.command("sweep")
    def sweep(
        config: Annotated[
            Path, typer.Argument(help="sweep config (YAML): run sections + grid (see configs/)")
        ],
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="sweep folder (default: sweeps/<config name>)")
        ] = None,
        jobs: Annotated[int, typer.Option("--jobs", "-j", help="cells trained in parallel processes")] = 1,
    ) -> None:
        """Train and evaluate a grid of runs (datasets x models x modes x eps x seeds); resumable."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from dprad.sweep import SweepConfig, run_sweep

        err = Console(stderr=True)
        cfg = SweepConfig.load(config)
        folder = out or Path("sweeps") / config.stem
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        ) as bar:
            cells = bar.add_task(f"sweep {cfg.name}", total=None)
            steps = bar.add_task("  training", total=None, visible=jobs == 1)

            def on_cell(cell: str, done: int, total: int) -> None:
                bar.update(cells, completed=done, total=total, description=f"sweep {cfg.name}: {cell}")

            def on_step(info: Any) -> None:
                bar.update(steps, completed=info.step, total=info.steps)

            result = run_sweep(
                cfg, folder, jobs=jobs, progress=on_cell, on_step=on_step if jobs == 1 else None
            )
        Console(width=200).print(results_table(result.table(), title=f"sweep {cfg.name}: {folder}"))
        for note in result.notes:
            err.print(f"note: {note}")
        err.print(f"results: {result.results_csv} and {result.results_parquet}")
        err.print(f"privacy cost of choosing among the cells: {result.selection}")
        if result.report is not None:
            err.print(f"report: {result.report}")
        failed = sum(o.status == "failed" for o in result.outcomes)
        if failed:
            err.print(
                f"[red]{failed} of {len(result.outcomes)} cells failed[/red] (re-run the command to retry them)"
            )
            raise typer.Exit(1)

    @app.command("demo")
    def demo(
        out: Annotated[Path, typer.Option("--out", "-o", help="demo folder")] = Path("dprad-demo"),
        quick: Annotated[bool, typer.Option("--quick", help="a smaller corpus and fewer steps")] = False,
        jobs: Annotated[int, typer.Option("--jobs", "-j", help="cells trained in parallel processes")] = 1,
    ) -> None:
        """The main job end to end on a synthetic corpus: label, sweep eps, evaluate, audit, report."""
        from dprad.demo import run_demo

        run_demo(out, quick=quick, jobs=jobs)


__all__ = ["register", "results_table"]
