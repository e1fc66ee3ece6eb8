"""``dprad audit RUN``: the promised epsilon beside what attacks measure, in one table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from dprad.commands.console import render_audit
from dprad.errors import DpradError

MIA_ATTACKS = ("loss", "lira", "rmia")
ATTACKS = (*MIA_ATTACKS, "attribute", "extraction", "noise-replay")
MODALITY = {"chexpert14": "cxr", "ctrate18": "ct"}  # the synthetic generator's corpora, by schema


# The largest --queries budget. Extraction synthesises that many attacker reports and has the victim
# answer each of them: 100,000 took 50 s to synthesise (0.5 GB) on a 2-core CPU, and a MiniLM victim
# served at the measured ~56 reports/s (docs/benchmarks, bench/serve_load.py) answers them in about 30 minutes.
# Ten times more would be hours of scoring for a point on a curve that has long flattened out.
MAX_QUERIES = 100_000


def _budgets(spec: str) -> list[int]:
    try:
        out = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        out = []
    if not out or out[0] < 1:
        raise DpradError(f"--queries '{spec}' must be comma-separated positive report counts, e.g. 100,1000")
    if out[-1] > MAX_QUERIES:
        raise DpradError(
            f"--queries {out[-1]} is more than {MAX_QUERIES:,} attacker reports: each is synthesised and "
            "answered by the model (hours at that size); measure the curve at up to that many"
        )
    return out


def _check_url(url: str) -> None:
    """An http(s) URL with a host: the attacker's client speaks HTTP and nothing else."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in {"http", "https"} or not host:
        raise DpradError(
            f"--url '{url}' must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8080"
        )


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


def _extraction_key(url: str | None, key_file: Path | None) -> str | None:
    """The attacker's API key for ``--url`` (None without it), checked before any attack runs."""
    if url is None:
        return None
    if key_file is None:
        raise DpradError("--attack extraction --url needs --key-file (a file holding the attacker's API key)")
    return _read_key(key_file)


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
    key: str | None,
    keys: Path | None,
    seed: int,
    n_boot: int,
) -> dict[str, Any]:
    """The extraction curve of ``run``: through a running server when ``url`` is given (with the attacker's
    ``key``), else from the run's own answers (what the server would answer)."""
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
    victim = local_query(record)  # the auditor's access: the evaluation spends no key's budget
    # without --url the attacker sees the run's own answers, as served
    query: Any = victim if url is None or key is None else http_query(url, key, labels=record.schema.labels)
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
    max_scored: int = typer.Option(
        20_000,
        "--max-scored",
        help="membership: reports attacked on each side (members, non-members) at most; a larger side is "
        "attacked on a uniform random subset of this size (recorded in audit.json)",
    ),
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
    """Attack a finished run (membership inference, LiRA, RMIA, attribute inference, model extraction,
    noise replay) and write RUN/audit.json. ``noise-replay`` also takes an export (and then writes nothing
    into it): can the run's DP noise be regenerated from what it ships?"""
    import numpy as np

    from dprad.audit.run_audit import parse_attacks
    from dprad.audit.sections import write_sections
    from dprad.run import RunRecord

    chosen = parse_attacks(attack, known=ATTACKS)
    if bootstrap < 1:  # every attack's intervals are bootstrapped: 0 resamples would write NaN bounds
        raise DpradError(f"--bootstrap {bootstrap} must be at least 1")
    if url is not None:
        _check_url(url)
    budgets = _budgets(queries) if "extraction" in chosen else []
    key = _extraction_key(url, key_file) if "extraction" in chosen else None
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
            max_scored=max_scored,
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
        section = extraction(run, budgets=budgets, url=url, key=key, keys=keys, seed=seed, n_boot=bootstrap)
        result = write_sections(RunRecord.open(run), extraction=section)
    if "noise-replay" in chosen:
        from dprad.audit.noise_replay import noise_replay_audit

        record = RunRecord.open(run)  # a missing or broken run is refused before any word of progress
        err.print(
            "[dim]noise replay: regenerating the noise from every seed the run ships and common ones[/dim]"
        )
        section = noise_replay_audit(record)
        Console(width=160).print(f"noise replay: {section['verdict']}", highlight=False, markup=False)
        if record.is_export:  # an export holds only its safe list: the verdict is printed, not written
            return
        result = write_sections(record, noise_replay=section)
    render_audit(result, Console(width=160))


def register(app: typer.Typer) -> None:
    """Add ``audit`` to ``app``."""
    app.command("audit")(audit)
