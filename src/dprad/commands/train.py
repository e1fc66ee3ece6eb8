"""``dprad train`` (its config flags come from :data:`dprad.commands.options.TRAIN_OPTIONS`) and
``dprad epsilon``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from dprad.commands.console import print_trained, training_progress
from dprad.commands.options import TRAIN_OPTIONS, config_from_flags, load_config, with_options
from dprad.errors import DpradError


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


@with_options(TRAIN_OPTIONS)
def train(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory to write (or resume)")],
    data: Annotated[
        Path | None,
        typer.Argument(
            help="training reports (all splits are made from it, by patient); default: --config's"
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML/JSON RunConfig (sections data/model/lora/privacy/train), or a run's config.json; flags you type override it",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a finished run in --out")] = False,
    **flags: Any,
) -> None:
    """Train a classifier (DP-SGD when --epsilon or --noise-multiplier is given) into a self-describing run directory."""
    from dprad.config import RunConfig
    from dprad.run import RunRecord
    from dprad.run.files import AUDIT
    from dprad.stages.train import train as run_train

    cfg = config_from_flags(ctx, load_config(config) if config else RunConfig(), flags)
    if data is not None:  # absolute: the run directory must make sense from anywhere
        cfg = cfg.with_(data=replace(cfg.data, path=str(data.resolve())))
    elif not cfg.data.path:
        raise DpradError("dprad train: give the training data (DATA) or a --config that names data.path")
    with training_progress() as bars:
        result = run_train(cfg, out, on_step=bars.step, on_features=bars.features, overwrite=overwrite)
    audit = RunRecord.open(out).audit if (out / AUDIT).exists() else None
    print_trained(out, result, audit.canary if audit is not None else None)


def register(app: typer.Typer) -> None:
    """Add ``epsilon`` and ``train`` to ``app``."""
    app.command()(epsilon)
    app.command()(train)
