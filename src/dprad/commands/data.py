"""``dprad synth`` and ``dprad data inspect``: make a synthetic corpus, look at a corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dprad.commands.console import console, print_inspection
from dprad.commands.options import (
    DATA,
    FormatOpt,
    IdColOpt,
    LabelsOpt,
    PatientColOpt,
    SchemaOpt,
    SplitColOpt,
    TextColOpt,
    read_input,
)
from dprad.errors import DpradError

LAYOUTS = ("table", "mimic-cxr")


def synth(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="output table (.csv, .jsonl or .parquet; default synth_cxr.csv), or for --layout mimic-cxr "
            "a new folder (default synth-mimic-cxr)",
        ),
    ] = None,
    layout: Annotated[
        str,
        typer.Option(
            help="table: one labelled table; mimic-cxr: MIMIC-CXR's files/pXX/pXXXXXXXX/sXXXXXXXX.txt tree "
            "and mimic-cxr-2.0.0-chexpert.csv"
        ),
    ] = "table",
    modality: Annotated[str, typer.Option(help="cxr (chexpert14 labels) or ct (ctrate18 labels)")] = "cxr",
    patients: Annotated[int, typer.Option(help="number of patients (each has one or more reports)")] = 1500,
    studies: Annotated[
        int | None,
        typer.Option(
            help="--layout mimic-cxr: number of studies (default: MIMIC-CXR's 227,835 per 65,379 patients)"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed: the corpus is a pure function of the options")] = 0,
    prevalence: Annotated[
        list[str] | None,
        typer.Option(help="override a label's prevalence, e.g. --prevalence 'Pneumothorax=0.005'"),
    ] = None,
) -> None:
    """Write a synthetic corpus of chest X-ray or chest CT reports with known labels.

    ``--layout mimic-cxr --patients 65379 --studies 227835`` gives MIMIC-CXR's size and shape."""
    from dprad.data.synth import SynthConfig, generate_reports, schema_for
    from dprad.data.table import reports_frame, write_table

    if layout not in LAYOUTS:
        raise DpradError(f"--layout '{layout}' must be one of: {', '.join(LAYOUTS)}")
    if modality not in {"cxr", "ct"}:
        raise DpradError(f"--modality '{modality}' must be cxr or ct")
    if patients < 1:
        raise DpradError("--patients must be at least 1")
    overrides = _prevalences(prevalence or [])
    if layout == "mimic-cxr":
        _synth_mimic(out or Path("synth-mimic-cxr"), modality, patients, studies, seed, overrides)
        return
    if studies is not None:
        raise DpradError("--studies applies to --layout mimic-cxr only (a table has --patients)")
    out = out or Path("synth_cxr.csv")
    try:
        cfg = SynthConfig(modality=modality, n_patients=patients, seed=seed, prevalence=overrides)
        reports = generate_reports(cfg)
    except ValueError as err:
        raise DpradError(f"--prevalence: {err}") from None
    write_table(reports_frame(reports, schema_for(modality)), out)
    console.print(f"wrote {len(reports)} reports of {patients} patients to {out}")


def _synth_mimic(
    out: Path, modality: str, patients: int, studies: int | None, seed: int, overrides: dict[str, float]
) -> None:
    from dprad.data.synth_mimic import MimicSynthConfig, check_config, write_mimic_cxr

    if modality != "cxr":
        raise DpradError(f"--layout mimic-cxr is chest X-ray only (chexpert14): not --modality {modality}")
    cfg = MimicSynthConfig(n_patients=patients, n_studies=studies, seed=seed, prevalence=overrides)
    try:
        check_config(cfg)
    except ValueError as err:
        raise DpradError(str(err)) from None
    corpus = write_mimic_cxr(cfg, out)
    console.print(f"wrote {corpus.studies} studies of {corpus.patients} patients to {out} (MIMIC-CXR layout)")


def _prevalences(items: list[str]) -> dict[str, float]:
    overrides: dict[str, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            overrides[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not 0 <= overrides.get(name, -1) <= 1:
            raise DpradError(f"--prevalence '{item}' must be LABEL=RATE with RATE in [0, 1]")
    return overrides


def data_inspect(
    path: Annotated[Path, typer.Argument(help="a table, an IU/CT-RATE CSV or a MIMIC-CXR folder")],
    fmt: FormatOpt = DATA.format,
    schema: SchemaOpt = DATA.schema,
    text_col: TextColOpt = DATA.text_col,
    id_col: IdColOpt = DATA.id_col,
    patient_col: PatientColOpt = DATA.patient_col,
    split_col: SplitColOpt = DATA.split_col,
    labels: LabelsOpt = None,
    seed: Annotated[int, typer.Option(help="split seed")] = DATA.split_seed,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
) -> None:
    """Counts, label prevalence per patient-level split, token lengths and problems found."""
    from dprad.data.inspect import inspect_reports

    result, sch, used = read_input(path, fmt, schema, text_col, id_col, patient_col, split_col, labels)
    ins = inspect_reports(result, sch, fmt=used, seed=seed)
    if as_json:
        print(json.dumps(ins.to_dict(), indent=2))
        return
    print_inspection(path, ins)


def register(app: typer.Typer) -> None:
    """Add ``synth`` and the ``data`` group (``data inspect``) to ``app``."""
    app.command()(synth)
    data_app = typer.Typer(no_args_is_help=True, help="Look at report corpora.")
    data_app.command("inspect")(data_inspect)
    app.add_typer(data_app, name="data")
