"""`dprad audit RUN`: the promised epsilon beside what attacks measure, in one table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

ATTACK_NAMES = {
    "loss": "loss",
    "confidence": "confidence",
    "lira_online": "LiRA online",
    "lira_offline": "LiRA offline",
    "rmia": "RMIA",
    "rmia_offline": "RMIA offline",
}


def _ci(d: dict[str, float] | None, *, pct: bool = False) -> str:
    if not d:
        return "-"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
    return f"{f(d['estimate'])} [{f(d['ci_low'])}, {f(d['ci_high'])}]"


def render(audit: dict[str, Any], console: Console) -> None:
    """Theory epsilon, the canary audit's empirical lower bound, and each attack's AUC / TPR at low FPR."""
    theory = audit.get("theory") or {}
    eps = theory.get("epsilon")
    canary = audit.get("canary") or {}
    head = Table(title=f"privacy audit of {audit.get('run', '')}", show_lines=False)
    head.add_column("what")
    head.add_column("value")
    head.add_row("mode", str(theory.get("mode", "-")))
    head.add_row(
        "theory epsilon (privacy.json)",
        f"{eps:.3g} at delta {theory.get('delta'):g}" if eps else "none (non-private)",
    )
    if canary:
        head.add_row(
            "empirical epsilon lower bound (canaries)",
            f"{canary['epsilon_lower_bound']:.3f} ({canary['correct']}/{canary['guesses']} right, "
            f"ceiling {canary['ceiling']:.2f})",
        )
    else:
        head.add_row("empirical epsilon lower bound (canaries)", "not run (train with canaries)")
    console.print(head)
    mia = audit.get("mia") or {}
    attacks = mia.get("attacks") or {}
    if not attacks:
        return
    t = Table(
        title=f"membership inference: {mia.get('members')} members vs {mia.get('nonmembers')} non-members"
        + (f", {mia['reference_models']} reference models" if mia.get("reference_models") else "")
    )
    for col in ("attack", "AUC [95% CI]", "TPR @ 1% FPR", "TPR @ 0.1% FPR", "advantage"):
        t.add_column(col)
    for key, res in attacks.items():
        t.add_row(
            ATTACK_NAMES.get(key, key),
            _ci(res.get("auc")),
            _ci(res.get("tpr_at_0.01_fpr"), pct=True),
            _ci(res.get("tpr_at_0.001_fpr"), pct=True),
            _ci(res.get("advantage")),
        )
    console.print(t)


def register(app: typer.Typer) -> None:
    """Add `dprad audit` to ``app``."""

    @app.command("audit")
    def audit(
        run: Path = typer.Argument(..., help="a finished run directory"),
        attack: str = typer.Option("loss,lira,rmia", "--attack", help="comma-separated: loss, lira, rmia"),
        reference_models: int = typer.Option(
            16, "--reference-models", help="k models trained on random halves"
        ),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="bootstrap resamples for the CIs"),
        seed: int = typer.Option(0, "--seed", help="seed of the reference models' halves and the bootstrap"),
    ) -> None:
        """Attack a finished run (membership inference, LiRA, RMIA) and write RUN/audit.json."""
        from dprad.audit.run_audit import audit_run

        err = Console(stderr=True)
        result = audit_run(
            run,
            attacks=attack,
            reference_models=reference_models,
            rng=np.random.default_rng(seed),
            n_boot=bootstrap,
            on_progress=lambda msg: err.print(f"[dim]{msg}[/dim]"),
        )
        render(result, Console(width=160))


__all__ = ["register", "render"]
