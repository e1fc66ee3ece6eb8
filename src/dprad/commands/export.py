"""``dprad export``: the shareable part of a finished run, and what it leaves out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export(
    run: Annotated[Path, typer.Argument(help="a finished run directory")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the folder to write the export to")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="export a run the guarantee does not cover (non-private, thresholds fitted without DP, or DP "
            "noise that is not secret); its model card says so first",
        ),
    ] = False,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include",
            help="also ship: evaluation (the run's evaluation*.json, computed on private data WITHOUT DP; "
            "the card says so first)",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty OUT")] = False,
) -> None:
    """What to share: the model (safetensors), its base encoder, the privacy ledger, schema, config, shipped
    thresholds and a model card, each file in MANIFEST.json with its SHA-256 and why it is safe. No split,
    report id, training history, metric or audit of the private data."""
    from dprad.commands.console import console
    from dprad.export import export_run
    from dprad.privacy.ledger import noise_warning
    from dprad.report.public import METRICS_INCLUDED, released_outside
    from dprad.run import RunRecord

    wanted = tuple(i.strip() for item in include or () for i in item.split(",") if i.strip())
    path = export_run(run, out, force_non_private=force, include=wanted, overwrite=overwrite)
    record = RunRecord.open(path)
    manifest = record.manifest()
    assert manifest is not None
    led = record.ledger
    guarantee = (
        f"eps = {led.epsilon:.4g} (recomputed from the ledger's accounting event), delta = {led.delta:.1e}"
        if led.private
        else "NO privacy guarantee"
    )
    console.print(f"[bold]{path}[/]: export of {manifest.run} ({record.display_mode}, {guarantee})")
    console.print("written, and why each file is safe to share (MANIFEST.json has their SHA-256):")
    for e in manifest.files:
        console.print(f"  {e.path} ({e.bytes:,} bytes): {e.why}", highlight=False)
    if not led.private:
        console.print("[bold red]not private[/]: exported with --force; its model card says so first")
    if not record.thresholds.covered:
        console.print(
            "[bold red]thresholds fitted without DP[/]: exported with --force; the card says so first"
        )
    if noise_warning(led):
        console.print(
            "[bold red]DP noise not secret[/]: exported with --force; the card says so under its title, and "
            "config.json holds no noise seed"
        )
    released = released_outside(record, metrics=METRICS_INCLUDED if "evaluation" in wanted else None)
    if released:
        console.print("released outside the guarantee (MANIFEST.json and the card state it):")
        for item in released:
            console.print(f"  {item}", highlight=False)
    console.print("left out (they stay with the run):")
    for name, why in manifest.left_out:
        console.print(f"  {name}: {why}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``export`` to ``app``."""
    app.command()(export)
