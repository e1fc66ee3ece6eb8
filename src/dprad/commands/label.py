"""``dprad label``: label reports with a teacher (:mod:`dprad.labeling.dispatch`) and write a table. Its
``--llm-*`` flags come from :data:`dprad.commands.options.LLM_OPTIONS` (the LLM teacher's ``LLMConfig``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dprad.commands.console import console, counting, print_agreement, print_labelled, print_llm_summary
from dprad.commands.options import (
    DATA,
    LLM_OPTIONS,
    FormatOpt,
    IdColOpt,
    LabelsOpt,
    PatientColOpt,
    SchemaOpt,
    TextColOpt,
    flag_values,
    read_input,
    with_options,
)


@with_options(LLM_OPTIONS)
def label(
    path: Annotated[Path, typer.Argument(help="reports to label")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="output table: id, patient_id, text, one column per label")
    ],
    teacher: Annotated[
        str, typer.Option(help="rules (negation/uncertainty-aware), llm (local server) or gold")
    ] = "rules",
    fmt: FormatOpt = DATA.format,
    schema: SchemaOpt = DATA.schema,
    text_col: TextColOpt = DATA.text_col,
    id_col: IdColOpt = DATA.id_col,
    patient_col: PatientColOpt = DATA.patient_col,
    labels: LabelsOpt = None,
    gold_from: Annotated[
        Path | None,
        typer.Option(
            "--gold-from", help="a labelled table (id + label columns) to measure the teacher against"
        ),
    ] = None,
    agreement_out: Annotated[
        Path | None, typer.Option("--agreement-out", help="write the agreement report as JSON")
    ] = None,
    **flags: Any,
) -> None:
    """Label reports with a teacher and write one row per report (1 / 0 / -1 / blank); optionally measure it."""
    from dprad.data.provenance import write_record
    from dprad.data.table import reports_frame, write_table
    from dprad.labeling.dispatch import check_teacher, gold_for, label_reports, llm_config, measure

    check_teacher(teacher)
    result, sch, _ = read_input(path, fmt, schema, text_col, id_col, patient_col, None, labels)
    reports = result.reports
    llm = None
    if teacher == "llm":
        llm = llm_config(**flag_values(LLM_OPTIONS, flags, "llm"))
    labelled = label_reports(reports, sch, teacher, source=path, llm=llm, progress=counting)
    if labelled.llm_summary is not None:
        print_llm_summary(labelled.llm_summary)
    write_table(reports_frame(reports, sch, labels=labelled.labels), out)
    write_record(out, labelled.record)
    print_labelled(out, len(reports), result.skipped, labelled.unlabelled)
    gold_reports = None
    if gold_from is not None:
        gold_reports = read_input(gold_from, "auto", sch.name if schema is None else schema)[0].reports
    gold = gold_for(reports, labelled, gold_reports)
    if gold is not None and not any(
        t is not None and g is not None for t, g in zip(labelled.labels, gold, strict=True)
    ):
        console.print("[yellow]no report has both teacher and gold labels: no agreement measured[/yellow]")
        gold = None
    if gold is not None:
        report = measure(labelled, gold, reports, sch)
        if agreement_out:
            from dprad.io import write_json

            write_json(agreement_out, report)
        print_agreement(report, teacher)
    if labelled.llm_failed:
        # the table is written (rerun with the same --llm-cache to ask only for these), but a script must
        # not go on to train as if every report had labels
        console.print(f"[red]{labelled.llm_failed} reports were not labelled by the LLM teacher[/red]")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``label`` to ``app``."""
    app.command()(label)
