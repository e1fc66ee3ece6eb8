"""`dprad demo` end to end on a tiny encoder with the quick settings: the outputs exist and every number
of the five-line summary is the one the run files hold."""

from __future__ import annotations

import importlib.util
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from dprad.commands.sweep import register
from dprad.data.synth import SynthConfig, generate_reports
from dprad.demo import DEMO_SEED, QUICK, _has_canaries, run_demo
from dprad.nn.public import public_reports
from dprad.privacy import compute_epsilon, epsilon_of, event_from_dict
from report_agreement import check_agreement

NUM = r"(\d+\.\d+)"


def test_demo_writes_every_output_and_its_summary_is_read_from_the_runs(
    tiny_bert: Path, tmp_path: Path
) -> None:
    printed = io.StringIO()
    result = run_demo(
        tmp_path / "demo",
        quick=True,
        model=str(tiny_bert),
        console=Console(file=printed, width=300),
        progress=False,
    )
    text = printed.getvalue()
    for path in (result.corpus, result.labelled, result.agreement, result.results, result.selection):
        assert path.is_file()
    assert str(result.results.resolve()) in text and str(result.selection.resolve()) in text
    assert result.wall_s > 0
    # the report and the model card exist whenever the report module is installed
    if importlib.util.find_spec("dprad.report.html") is not None:
        assert result.report is not None and result.report.is_file() and str(result.report.resolve()) in text
        assert "<html" in result.report.read_text().lower()
    if importlib.util.find_spec("dprad.report.model_card") is not None:
        assert result.model_card is not None and result.model_card.is_file()
        # the card names the teacher the runs trained on (recorded beside the labelled table)
        assert (
            "- Teacher: rules (dprad's negation-aware rules for chexpert14)" in result.model_card.read_text()
        )
    if importlib.util.find_spec("dprad.audit.run_audit") is not None:
        assert result.audit is not None and "mia" in json.loads(result.audit.read_text())

    df = pd.read_csv(result.results)
    assert (df.status == "done").all(), df[["cell", "status", "error"]]
    canaries = df[df.cell.str.contains("canaries")]
    df = df[~df.cell.str.contains("canaries")]
    assert sorted(df["mode"]) == ["dp-head", "dp-head", "dp-lora", "head"]
    if _has_canaries():  # the one-run canary audit: its own eps = 1 run, audited while it trained
        assert len(canaries) == 1 and result.canary_audit == Path(canaries.run_dir.item()) / "audit.json"
        section = json.loads(result.canary_audit.read_text())["canary"]
        ledger = json.loads((Path(canaries.run_dir.item()) / "privacy.json").read_text())
        assert section["m"] == QUICK.canaries and section["ledger_epsilon"] == ledger["epsilon"] <= 1.0
        assert f"{section['correct']}/{section['guesses']} guesses right" in text
        assert f"empirical eps >= {section['epsilon_lower_bound']:.3g}" in text

    # five lines, each in the printed output, every number from a file the steps wrote
    assert len(result.summary) == 5 and all(line in text for line in result.summary)
    agree = json.loads(result.agreement.read_text())
    teacher = result.summary[0]
    assert (
        f"weighted F1 {agree['weighted_f1']:.3f}" in teacher and f"on {agree['reports']} reports" in teacher
    )
    rows = {
        1: df[(df["mode"] == "head")],
        2: df[(df["mode"] == "dp-head") & (df.epsilon_target == 10)],
        3: df[(df["mode"] == "dp-head") & (df.epsilon_target == 1)],
        4: df[(df["mode"] == "dp-lora")],
    }
    for i, row in rows.items():
        run_dir = Path(row.run_dir.item())
        ev = json.loads((run_dir / "evaluation.json").read_text())
        ledger = json.loads((run_dir / "privacy.json").read_text())
        m = re.search(
            rf"weighted F1 {NUM} \[{NUM}, {NUM}\], macro AUROC {NUM} on (\d+) test reports", result.summary[i]
        )
        assert m, result.summary[i]
        f1 = ev["headline"]["weighted_f1"]
        assert [float(x) for x in m.groups()[:3]] == [
            round(f1[k], 3) for k in ("estimate", "ci_low", "ci_high")
        ]
        assert float(m.group(4)) == round(ev["headline"]["macro_auroc"]["estimate"], 3)
        assert int(m.group(5)) == ev["reports"]
        # evaluated against the corpus's known labels, on the run's own test split
        assert ev["data"] == str(result.corpus.resolve()) and ev["split"] == "test"
        assert f"{ledger['steps']} steps" in result.summary[i]
        if ledger["private"]:
            eps = re.search(r"eps = ([\d.]+) spent of ([\d.]+)", result.summary[i])
            assert eps and float(eps.group(1)) == float(f"{ledger['epsilon']:.4g}")
            assert float(eps.group(2)) == ledger["target_epsilon"] == row.epsilon_target.item()
            # the eps is real: recomputed from the ledger's own numbers, at most the target
            again = ledger_epsilon(ledger)
            assert again == pytest.approx(ledger["epsilon"]) and again <= ledger["target_epsilon"]
        else:
            assert "no privacy guarantee" in result.summary[i]
    assert result.shipped_run == Path(rows[3].run_dir.item())
    if result.report is not None and result.model_card is not None:
        # for every run of the demo, the report's headline table, its at-a-glance sentence and the run's
        # model card quote the same numbers at the same (shipped) thresholds (the demo's own card is the
        # shipped run's; the others are written here the same way)
        from dprad.report import write_model_card

        runs = {Path(d).name: Path(d) for d in df[df.status == "done"].run_dir}
        cards = {n: write_model_card(d, tmp_path / f"card-{n}.md").read_text() for n, d in runs.items()}
        cards[result.shipped_run.name] = result.model_card.read_text()
        check_agreement(result.report.read_text(), cards, runs)
    # the shipped (eps = 1) run's export predicts exactly as the run, and evaluates
    from dprad.export import export_run
    from dprad.modes import load_run
    from dprad.stages.evaluate import EvalOptions, evaluate_run

    shared = export_run(result.shipped_run, tmp_path / "export")
    some = generate_reports(SynthConfig(n_patients=20, seed=DEMO_SEED + 7))
    assert np.array_equal(
        load_run(shared).predict(some).probs, load_run(result.shipped_run).predict(some).probs
    )
    ev = evaluate_run(shared, result.corpus, options=EvalOptions(n_boot=10))
    assert ev["split"].startswith("all") and ev["reports"] > 0
    # the choosing cost covers the three private cells
    sel = json.loads(result.selection.read_text())
    assert sorted(sel["groups"][0]["candidates"]) == sorted([*df[df.private].cell, *canaries.cell])

    # a second call reuses every finished run
    again = run_demo(
        tmp_path / "demo",
        quick=True,
        model=str(tiny_bert),
        console=Console(file=io.StringIO()),
        progress=False,
    )
    assert pd.read_csv(again.results).reused.all() and again.summary == result.summary


def test_demo_corpus_is_not_the_public_corpus() -> None:
    """The head's public warm start and feature centre use dprad's public corpus; the demo's 'private'
    corpus must share no report with it."""
    public = {r.text for r in public_reports("cxr")}
    demo = generate_reports(SynthConfig(modality="cxr", n_patients=QUICK.n_patients, seed=DEMO_SEED))
    assert not any(r.text in public for r in demo)


def test_commands_are_registered() -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    for command, flag in (("sweep", "--jobs"), ("demo", "--out")):
        res = runner.invoke(app, [command, "--help"])
        assert res.exit_code == 0 and flag in res.output


def ledger_epsilon(ledger: dict[str, Any]) -> float:
    """The ledger's epsilon recomputed from its own numbers: its whole event (training and any other DP
    release of the run) when it records one, else the DP-SGD steps."""
    if ledger.get("event"):
        return epsilon_of(event_from_dict(ledger["event"]), delta=ledger["delta"])
    return compute_epsilon(
        noise_multiplier=ledger["noise_multiplier"],
        sample_rate=ledger["sample_rate"],
        steps=ledger["steps"],
        delta=ledger["delta"],
    ).epsilon
