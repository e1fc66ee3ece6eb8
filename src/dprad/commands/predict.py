"""``dprad predict``: score reports with a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dprad.commands.console import console, counting
from dprad.commands.options import (
    DATA,
    FormatOpt,
    IdColOpt,
    LabelsOpt,
    PatientColOpt,
    TextColOpt,
    check_out_file,
    read_input,
)


def predict(
    run: Annotated[Path, typer.Argument(help="a finished run directory")],
    data: Annotated[Path, typer.Argument(help="reports to score")],
    out: Annotated[Path, typer.Option("--out", "-o", help="id, one probability column per label, loss")],
    fmt: FormatOpt = DATA.format,
    text_col: TextColOpt = DATA.text_col,
    id_col: IdColOpt = DATA.id_col,
    patient_col: PatientColOpt = DATA.patient_col,
    labels: LabelsOpt = None,
) -> None:
    """Score reports with a trained run: per-label probability and per-example loss (where labels are known)."""
    from dprad.data.table import write_table
    from dprad.modes import load_run

    check_out_file(out)  # before the model loads and scores: a bad path is known now
    predictor = load_run(run)
    result, _, _ = read_input(
        path=data,
        fmt=fmt,
        schema=None,
        text_col=text_col,
        id_col=id_col,
        patient_col=patient_col,
        labels=labels,
    )
    with counting("scoring", len(result.reports)) as done:
        preds = predictor.predict(result.reports, progress=done)
    write_table(preds.frame(predictor.schema), out)
    console.print(f"wrote {len(preds.ids)} rows to {out}")


def register(app: typer.Typer) -> None:
    """Add ``predict`` to ``app``."""
    app.command()(predict)
