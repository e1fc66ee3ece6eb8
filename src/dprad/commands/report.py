"""``dprad report`` and ``dprad model-card``: thin commands over :mod:`dprad.report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    runs: Annotated[
        list[Path],
        typer.Argument(help="run directories; a folder of runs (e.g. a sweep's) stands for the runs in it"),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write")] = Path("report.html"),
    sweep: Annotated[
        Path | None, typer.Option("--sweep", help="a sweep's results table (.csv or .parquet) to include")
    ] = None,
    title: Annotated[str | None, typer.Option(help="page title")] = None,
    label_noise: Annotated[
        Path | None,
        typer.Option(
            "--label-noise",
            help="a label noise x DP study (python bench/label_noise.py --out FILE) to include",
        ),
    ] = None,
) -> None:
    """One self-contained HTML page (opens offline): privacy-utility curve, per-label heat maps,
    calibration, subgroups, other datasets, audits and every DP parameter; with --label-noise, students
    trained on each teacher's labels at each eps, scored on gold."""
    from dprad.report.html import DEFAULT_TITLE, write_report

    path = write_report(runs, out, sweep_table=sweep, title=title or DEFAULT_TITLE, label_noise=label_noise)
    print(f"report: {path.resolve()}")


def model_card(
    run: Annotated[Path, typer.Argument(help="run directory")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="file to write (default: RUN/MODEL_CARD.md)")
    ] = None,
) -> None:
    """MODEL_CARD.md: intended use, data, privacy guarantee in words and numbers, metrics with CIs,
    known limits, and what differential privacy does not protect."""
    from dprad.report.model_card import write_model_card

    path = write_model_card(run, out)
    print(f"model card: {path.resolve()}")


def register(app: typer.Typer) -> None:
    """Add ``report`` and ``model-card`` to ``app``."""
    app.command("report")(report)
    app.command("model-card")(model_card)
