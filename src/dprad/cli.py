"""The ``dprad`` command line: one thin command per job (parse -> call one library function -> write)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dprad.errors import DpradError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Differentially private radiology-report classifiers."
)
data_app = typer.Typer(no_args_is_help=True, help="Look at report corpora.")
app.add_typer(data_app, name="data")
console = Console(stderr=True)

FormatOpt = Annotated[
    str,
    typer.Option(
        "--format", "-f", help="auto, csv, jsonl, parquet, iu-xray, ct-rate, ct-rate-manual, mimic-cxr"
    ),
]
SchemaOpt = Annotated[
    str | None,
    typer.Option("--schema", help="chexpert14, ctrate18 or a YAML/JSON schema file (default: the format's)"),
]
TextColOpt = Annotated[str, typer.Option("--text-col", help="text column of a plain table")]
IdColOpt = Annotated[str, typer.Option("--id-col", help="report id column of a plain table")]
PatientColOpt = Annotated[
    str | None, typer.Option("--patient-col", help="patient id column (default: patient_id if present)")
]
SplitColOpt = Annotated[
    str | None, typer.Option("--split-col", help="column holding fixed train/val/test splits")
]
LabelsOpt = Annotated[
    Path | None,
    typer.Option("--labels", help="CT-RATE labels CSV / MIMIC-CXR chexpert CSV if not in the usual place"),
]


def _read(
    path: Path,
    fmt: str,
    schema: str | None,
    text_col: str = "text",
    id_col: str = "id",
    patient_col: str | None = None,
    split_col: str | None = None,
    labels: Path | None = None,
) -> Any:
    from dprad.data.read import read_reports
    from dprad.data.schemas import load_schema

    return read_reports(
        path,
        format=fmt,
        schema=load_schema(schema) if schema else None,
        text_col=text_col,
        id_col=id_col,
        patient_col=patient_col,
        split_col=split_col,
        labels_path=labels,
    )


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="output table (.csv, .jsonl or .parquet)")] = Path(
        "synth_cxr.csv"
    ),
    modality: Annotated[str, typer.Option(help="cxr (chexpert14 labels) or ct (ctrate18 labels)")] = "cxr",
    patients: Annotated[int, typer.Option(help="number of patients (each has one or more reports)")] = 1500,
    seed: Annotated[int, typer.Option(help="random seed: the corpus is a pure function of the options")] = 0,
    prevalence: Annotated[
        list[str] | None,
        typer.Option(help="override a label's prevalence, e.g. --prevalence 'Pneumothorax=0.005'"),
    ] = None,
) -> None:
    """Write a synthetic corpus of chest X-ray or chest CT reports with known labels."""
    from dprad.data.synth import SynthConfig, generate_reports, schema_for
    from dprad.data.table import reports_frame, write_table

    if modality not in {"cxr", "ct"}:
        raise DpradError(f"--modality '{modality}' must be cxr or ct")
    if patients < 1:
        raise DpradError("--patients must be at least 1")
    overrides: dict[str, float] = {}
    for item in prevalence or []:
        name, sep, value = item.rpartition("=")
        try:
            overrides[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not 0 <= overrides.get(name, -1) <= 1:
            raise DpradError(f"--prevalence '{item}' must be LABEL=RATE with RATE in [0, 1]")
    try:
        cfg = SynthConfig(modality=modality, n_patients=patients, seed=seed, prevalence=overrides)
        reports = generate_reports(cfg)
    except ValueError as err:
        raise DpradError(f"--prevalence: {err}") from None
    write_table(reports_frame(reports, schema_for(modality)), out)
    console.print(f"wrote {len(reports)} reports of {patients} patients to {out}")


@data_app.command("inspect")
def data_inspect(
    path: Annotated[Path, typer.Argument(help="a table, an IU/CT-RATE CSV or a MIMIC-CXR folder")],
    fmt: FormatOpt = "auto",
    schema: SchemaOpt = None,
    text_col: TextColOpt = "text",
    id_col: IdColOpt = "id",
    patient_col: PatientColOpt = None,
    split_col: SplitColOpt = None,
    labels: LabelsOpt = None,
    seed: Annotated[int, typer.Option(help="split seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
) -> None:
    """Counts, label prevalence per patient-level split, token lengths and problems found."""
    from dprad.data.inspect import inspect_reports

    result, sch, used = _read(path, fmt, schema, text_col, id_col, patient_col, split_col, labels)
    ins = inspect_reports(result, sch, fmt=used, seed=seed)
    if as_json:
        print(json.dumps(ins.to_dict(), indent=2))
        return
    out = Console()
    out.print(
        f"[bold]{path}[/bold]  format={ins.format} schema={ins.schema}  reports={ins.reports} "
        f"patients={ins.patients} labelled={ins.labelled} skipped={ins.skipped}"
    )
    lt = ins.length_tokens
    out.print(
        f"tokens ({ins.tokenizer}): mean {lt.mean} median {lt.median} p90 {lt.p90} p99 {lt.p99} max {lt.max}; "
        f"{lt.over_512} over 512"
    )
    table = Table(title="positive (uncertain) reports per split")
    table.add_column("label")
    for split in ins.prevalence:
        table.add_column(f"{split} (n={ins.split_sizes.get(split, ins.reports)})", justify="right")
    for lab in next(iter(ins.prevalence.values())):
        cells = [
            f"{ins.prevalence[s][lab]['positive']} ({ins.prevalence[s][lab]['uncertain']})"
            for s in ins.prevalence
        ]
        table.add_row(lab, *cells)
    out.print(table)
    for p in ins.problems:
        out.print(f"[yellow]problem:[/yellow] {p}")


@app.command()
def label(
    path: Annotated[Path, typer.Argument(help="reports to label")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="output table: id, patient_id, text, one column per label")
    ],
    teacher: Annotated[str, typer.Option(help="gold (the dataset's own labels)")] = "gold",
    fmt: FormatOpt = "auto",
    schema: SchemaOpt = None,
    text_col: TextColOpt = "text",
    id_col: IdColOpt = "id",
    patient_col: PatientColOpt = None,
    labels: LabelsOpt = None,
) -> None:
    """Write one row per report with the teacher's labels (1 / 0 / -1 / blank)."""
    from dprad.data.table import reports_frame, write_table

    result, sch, _ = _read(path, fmt, schema, text_col, id_col, patient_col, None, labels)
    if teacher != "gold":
        raise DpradError(f"--teacher '{teacher}' is not available (gold)")
    if not any(r.labels is not None for r in result.reports):
        raise DpradError(f"{path}: --teacher gold needs gold labels, and no report has any")
    write_table(reports_frame(result.reports, sch), out)
    for rid, why in result.skipped:
        console.print(f"skipped {rid}: {why}")
    console.print(f"wrote {len(result.reports)} reports ({len(result.skipped)} skipped) to {out}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=False)
    except DpradError as err:
        print(f"dprad: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except typer.Exit as ex:
        raise SystemExit(ex.exit_code) from None
    except Exception as err:
        import click

        if isinstance(err, click.exceptions.Abort):
            raise SystemExit(130) from None
        if isinstance(err, click.ClickException):
            err.show()
            raise SystemExit(err.exit_code) from None
        raise
