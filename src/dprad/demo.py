"""``dprad demo``: the main job end to end on a synthetic corpus, in minutes on a laptop CPU.

synthetic chest X-ray reports with known labels -> rule-teacher labels (and their agreement with the known
labels) -> a small sweep on the teacher's labels (non-private, eps = 10 and eps = 1 in the default mode,
DP-LoRA at eps = 10, LP-FT with the product's defaults) -> evaluation against the known labels of each run's test split ->
membership-inference audit of the eps = 1 run (when dprad.audit exists) -> report.html and MODEL_CARD.md.

Every number printed is read back from the files the runs wrote; the epsilons are the runs' own ledgers.
The eps = 1 run is the one "shipped" (its model card): it was fixed before any result was seen, so no
selection cost applies to it; choosing the best cell instead would cost what OUT/sweep/selection.json says.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from dprad import io
from dprad.errors import DpradError
from dprad.run import RunRecord, files

# The demo corpus's seed, on the user stream of dprad.data.synth: the public corpus (used for the head's
# feature centre and warm start) has a stream of its own, so the two share no report.
DEMO_SEED = 2025
SHIPPED_EPSILON = 1.0  # the run the demo ships (model card), fixed in advance
LORA_EPSILON = 10.0


@dataclass(frozen=True)
class DemoSettings:
    n_patients: int
    max_length: int
    # DP-LoRA's schedule: None keeps the product's LoRA defaults (LP-FT), which the full demo shows;
    # --quick shortens it to keep the smoke run short
    lora_epochs: float | None
    lora_batch: int | None
    n_boot: int
    audit_attacks: str
    audit_reference_models: int
    audit_boot: int
    canaries: int  # the one-run canary audit: canaries in an extra eps = 1 run (0: none)


FULL = DemoSettings(
    n_patients=700,
    max_length=128,
    lora_epochs=None,
    lora_batch=None,
    n_boot=1000,
    audit_attacks="loss,lira,rmia",
    audit_reference_models=8,
    audit_boot=200,
    canaries=200,
)
QUICK = DemoSettings(
    n_patients=260,
    max_length=64,
    lora_epochs=1.0,
    lora_batch=64,
    n_boot=100,
    audit_attacks="loss",
    audit_reference_models=4,
    audit_boot=50,
    canaries=50,
)


@dataclass(frozen=True)
class DemoResult:
    out: Path
    corpus: Path  # the synthetic reports with their known labels
    labelled: Path  # the same reports with the rule teacher's labels (what the runs trained on)
    agreement: Path  # teacher vs known labels
    sweep: Path  # the sweep folder: cells/, results.csv / .parquet, selection.json
    results: Path
    selection: Path
    shipped_run: Path  # the eps = 1 default-mode run
    report: Path | None
    model_card: Path | None
    audit: Path | None  # membership inference on the shipped run
    canary_audit: Path | None  # the one-run canary audit (its own eps = 1 run)
    summary: tuple[str, ...]  # the five lines printed
    notes: tuple[str, ...]
    wall_s: float


class _Bars:
    """One rich progress display; each long step gets its own bar."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<42}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )

    @contextmanager
    def bar(self, description: str, total: float | None) -> Iterator[Callable[..., None]]:
        task: TaskID = self.progress.add_task(description, total=total)

        def update(**kw: Any) -> None:
            self.progress.update(task, **kw)

        yield update
        t = self.progress.tasks[[x.id for x in self.progress.tasks].index(task)]
        self.progress.update(task, completed=t.total if t.total is not None else 1, total=t.total or 1)


def _corpus_and_teacher(
    data_dir: Path, s: DemoSettings, bars: _Bars
) -> tuple[Path, Path, dict[str, Any], Path]:
    """The synthetic corpus (known labels), the rule teacher's labels of it (with their provenance record)
    and how well the two agree: (corpus, labelled, agreement, agreement file)."""
    from dprad.data.provenance import TeacherRecord, rules_detail, write_record
    from dprad.data.schemas import CHEXPERT14, UncertainPolicy
    from dprad.data.synth import SynthConfig, generate_reports
    from dprad.data.table import reports_frame, write_table
    from dprad.labeling.agreement import agreement
    from dprad.labeling.rules import label_text, rules_for

    # 1. the corpus, with the labels it was generated with
    with bars.bar("synthetic corpus", 1) as update:
        reports = generate_reports(SynthConfig(modality="cxr", n_patients=s.n_patients, seed=DEMO_SEED))
        corpus = data_dir / "synth_cxr_known_labels.csv"
        write_table(reports_frame(reports, CHEXPERT14), corpus)
        update(completed=1)
    # 2. the rule teacher's labels, and how well they agree with the known ones
    rules = rules_for(CHEXPERT14)
    with bars.bar("rule teacher", len(reports)) as update:
        predicted = []
        for i, r in enumerate(reports):
            predicted.append(label_text(r.text, rules))
            if i % 50 == 0:
                update(completed=i + 1)
    labelled = data_dir / "synth_cxr_teacher_labels.csv"
    write_table(reports_frame(reports, CHEXPERT14, labels=predicted), labelled)
    write_record(  # the runs' config and model card name their teacher
        labelled,
        TeacherRecord(
            teacher="rules",
            detail=rules_detail(CHEXPERT14.name),
            source=corpus.name,
            reports=len(reports),
            unlabelled=0,
        ),
    )
    agree = agreement(predicted, [r.labels for r in reports], CHEXPERT14, policy=UncertainPolicy.ONES)
    agreement_path = data_dir / "teacher_agreement.json"
    io.write_json(agreement_path, agree)
    return corpus, labelled, agree, agreement_path


def _sweep_config(s: DemoSettings, model: str, *, labelled: Path, corpus: Path) -> tuple[Any, int]:
    """The demo's sweep (eps 1, 10 and non-private heads, DP-LoRA, the canary run) and its number of modes."""
    from dprad.sweep import SweepConfig

    modes: list[Any] = [
        "auto",
        {
            "mode": "lora",
            "epsilons": [LORA_EPSILON],
            "train": {
                k: v for k, v in (("epochs", s.lora_epochs), ("batch_size", s.lora_batch)) if v is not None
            },
        },
    ]
    if s.canaries and _has_canaries():  # an audit run of its own: canaries never go into a shipped model
        modes.append(
            {
                "mode": "head",
                "name": "head-canaries",
                "epsilons": [SHIPPED_EPSILON],
                "train": {"audit_canaries": s.canaries},
            }
        )
    cfg = SweepConfig.from_dict(
        {
            "name": "demo",
            "model": {"name": model, "max_length": s.max_length},
            "grid": {
                "epsilons": [SHIPPED_EPSILON, 10, "inf"],
                "modes": modes,
                "seeds": [0],
                "datasets": [
                    {
                        "name": "synth-cxr",
                        "path": str(labelled.resolve()),
                        "format": "csv",
                        "schema": "chexpert14",
                        "eval_path": str(corpus.resolve()),
                    }
                ],
            },
            "evaluate": {"n_boot": s.n_boot},
            "report": False,  # written below, after the audit
        },
        source="demo",
    )
    return cfg, len(modes)


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    model: str = "minilm",
    jobs: int = 1,
    console: Console | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the demo into ``out`` (resumable: finished cells are reused) and print where everything is."""
    from dprad.sweep import run_sweep

    tick = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = QUICK if quick else FULL
    con = console or Console(stderr=True)  # progress bars
    say = console or Console(soft_wrap=True)  # where the outputs are, and the summary (stdout)
    notes: list[str] = []
    bars = _Bars(con, progress)
    data_dir = out / "data"
    with bars.progress:
        # 1-2. the corpus with the labels it was generated with; the rule teacher's labels and agreement
        corpus, labelled, agree, agreement_path = _corpus_and_teacher(data_dir, s, bars)
        # 3. the sweep: trained on the teacher's labels, evaluated against the known labels
        sweep_dir = out / "sweep"
        cfg, n_modes = _sweep_config(s, model, labelled=labelled, corpus=corpus)
        with (
            bars.bar(f"sweep: {n_modes + 2} runs", n_modes + 2) as cells_bar,
            bars.bar("  training steps", None) as steps_bar,
        ):

            def on_cell(cell: str, done: int, total: int) -> None:
                cells_bar(completed=done, total=total, description=f"sweep: {done}/{total} runs done")

            def on_step(info: Any) -> None:
                steps_bar(completed=info.step, total=info.steps)

            sweep = run_sweep(
                cfg, sweep_dir, jobs=jobs, progress=on_cell, on_step=on_step if jobs == 1 else None
            )
        notes += sweep.notes
        df = sweep.table()
        failed = df[df.status != "done"]
        for r in failed.itertuples(index=False):
            notes.append(f"cell {r.cell} {r.status}: {r.error}")
        shipped = _pick(df, private=True, epsilon=SHIPPED_EPSILON, lora=False)
        if shipped is None:
            raise DpradError(f"demo: the eps = {SHIPPED_EPSILON:g} run failed (see {sweep.results_csv})")
        shipped_dir = Path(shipped["run_dir"])
        # 4. audit the shipped run, when the audit module exists; the canary run audited itself
        audit_path = _audit(shipped_dir, s, bars, notes)
        canary_rows = df[df.cell.str.contains("canaries") & (df.status == "done")]
        canary_path = Path(canary_rows.run_dir.iloc[0]) / files.AUDIT if len(canary_rows) else None
        # 5. report and model card, when the report module exists
        done_runs = [Path(p) for p in df[df.status == "done"].run_dir]
        report, card = _report(out, done_runs, sweep.results_parquet, shipped_dir, bars, notes)
    summary = _summary(agree, df, out)
    wall = time.perf_counter() - tick
    _print(say, out, sweep_dir, report, card, audit_path, canary_path, sweep.selection, summary, notes, wall)
    return DemoResult(
        out=out,
        corpus=corpus,
        labelled=labelled,
        agreement=agreement_path,
        sweep=sweep_dir,
        results=sweep.results_csv,
        selection=sweep.selection,
        shipped_run=shipped_dir,
        report=report,
        model_card=card,
        audit=audit_path,
        canary_audit=canary_path,
        summary=summary,
        notes=tuple(notes),
        wall_s=round(wall, 1),
    )


def _has_canaries() -> bool:
    from dataclasses import fields

    from dprad.config import TrainConfig

    return "audit_canaries" in {f.name for f in fields(TrainConfig)}


def _pick(df: Any, *, private: bool, epsilon: float | None, lora: bool) -> dict[str, Any] | None:
    rows = df[
        (df.status == "done")
        & (df.private == private)
        & (df["mode"].str.contains("lora") == lora)
        & ~df.cell.str.contains("canaries")
    ]
    if epsilon is not None:
        rows = rows[rows.epsilon_target == epsilon]
    return None if rows.empty else dict(rows.iloc[0])


def _audit(run_dir: Path, s: DemoSettings, bars: _Bars, notes: list[str]) -> Path | None:
    try:
        from dprad.audit.run_audit import audit_run
        from dprad.stages.train import train
    except ImportError:
        notes.append("audit: dprad.audit is not available in this install; no audit run")
        return None
    import numpy as np

    with bars.bar("membership-inference audit (eps = 1 run)", None) as update:
        try:
            audit_run(
                run_dir,
                attacks=s.audit_attacks,
                reference_models=s.audit_reference_models,
                rng=np.random.default_rng(0),
                n_boot=s.audit_boot,
                on_progress=lambda msg: update(description=f"audit: {msg}"[:42]),
                train_fn=train,
            )
        except Exception as err:  # noqa: BLE001 - the demo reports a failed audit and goes on
            notes.append(f"audit failed: {type(err).__name__}: {err}")
            return None
    return run_dir / files.AUDIT


def _report(
    out: Path, runs: list[Path], table: Path, shipped: Path, bars: _Bars, notes: list[str]
) -> tuple[Path | None, Path | None]:
    report = card = None
    with bars.bar("report.html and MODEL_CARD.md", 2) as update:
        try:
            from dprad.report.html import write_report
        except ImportError:
            notes.append("report: dprad.report.html is not available in this install; no report.html")
        else:
            report = Path(
                write_report(
                    runs,
                    out / "report.html",
                    sweep_table=table,
                    title="dprad demo: synthetic chest X-ray reports",
                )
            )
        update(completed=1)
        try:
            from dprad.report.model_card import write_model_card
        except ImportError:
            notes.append(
                "model card: dprad.report.model_card is not available in this install; no MODEL_CARD.md"
            )
        else:
            card = Path(write_model_card(shipped, out / files.MODEL_CARD))
        update(completed=2)
    return report, card


def _line(df: Any, *, private: bool, epsilon: float | None, lora: bool, what: str) -> str:
    row = _pick(df, private=private, epsilon=epsilon, lora=lora)
    if row is None:
        return f"{what}: failed (see the results table)"
    run = RunRecord.open(row["run_dir"])
    ev, led = run.evaluation, run.ledger
    if ev is None:
        return f"{what}: not evaluated (see the results table)"
    f1, auc = ev.metric("weighted_f1"), ev.metric("macro_auroc")
    eps = (
        f"eps = {led.epsilon:.4g} spent of {led.target_epsilon:g}, delta = {led.delta:.0e}"
        if led.private
        else "no privacy guarantee"
    )
    at = "the shipped thresholds" if ev.thresholds == "val" else f"threshold {ev.thresholds}"
    return (
        f"{what} ({led.mode}, {led.steps} steps): weighted F1 {f1.estimate:.3f} "
        f"[{f1.low:.3f}, {f1.high:.3f}], macro AUROC {auc.estimate:.3f} on {ev.reports} test reports at {at}; {eps}"
    )


def _summary(agree: dict[str, Any], df: Any, out: Path) -> tuple[str, ...]:
    """Five lines, every number read from the files the steps wrote."""
    saved = json.loads((out / "data" / "teacher_agreement.json").read_text())
    assert math.isclose(saved["weighted_f1"], agree["weighted_f1"])
    return (
        f"rule teacher vs the corpus's known labels: weighted F1 {saved['weighted_f1']:.3f}, macro F1 "
        f"{saved['macro_f1']:.3f} on {saved['reports']} reports (the runs below train on the teacher's labels)",
        _line(df, private=False, epsilon=None, lora=False, what="non-private head"),
        _line(df, private=True, epsilon=10.0, lora=False, what="private head, eps 10"),
        _line(df, private=True, epsilon=SHIPPED_EPSILON, lora=False, what="private head, eps 1 (shipped)"),
        _line(df, private=True, epsilon=LORA_EPSILON, lora=True, what="DP-LoRA (LP-FT), eps 10"),
    )


def _print(
    con: Console,
    out: Path,
    sweep_dir: Path,
    report: Path | None,
    card: Path | None,
    audit: Path | None,
    canary: Path | None,
    selection: Path,
    summary: tuple[str, ...],
    notes: list[str],
    wall: float,
) -> None:
    con.print(f"\n[bold]dprad demo[/bold] finished in {wall:.0f} s. Outputs in {out.resolve()}:")
    con.print(f"  report        {report.resolve() if report else '(not written)'}")
    con.print(f"  model card    {card.resolve() if card else '(not written)'}")
    con.print(f"  runs          {(sweep_dir / 'cells').resolve()}")
    con.print(f"  results       {(sweep_dir / 'results.csv').resolve()}")
    con.print(f"  choosing cost {selection.resolve()}")
    if audit:
        con.print(f"  audit (MIA)   {audit.resolve()}")
    if canary and canary.is_file():
        c = RunRecord.open(canary.parent).audit_sections().get("canary") or {}
        if c:
            con.print(
                f"  canary audit  {canary.resolve()}: {c['correct']}/{c['guesses']} guesses right of {c['m']} "
                f"canaries -> empirical eps >= {c['epsilon_lower_bound']:.3g} ({c['confidence']:.0%} confidence; "
                f"ledger eps {c['ledger_epsilon']:.3g}; the largest bound this audit could show: {c['ceiling']:.3g})"
            )
    con.print("\n[bold]summary[/bold] (weighted F1 with 95% patient-bootstrap CIs, against the known labels)")
    for line in summary:
        con.print(f"  {line}")
    for note in notes:
        con.print(f"[yellow]note:[/yellow] {note}")


__all__ = ["DEMO_SEED", "FULL", "QUICK", "DemoResult", "DemoSettings", "run_demo"]
