"""``dprad evaluate`` and ``dprad compare``: thin commands over :mod:`dprad.stages.evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dprad.commands.console import console, print_comparison, print_evaluation
from dprad.commands.options import DATA, FormatOpt, LabelsOpt
from dprad.errors import DpradError
from dprad.metrics.evaluation import EvalOptions

EVAL = EvalOptions()  # the defaults, defined once

ThresholdsOpt = Annotated[
    str,
    typer.Option(
        "--thresholds",
        help="val (default): the per-label thresholds the run ships with (fitted on its validation split, under DP for a private run), or 0.5",
    ),
]
BootOpt = Annotated[int, typer.Option("--bootstrap", help="patient-level bootstrap resamples")]
SplitOpt = Annotated[
    str, typer.Option("--split", help="auto (the run's test split if present in DATA, else all), test or all")
]
MapOpt = Annotated[
    str | None, typer.Option("--label-map", help="JSON {run label: data label} for another schema")
]


def _eval_options(
    thresholds: str, n_boot: int, split: str, label_map: str | None, **extra: Any
) -> EvalOptions:
    if n_boot < 1:
        raise DpradError("--bootstrap must be at least 1")
    return EvalOptions(thresholds=thresholds, n_boot=n_boot, split=split, label_map=label_map, **extra)


def evaluate(
    run: Annotated[Path, typer.Argument(help="a finished run directory")],
    data: Annotated[
        Path, typer.Argument(help="labelled reports (the run's own data, or another institution's)")
    ],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="metrics JSON")] = None,
    fmt: FormatOpt = DATA.format,
    labels: LabelsOpt = None,
    groups: Annotated[
        str | None, typer.Option(help="comma-separated attributes for subgroup metrics, e.g. sex,site,age")
    ] = None,
    thresholds: ThresholdsOpt = EVAL.thresholds,
    n_boot: BootOpt = EVAL.n_boot,
    split: SplitOpt = EVAL.split,
    label_map: MapOpt = None,
    temperature: Annotated[
        bool, typer.Option("--temperature", help="fit a temperature on the run's validation split")
    ] = False,
    min_group_size: Annotated[
        int, typer.Option("--min-group-size", help="groups smaller than this are flagged")
    ] = EVAL.min_group_size,
) -> None:
    """Per-label metrics with patient-level bootstrap CIs, calibration and subgroup gaps."""
    from dprad.io import write_json
    from dprad.stages.evaluate import evaluate_run

    opts = _eval_options(
        thresholds,
        n_boot,
        split,
        label_map,
        temperature=temperature,
        min_group_size=min_group_size,
        groups=tuple(g.strip() for g in (groups or "").split(",") if g.strip()),
    )
    from rich.progress import Progress

    with Progress(console=console, disable=not console.is_terminal) as bars:
        task = bars.add_task("scoring", total=None)
        res = evaluate_run(
            run,
            data,
            options=opts,
            format=fmt,
            labels_path=labels,
            progress=lambda done, total: bars.update(task, completed=done, total=total),
        )
    if out:
        write_json(out, res)
    print_evaluation(res)


def compare(
    run_a: Annotated[Path, typer.Argument(help="baseline run (e.g. non-private)")],
    run_b: Annotated[Path, typer.Argument(help="run to compare (e.g. eps = 1)")],
    data: Annotated[Path, typer.Argument(help="labelled reports")],
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
    fmt: FormatOpt = DATA.format,
    thresholds: ThresholdsOpt = EVAL.thresholds,
    n_boot: BootOpt = EVAL.n_boot,
    split: SplitOpt = EVAL.split,
) -> None:
    """B - A on the same reports and the same patient resamples: difference, 95% CI and p-value."""
    from dprad.io import write_json
    from dprad.stages.evaluate import compare_runs

    res = compare_runs(run_a, run_b, data, options=_eval_options(thresholds, n_boot, split, None), format=fmt)
    if out:
        write_json(out, res)
    print_comparison(res, run_a, run_b)


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` and ``compare`` to ``app``."""
    app.command()(evaluate)
    app.command()(compare)
