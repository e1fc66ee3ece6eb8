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
    teacher: Annotated[
        str, typer.Option(help="rules (negation/uncertainty-aware), llm (local server) or gold")
    ] = "rules",
    fmt: FormatOpt = "auto",
    schema: SchemaOpt = None,
    text_col: TextColOpt = "text",
    id_col: IdColOpt = "id",
    patient_col: PatientColOpt = None,
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
    llm_url: Annotated[
        str | None,
        typer.Option("--llm-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"),
    ] = None,
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="model name the server knows")] = None,
    llm_allow_host: Annotated[
        list[str] | None,
        typer.Option("--llm-allow-host", help="an on-premises host allowed besides loopback"),
    ] = None,
    llm_cache: Annotated[Path | None, typer.Option("--llm-cache", help="answer cache folder")] = None,
    llm_concurrency: Annotated[int, typer.Option("--llm-concurrency")] = 4,
    llm_timeout: Annotated[float, typer.Option("--llm-timeout", help="seconds per request")] = 60.0,
    llm_retries: Annotated[int, typer.Option("--llm-retries")] = 3,
    llm_structured: Annotated[
        str,
        typer.Option(
            "--llm-structured",
            help="how the server takes the answer's JSON schema: auto (json_schema, then json_object, then none), json_schema (vLLM, llama-server, Ollama), json_object (llama-cpp-python) or none",
        ),
    ] = "auto",
    llm_max_tokens: Annotated[int, typer.Option("--llm-max-tokens", help="tokens per answer at most")] = 512,
) -> None:
    """Label reports with a teacher and write one row per report (1 / 0 / -1 / blank); optionally measure it."""
    import os

    from rich.progress import Progress

    from dprad.data.provenance import TeacherRecord, rules_detail, write_record
    from dprad.data.schemas import UncertainPolicy
    from dprad.data.table import reports_frame, write_table
    from dprad.labeling.agreement import agreement

    if teacher not in {"rules", "llm", "gold"}:
        raise DpradError(f"--teacher '{teacher}' must be rules, llm or gold")
    result, sch, _ = _read(path, fmt, schema, text_col, id_col, patient_col, None, labels)
    reports = result.reports
    summary: dict[str, Any] | None = None
    if teacher == "gold":
        if not any(r.labels is not None for r in reports):
            raise DpradError(f"{path}: --teacher gold needs gold labels, and no report has any")
        predicted: list[Any] = [r.labels for r in reports]
    elif teacher == "rules":
        from dprad.labeling.rules import label_text, rules_for

        rules = rules_for(sch)
        with Progress(console=console, disable=not console.is_terminal) as progress:
            task = progress.add_task("rules", total=len(reports))
            predicted = []
            for r in reports:
                predicted.append(label_text(r.text, rules))
                progress.advance(task)
    else:
        from dprad.labeling.llm import LLMConfig, LLMTeacher

        if not llm_url or not llm_model:
            raise DpradError("--teacher llm needs --llm-url and --llm-model")
        llm = LLMTeacher(
            LLMConfig(
                url=llm_url,
                model=llm_model,
                allow_hosts=tuple(llm_allow_host or ()),
                timeout_s=llm_timeout,
                max_retries=llm_retries,
                concurrency=llm_concurrency,
                cache_dir=str(llm_cache) if llm_cache else None,
                api_key=os.environ.get("DPRAD_LLM_API_KEY"),
                structured=llm_structured,
                max_tokens=llm_max_tokens,
            ),
            sch,
        )
        with Progress(console=console, disable=not console.is_terminal) as progress:
            task = progress.add_task("llm", total=len(reports))
            predicted = llm.label(reports, progress=lambda n: progress.update(task, completed=n))
        summary = llm.summary.to_dict()
        console.print(
            f"llm: {summary['answered']} answered, {summary['cached']} from cache, {summary['retries']} retries, "
            f"{summary['failed']} failed (their label cells are left empty); structured output: {summary['structured_output']}"
        )
        for rid, why in list(summary["failures"].items())[:20]:
            console.print(f"  failed {rid}: {why}")
    write_table(reports_frame(reports, sch, labels=predicted), out)
    if teacher == "rules":
        detail = rules_detail(sch.name)
    elif teacher == "llm":
        assert summary is not None
        detail = f"model {llm_model} at {llm_url}, prompt {summary['prompt_version']}, structured output {summary['structured_output']}"
    else:
        detail = f"the labels already in {path.name}"
    write_record(
        out,
        TeacherRecord(
            teacher=teacher,
            detail=detail,
            source=path.name,
            reports=len(reports),
            unlabelled=sum(lab is None for lab in predicted),
        ),
    )
    for rid, why in result.skipped:
        console.print(f"skipped {rid}: {why}")
    console.print(f"wrote {len(reports)} reports ({len(result.skipped)} skipped) to {out}")
    no_labels = sum(lab is None for lab in predicted)
    if no_labels:
        console.print(
            f"{no_labels} reports have no labels (column 'labelled' = 0): training and evaluation leave them out"
        )
    gold: list[Any] | None = None
    if gold_from is not None:
        gres, _, _ = _read(gold_from, "auto", sch.name if schema is None else schema)
        by_id = {r.id: r.labels for r in gres.reports}
        gold = [by_id.get(r.id) for r in reports]
    elif teacher != "gold" and any(r.labels is not None for r in reports):
        gold = [r.labels for r in reports]
    if gold is not None:
        report = agreement(
            predicted, gold, sch, policy=UncertainPolicy.ONES, patient_ids=[r.patient_id for r in reports]
        )
        if summary is not None:
            report["llm"] = summary
        if agreement_out:
            from dprad.io import write_json

            write_json(agreement_out, report)
        _print_agreement(report, teacher)
    if summary is not None and summary["failed"]:
        # the table is written (rerun with the same --llm-cache to ask only for these), but a script must
        # not go on to train as if every report had labels
        console.print(f"[red]{summary['failed']} reports were not labelled by the LLM teacher[/red]")
        raise typer.Exit(1)


def _bounds(ci: dict[str, float] | None, digits: int) -> str:
    """'[low, high]' of a patient-bootstrap interval, or nothing (no interval, or undefined)."""
    if not ci or ci["ci_low"] != ci["ci_low"]:
        return ""
    return f"[{ci['ci_low']:.{digits}f}, {ci['ci_high']:.{digits}f}]"


def _print_agreement(report: dict[str, Any], teacher: str) -> None:
    o = Console(width=140)
    o.print(
        f"[bold]{teacher} vs gold[/bold] on {report['reports']} reports (uncertain as {report['uncertain_policy']}): "
        f"weighted F1 {report['weighted_f1']:.3f} {_bounds(report.get('weighted_f1_ci'), 3)}, macro F1 {report['macro_f1']:.3f}"
    )
    t = Table()
    for col in ("label", "gold +", "teacher +", "precision", "recall [95% CI]", "F1 [95% CI]", "kappa"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for r in report["per_label"]:
        ci = r.get("ci", {})
        t.add_row(
            r["label"],
            str(r["gold_positive"]),
            str(r["teacher_positive"]),
            f"{r['precision']:.2f}",
            f"{r['recall']:.2f} {_bounds(ci.get('recall'), 2)}",
            f"{r['f1']:.2f} {_bounds(ci.get('f1'), 2)}",
            f"{r['kappa']:.2f}",
        )
    o.print(t)


@app.command()
def epsilon(
    sample_rate: Annotated[
        float, typer.Option("--sample-rate", "-q", help="Poisson sampling rate q = batch / n")
    ],
    steps: Annotated[int, typer.Option(help="number of DP-SGD steps")],
    delta: Annotated[float, typer.Option(help="target delta")] = 1e-5,
    noise_multiplier: Annotated[
        float | None, typer.Option("--noise-multiplier", "-s", help="sigma: prints the epsilon spent")
    ] = None,
    target: Annotated[
        float | None, typer.Option("--epsilon", "-e", help="target eps: prints the sigma needed")
    ] = None,
    accountant: Annotated[str, typer.Option(help="pld (default), rdp or prv")] = "pld",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Epsilon for (sigma, q, steps, delta), or the sigma that spends a target epsilon."""
    from dprad.privacy import calibrate_noise, compute_epsilon

    if (noise_multiplier is None) == (target is None):
        raise DpradError("give exactly one of --noise-multiplier and --epsilon")
    if target is not None:
        noise_multiplier = calibrate_noise(
            target_epsilon=target, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
        )
    assert noise_multiplier is not None
    acc = compute_epsilon(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        accountant=accountant,
    )
    result = {
        "noise_multiplier": noise_multiplier,
        "sample_rate": sample_rate,
        "steps": steps,
        "delta": delta,
        "epsilon": acc.epsilon,
        "target_epsilon": target,
        "accountant": acc.accountant,
        "note": acc.note,
    }
    if as_json:
        print(json.dumps(result))
    else:
        print(
            f"sigma={noise_multiplier:.6g} q={sample_rate:g} steps={steps} delta={delta:g} -> "
            f"epsilon={acc.epsilon:.6g} ({acc.accountant}){' ' + acc.note if acc.note else ''}"
        )


def _fractions(split: str) -> tuple[float, ...]:
    try:
        fractions = tuple(float(x) for x in split.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise DpradError(f"--split '{split}' must be three comma-separated fractions, e.g. 0.7,0.1,0.2")
    return fractions


def _abs(p: Path | None) -> str | None:
    return str(p.resolve()) if p is not None else None


# CLI parameter -> (config section, field, conversion): a flag the user typed overrides --config, whatever
# its value; a flag left out never does (click records where each value came from)
TRAIN_FLAGS: dict[str, tuple[str, str, Any]] = {
    "fmt": ("data", "format", None),
    "schema": ("data", "schema", None),
    "text_col": ("data", "text_col", None),
    "id_col": ("data", "id_col", None),
    "patient_col": ("data", "patient_col", None),
    "split_col": ("data", "split_col", None),
    "labels": ("data", "labels_path", _abs),
    "uncertain": ("data", "uncertain_policy", None),
    "split": ("data", "fractions", _fractions),
    "split_seed": ("data", "split_seed", None),
    "teacher": ("data", "teacher", None),
    "model": ("model", "name", None),
    "pooling": ("model", "pooling", None),
    "max_length": ("model", "max_length", None),
    "lora_r": ("lora", "r", None),
    "lora_alpha": ("lora", "alpha", None),
    "lora_targets": ("lora", "target_modules", lambda v: tuple(v.split(",")) if v else None),
    "lora_layers": ("lora", "layers", None),
    "epsilon_": ("privacy", "epsilon", None),
    "delta": ("privacy", "delta", None),
    "noise_multiplier": ("privacy", "noise_multiplier", None),
    "max_grad_norm": ("privacy", "max_grad_norm", None),
    "accountant": ("privacy", "accountant", None),
    "force_delta": ("privacy", "force_delta", None),
    "thresholds": ("privacy", "thresholds", None),
    "privacy_unit": ("privacy", "unit", None),
    "threshold_share": ("privacy", "threshold_share", None),
    "mode": ("train", "mode", None),
    "epochs": ("train", "epochs", None),
    "lr": ("train", "lr", None),
    "batch_size": ("train", "batch_size", None),
    "max_tokens": ("train", "max_tokens", None),
    "seed": ("train", "seed", None),
    "threads": ("train", "threads", None),
    "device": ("train", "device", None),
    "public_warm_start": ("train", "public_warm_start", None),
    "rule_prior": ("train", "rule_prior", None),
    "probe": ("train", "probe", None),
    "probe_share": ("train", "probe_share", None),
    "feature_cache": ("train", "feature_cache", _abs),
    "audit_canaries": ("train", "audit_canaries", None),
    "audit_rare_tokens": ("train", "audit_rare_tokens", None),
}


TYPED = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")  # click's ParameterSource names (typer may vendor click)


def typed_by_user(ctx: typer.Context, param: str) -> bool:
    source = ctx.get_parameter_source(param)
    return source is not None and source.name in TYPED


def config_from_flags(ctx: typer.Context, base: Any, values: dict[str, Any]) -> Any:
    """``base`` (a RunConfig) with every flag the user typed applied on top, and nothing else."""
    from dataclasses import replace

    sections: dict[str, dict[str, Any]] = {}
    for param, (section, key, convert) in TRAIN_FLAGS.items():
        if typed_by_user(ctx, param):
            v = values[param]
            sections.setdefault(section, {})[key] = convert(v) if convert is not None and v is not None else v
    return base.with_(**{sec: replace(getattr(base, sec), **kv) for sec, kv in sections.items()})


@app.command()
def train(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory to write (or resume)")],
    data: Annotated[
        Path | None,
        typer.Argument(
            help="training reports (all splits are made from it, by patient); default: --config's"
        ),
    ] = None,
    fmt: FormatOpt = "auto",
    schema: SchemaOpt = None,
    text_col: TextColOpt = "text",
    id_col: IdColOpt = "id",
    patient_col: PatientColOpt = None,
    split_col: SplitColOpt = None,
    labels: LabelsOpt = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML/JSON RunConfig (sections data/model/lora/privacy/train), or a run's config.json; flags you type override it",
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="auto | head | lora | full (auto: head, the measured winner at every size measured; README runbook). --epsilon or --noise-multiplier makes any mode private; dp-head / dp-lora / dp-full are accepted aliases"
        ),
    ] = "auto",
    epsilon_: Annotated[
        float | None,
        typer.Option(
            "--epsilon", help="target epsilon; the noise multiplier is calibrated to spend at most this"
        ),
    ] = None,
    delta: Annotated[
        float | None,
        typer.Option(
            help="delta; default: the largest power of ten <= 1/(10 n), n = training reports. delta >= 1/n is refused unless --force-delta"
        ),
    ] = None,
    noise_multiplier: Annotated[
        float | None,
        typer.Option(
            "--noise-multiplier", help="fixed sigma instead of --epsilon; epsilon is then the output"
        ),
    ] = None,
    max_grad_norm: Annotated[
        float | None, typer.Option("--max-grad-norm", help="per-report clipping norm C")
    ] = None,
    accountant: Annotated[str, typer.Option(help="pld (default), rdp or prv")] = "pld",
    force_delta: Annotated[
        bool, typer.Option("--force-delta/--no-force-delta", help="allow delta >= 1/n")
    ] = False,
    thresholds: Annotated[
        str,
        typer.Option(
            "--thresholds",
            help="auto | dp | val | 0.5: per-label thresholds chosen on the validation split under DP (inside epsilon; auto when private), without DP (val: the ledger flags it), or 0.5",
        ),
    ] = "auto",
    privacy_unit: Annotated[
        str,
        typer.Option(
            "--privacy-unit",
            help="auto | patient | report: what one unit of privacy is (auto: patient when patients have several reports)",
        ),
    ] = "auto",
    threshold_share: Annotated[
        float, typer.Option("--threshold-share", help="share of --epsilon spent on DP thresholds")
    ] = 0.1,
    model: Annotated[
        str, typer.Option("--model", help="minilm (packaged default) or a local HF model directory")
    ] = "minilm",
    pooling: Annotated[str, typer.Option(help="auto | mean | cls")] = "auto",
    max_length: Annotated[int, typer.Option("--max-length", help="tokens per report (truncation)")] = 256,
    epochs: Annotated[float | None, typer.Option(help="epochs (expected passes over the data)")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="expected logical batch size (q = batch / n)")
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="tokens per physical micro-batch (memory only)")
    ] = 8192,
    lora_r: Annotated[int, typer.Option("--lora-r")] = 8,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha")] = 16,
    lora_layers: Annotated[
        int | None,
        typer.Option(
            "--lora-layers",
            help="LoRA in the top K layers only; the frozen bottom runs once per report (cached hidden states)",
        ),
    ] = None,
    lora_targets: Annotated[
        str | None, typer.Option("--lora-targets", help="comma-separated module names")
    ] = None,
    uncertain: Annotated[
        str, typer.Option("--uncertain", help="ones (U-Ones, default) | zeros | ignore")
    ] = "ones",
    split: Annotated[
        str, typer.Option(help="train,val,test fractions, e.g. 0.7,0.1,0.2 (1,0,0: train on everything)")
    ] = "0.7,0.1,0.2",
    split_seed: Annotated[int, typer.Option("--split-seed")] = 0,
    teacher: Annotated[
        str | None,
        typer.Option(
            "--teacher",
            help="who wrote the training labels, for the model card (default: what `dprad label` recorded beside the table)",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="training seed (sampling, noise, init)")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    device: Annotated[
        str, typer.Option(help="auto (CUDA when present) | cpu | cuda[:i]; bf16 autocast on a GPU")
    ] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a finished run in --out")] = False,
    public_warm_start: Annotated[
        bool | None,
        typer.Option(
            "--public-warm-start/--no-public-warm-start",
            help="head modes and LP-FT probes: start from a fit on dprad's public synthetic corpus (default: on for private runs with a built-in schema)",
        ),
    ] = None,
    rule_prior: Annotated[
        bool | None,
        typer.Option(
            "--rule-prior/--no-rule-prior",
            help="head modes: the rule teacher's reading of each report as extra, privacy-free inputs (default: on where the schema has rule vocabulary)",
        ),
    ] = None,
    probe: Annotated[
        bool | None,
        typer.Option(
            "--probe/--no-probe",
            help="lora / full: LP-FT, a private linear probe (the head mode) first, then fine-tuning from it (default: on)",
        ),
    ] = None,
    probe_share: Annotated[
        float,
        typer.Option(
            "--probe-share",
            help="private LP-FT: share of the training budget (epsilon less the thresholds' share) for the probe",
        ),
    ] = 0.9,
    audit_canaries: Annotated[
        int,
        typer.Option(
            "--audit-canaries",
            help="one-run privacy audit: M canaries (random labels), each trained on with probability 1/2; writes audit.json",
        ),
    ] = 0,
    audit_rare_tokens: Annotated[
        bool,
        typer.Option(
            "--audit-rare-tokens/--no-audit-rare-tokens", help="append rare random tokens to canaries"
        ),
    ] = False,
    feature_cache: Annotated[
        Path | None,
        typer.Option(
            "--feature-cache",
            help="head modes: reuse encoder features from this folder across runs (as sensitive as the reports)",
        ),
    ] = None,
) -> None:
    """Train a classifier (DP-SGD when --epsilon or --noise-multiplier is given) into a self-describing run directory."""
    from dataclasses import replace

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from dprad.config import RunConfig
    from dprad.stages.train import StepInfo
    from dprad.stages.train import train as run_train

    base = _load_config(config) if config else RunConfig()
    cfg = config_from_flags(ctx, base, dict(locals()))
    if data is not None:  # absolute: the run directory must make sense from anywhere
        cfg = cfg.with_(data=replace(cfg.data, path=str(data.resolve())))
    elif not cfg.data.path:
        raise DpradError("dprad train: give the training data (DATA) or a --config that names data.path")
    if cfg.data.uncertain_policy not in {"ones", "zeros", "ignore"}:
        raise DpradError(f"--uncertain '{cfg.data.uncertain_policy}' must be ones, zeros or ignore")
    with Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("train", total=None, info="preparing")

        def show(s: StepInfo) -> None:
            eps = f" eps {s.epsilon:.3g}" if s.epsilon is not None else ""
            progress.update(
                task,
                total=s.steps,
                completed=s.step,
                info=f"loss {s.loss:.4f}{eps} {s.examples_per_s:.0f} ex/s",
            )

        result = run_train(cfg, out, on_step=show, overwrite=overwrite)
    led = result.ledger
    test = result.metrics.get("test", {}).get("threshold_0.5", {})
    privacy = (
        f"eps={led.epsilon:.4g} delta={led.delta:.0e} ({led.accountant})" if led.private else "NOT private"
    )
    console.print(f"run {out}: mode={led.mode} steps={led.steps} {privacy}")
    if test:
        console.print(
            f"test: weighted F1 {test['weighted_f1']:.3f}  macro AUROC {test['macro_auroc']:.3f} (threshold 0.5)"
        )
    shipped = result.metrics.get("test", {}).get("threshold_val")
    if shipped:
        console.print(
            f"test: weighted F1 {shipped['weighted_f1']:.3f} at the shipped thresholds "
            f"({result.metrics['thresholds']['fitted_on']})"
        )
    audit_file = out / "audit.json"
    if audit_file.exists():
        a = json.loads(audit_file.read_text())["canary"]
        console.print(
            f"audit: {a['m']} canaries, {a['correct']}/{a['guesses']} guesses right -> empirical epsilon >= "
            f"{a['epsilon_lower_bound']:.3g} (95%; this audit can show at most {a['ceiling']:.3g}); "
            f"ledger epsilon {led.epsilon if led.epsilon is not None else 'inf (not private)'}"
        )


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="a finished run directory")],
    data: Annotated[Path, typer.Argument(help="reports to score")],
    out: Annotated[Path, typer.Option("--out", "-o", help="id, one probability column per label, loss")],
    fmt: FormatOpt = "auto",
    text_col: TextColOpt = "text",
    id_col: IdColOpt = "id",
    patient_col: PatientColOpt = None,
    labels: LabelsOpt = None,
) -> None:
    """Score reports with a trained run: per-label probability and per-example loss (where labels are known)."""
    from dprad.data.table import write_table
    from dprad.modes import load_run

    predictor = load_run(run)
    result, _, _ = _read(
        path=data,
        fmt=fmt,
        schema=None,
        text_col=text_col,
        id_col=id_col,
        patient_col=patient_col,
        labels=labels,
    )
    preds = predictor.predict(result.reports)
    write_table(preds.frame(predictor.schema), out)
    console.print(f"wrote {len(preds.ids)} rows to {out}")


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


def _eval_options(thresholds: str, n_boot: int, split: str, label_map: str | None, **extra: Any) -> Any:
    from dprad.stages.evaluate import EvalOptions

    if n_boot < 1:
        raise DpradError("--bootstrap must be at least 1")
    return EvalOptions(thresholds=thresholds, n_boot=n_boot, split=split, label_map=label_map, **extra)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="a finished run directory")],
    data: Annotated[
        Path, typer.Argument(help="labelled reports (the run's own data, or another institution's)")
    ],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="metrics JSON")] = None,
    fmt: FormatOpt = "auto",
    labels: LabelsOpt = None,
    groups: Annotated[
        str | None, typer.Option(help="comma-separated attributes for subgroup metrics, e.g. sex,site,age")
    ] = None,
    thresholds: ThresholdsOpt = "val",
    n_boot: BootOpt = 1000,
    split: SplitOpt = "auto",
    label_map: MapOpt = None,
    temperature: Annotated[
        bool, typer.Option("--temperature", help="fit a temperature on the run's validation split")
    ] = False,
    min_group_size: Annotated[
        int, typer.Option("--min-group-size", help="groups smaller than this are flagged")
    ] = 30,
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
        groups=tuple(g for g in (groups or "").split(",") if g),
    )
    res = evaluate_run(run, data, options=opts, format=fmt, labels_path=labels)
    if out:
        write_json(out, res)
    _print_eval(res)


def _ci(d: dict[str, float]) -> str:
    if d["estimate"] != d["estimate"]:  # NaN
        return "n/a"
    return f"{d['estimate']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def _print_eval(res: dict[str, Any]) -> None:
    out = Console(width=160)
    led = res["privacy"]
    priv = f"eps={led['epsilon']:.3g}, delta={led['delta']:.0e}" if led["private"] else "non-private"
    out.print(
        f"[bold]{res['run']}[/bold] on {res['data']} ({res['split']}: {res['reports']} reports, "
        f"{res['patients']} patients) - {led['mode']}, {priv}; thresholds {res['thresholds']['source']}"
    )
    for note in res["notes"]:
        out.print(f"note: {note}")
    head = res["headline"]
    out.print(
        "  ".join(f"{k} {_ci(v)}" for k, v in head.items())
        + f"  (95% CI, {res['bootstrap']['resamples']} patient resamples)"
    )
    table = Table(title="per label (95% CI)")
    for col in (
        "label",
        "support",
        "prevalence",
        "precision",
        "recall (sensitivity)",
        "specificity",
        "F1",
        "AUROC",
        "AUPRC",
    ):
        table.add_column(col, justify="left" if col == "label" else "right")
    for r in res["per_label"]:
        table.add_row(
            r["label"],
            str(r["support"]),
            f"{r['prevalence']:.3f}",
            _ci(r["precision"]),
            _ci(r["recall"]),
            _ci(r["specificity"]),
            _ci(r["f1"]),
            _ci(r["auroc"]),
            _ci(r["auprc"]),
        )
    out.print(table)
    cal = res["calibration"]
    out.print(
        f"calibration: pooled ECE {cal['pooled_ece']:.4f} ({cal['bins']} {cal['binning']} bins), Brier {cal['pooled_brier']:.4f}"
    )
    for attr, sub in res["subgroups"].items():
        t = Table(title=f"subgroups by {attr} ({sub['unknown']} reports unknown)")
        for col in ("group", "reports", "weighted F1", "macro AUROC", "flag"):
            t.add_column(col)
        for g, row in sub["groups"].items():
            t.add_row(
                g,
                str(row["reports"]),
                _ci(row["weighted_f1"]),
                _ci(row["macro_auroc"]),
                f"< {sub['min_group_size']}: small" if row["small"] else "",
            )
        out.print(t)
        worst = sorted(sub["gaps"], key=lambda x: -abs(x["equal_opportunity_difference"]))[:5]
        for gap in worst:
            out.print(
                f"  {gap['label']}: TPR gap {gap['equal_opportunity_difference']:.3f}, "
                f"statistical parity difference {gap['statistical_parity_difference']:.3f}"
            )


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="baseline run (e.g. non-private)")],
    run_b: Annotated[Path, typer.Argument(help="run to compare (e.g. eps = 1)")],
    data: Annotated[Path, typer.Argument(help="labelled reports")],
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
    fmt: FormatOpt = "auto",
    thresholds: ThresholdsOpt = "val",
    n_boot: BootOpt = 1000,
    split: SplitOpt = "auto",
) -> None:
    """B - A on the same reports and the same patient resamples: difference, 95% CI and p-value."""
    from dprad.io import write_json
    from dprad.stages.evaluate import compare_runs

    res = compare_runs(run_a, run_b, data, options=_eval_options(thresholds, n_boot, split, None), format=fmt)
    if out:
        write_json(out, res)
    o = Console(width=160)
    o.print(f"B={run_b} minus A={run_a} on {res['reports']} reports ({res['split']})")
    t = Table()
    for col in ("metric", "A", "B", "B - A [95% CI]", "p"):
        t.add_column(col)
    for k, d in res["headline"].items():
        t.add_row(
            k,
            f"{d['a']:.3f}",
            f"{d['b']:.3f}",
            f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
            f"{d['p_value']:.3g}",
        )
    for row in res["per_label"]:
        d = row["f1"]
        t.add_row(
            f"F1 {row['label']}",
            f"{d['a']:.3f}",
            f"{d['b']:.3f}",
            f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
            f"{d['p_value']:.3g}",
        )
    o.print(t)


def _load_config(path: Path) -> Any:
    from dprad.config import RunConfig

    if not path.is_file():
        raise DpradError(f"--config {path}: no such file")
    try:
        import yaml

        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as err:  # noqa: BLE001
        raise DpradError(f"--config {path}: not valid YAML/JSON: {err}") from None
    if not isinstance(raw, dict):
        raise DpradError(
            f"--config {path}: expected a mapping of sections (data, model, lora, privacy, train)"
        )
    return RunConfig.from_dict(raw, source=f"--config {path}")


def _register_commands() -> None:
    """Jobs that live in their own packages add their commands here (each owns its module)."""
    from dprad.audit.commands import register as register_audit
    from dprad.report.commands import register as register_report
    from dprad.serve.commands import register as register_serve
    from dprad.sweep_commands import register as register_sweep

    register_sweep(app)
    register_audit(app)
    register_serve(app)
    register_report(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        # with standalone_mode=False click *returns* a command's typer.Exit code instead of exiting: pass
        # it on, or `monitor` alerts and failed sweep cells would exit 0 and page no scheduler
        rc = app(args=argv, standalone_mode=False)
    except DpradError as err:
        print(f"dprad: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except typer.Exit as ex:
        raise SystemExit(ex.exit_code) from None
    except Exception as err:
        # typer may vendor its own click: recognise click's exceptions by class name, not by module
        kinds = {k.__name__ for k in type(err).__mro__}
        if "Abort" in kinds:
            raise SystemExit(130) from None
        if "ClickException" in kinds:
            err.show()  # type: ignore[attr-defined]
            raise SystemExit(err.exit_code) from None  # type: ignore[attr-defined]
        raise
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        raise SystemExit(rc)
