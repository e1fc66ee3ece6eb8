"""``dprad audit RUN``: the promised epsilon beside what attacks measure, in one table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from dprad.commands.console import render_audit
from dprad.errors import DpradError

MIA_ATTACKS = ("loss", "lira", "rmia")
ATTACKS = (*MIA_ATTACKS, "attribute", "extraction")
MODALITY = {"chexpert14": "cxr", "ctrate18": "ct"}  # the synthetic generator's corpora, by schema


def _budgets(spec: str) -> list[int]:
    try:
        out = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        out = []
    if not out or out[0] < 1:
        raise DpradError(f"--queries '{spec}' must be comma-separated positive report counts, e.g. 100,1000")
    return out


def _read_key(path: Path) -> str:
    """The attacker's API key: one line of a file (never echoed, even in an error)."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise DpradError(
            f"--key-file {path}: cannot be read ({getattr(err, 'strerror', None) or err})"
        ) from None
    if not key or any(c.isspace() for c in key):
        raise DpradError(f"--key-file {path}: must hold one API key on one line, with no spaces")
    return key


def _key_budgets(keys: Path | None) -> list[dict[str, Any]]:
    """The keys' own limits (from the server's keys file), to show the curve against."""
    if keys is None:
        return []
    from dprad.serve.keys import load_keys

    ring = load_keys(keys)
    return [
        {"key": k.id, "role": k.role, "budget_total": k.budget_total, "budget_per_day": k.budget_per_day}
        for k in ring.keys
        if k.role == "client"
    ]


def extraction(
    run: Path,
    *,
    budgets: list[int],
    url: str | None,
    key_file: Path | None,
    keys: Path | None,
    seed: int,
    n_boot: int,
) -> dict[str, Any]:
    """The extraction curve of ``run``: through a running server when ``url`` is given (the attacker's
    key read from ``key_file``), else from the run's own answers (what the server would answer)."""
    import numpy as np

    from dprad.audit.extraction import CloneSpec, extraction_curve, http_query, local_query, synthetic_reports
    from dprad.run import RunRecord

    record = RunRecord.open(run)
    modality = MODALITY.get(record.schema.name)
    if modality is None:
        raise DpradError(
            f"--attack extraction: dprad has synthetic attacker reports for {', '.join(MODALITY)}, not "
            f"'{record.schema.name}'"
        )
    if url is not None and key_file is None:
        raise DpradError("--attack extraction --url needs --key-file (a file holding the attacker's API key)")
    key = _read_key(key_file) if url is not None and key_file is not None else None
    victim = local_query(record)  # the auditor's access: the evaluation spends no key's budget
    # without --url the attacker sees the run's own answers, as served
    query: Any = victim if key is None else http_query(str(url), key, labels=record.schema.labels)
    try:
        held_out, _ = record.split_reports("test")
        where = f"the run's {len(held_out)} test reports"
    except DpradError:
        held_out, where = [], ""
    if not held_out:
        held_out, where = synthetic_reports(modality, 500, seed=seed + 1), "500 held-out synthetic reports"
    section = extraction_curve(
        query,
        attacker_reports=synthetic_reports(modality, max(budgets), seed=seed),
        eval_reports=held_out,
        budgets=budgets,
        schema=record.schema,
        clone=CloneSpec(model=record.config.model.name),
        rng=np.random.default_rng(seed),
        reference=victim,
        attacker_data=f"synthetic {modality} reports (dprad's attacker stream, seed {seed})",
        n_boot=n_boot,
    )
    section["evaluated_on"] = where
    section["through"] = (
        f"HTTP {url}" if url else "the run's own answers (as served, at its shipped thresholds)"
    )
    section["key_budgets"] = _key_budgets(keys)
    return dict(section)


def audit(
    run: Path = typer.Argument(..., help="a finished run directory"),
    attack: str = typer.Option("loss,lira,rmia", "--attack", help=f"comma-separated: {', '.join(ATTACKS)}"),
    reference_models: int = typer.Option(16, "--reference-models", help="k models trained on random halves"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="bootstrap resamples for the CIs"),
    seed: int = typer.Option(0, "--seed", help="seed of the reference models' halves and the bootstrap"),
    queries: str = typer.Option(
        "100,1000", "--queries", help="extraction: attacker query budgets, in reports (e.g. 100,1000,10000)"
    ),
    url: str | None = typer.Option(
        None, "--url", help="extraction: attack a running dprad serve at this URL"
    ),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="extraction: file with the attacker's API key"
    ),
    keys: Path | None = typer.Option(
        None, "--keys", help="extraction: the server's keys file (budgets shown)"
    ),
    control: Path | None = typer.Option(
        None, "--control", help="attribute: the same recipe trained with another split seed (a control model)"
    ),
) -> None:
    """Attack a finished run (membership inference, LiRA, RMIA, attribute inference, model extraction)
    and write RUN/audit.json."""
    import numpy as np

    from dprad.audit.run_audit import parse_attacks
    from dprad.audit.sections import write_sections
    from dprad.run import RunRecord

    chosen = parse_attacks(attack, known=ATTACKS)
    budgets = _budgets(queries) if "extraction" in chosen else []
    err = Console(stderr=True)
    result: dict[str, Any] = {}
    mia = [a for a in chosen if a in MIA_ATTACKS]
    if mia:
        from dprad.audit.run_audit import audit_run
        from dprad.stages.train import train

        result = audit_run(
            run,
            attacks=mia,
            reference_models=reference_models,
            rng=np.random.default_rng(seed),
            n_boot=bootstrap,
            on_progress=lambda msg: err.print(f"[dim]{msg}[/dim]"),
            train_fn=train,
        )
    if "attribute" in chosen:
        from dprad.audit.attribute import attribute_inference
        from dprad.audit.run_audit import run_reports

        err.print("[dim]attribute inference: scoring reports with the finding's sentences removed[/dim]")
        record = RunRecord.open(run)
        section = attribute_inference(
            record,
            run_reports(record, None),
            rng=np.random.default_rng(seed),
            n_boot=bootstrap,
            control=RunRecord.open(control) if control is not None else None,
        )
        result = write_sections(record, attribute=section)
    if "extraction" in chosen:
        err.print(f"[dim]extraction: cloning from {', '.join(map(str, budgets))} attacker queries[/dim]")
        section = extraction(
            run, budgets=budgets, url=url, key_file=key_file, keys=keys, seed=seed, n_boot=bootstrap
        )
        result = write_sections(RunRecord.open(run), extraction=section)
    render_audit(result, Console(width=160))


def register(app: typer.Typer) -> None:
    """Add ``audit`` to ``app``."""
    app.command("audit")(audit)
