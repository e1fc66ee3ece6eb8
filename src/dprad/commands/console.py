"""Everything the commands print with rich: tables, progress bars and one-line summaries.

Progress and notes go to ``console`` (stderr); results go to stdout, as tables sized for a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

if TYPE_CHECKING:
    from dprad.data.inspect import Inspection
    from dprad.run.audit import Attribute, Canary, Extraction
    from dprad.run.results import Interval
    from dprad.serve.auditlog import WasSent
    from dprad.serve.monitor import MonitorResult
    from dprad.stages.finish import TrainResult
    from dprad.stages.fit import StepInfo

console = Console(stderr=True)


# ------------------------------------------------------------------------------------------ data, label


def print_inspection(path: Path, ins: Inspection) -> None:
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


@contextmanager
def counting(name: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (nothing otherwise); yields ``done(n)``: n items are finished."""
    with Progress(console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(name, total=total)
        yield lambda n: progress.update(task, completed=n)


def print_llm_summary(summary: Mapping[str, Any]) -> None:
    console.print(
        f"llm: {summary['answered']} answered, {summary['cached']} from cache, {summary['retries']} retries, "
        f"{summary['failed']} failed (their label cells are left empty); structured output: {summary['structured_output']}"
    )
    for rid, why in list(summary["failures"].items())[:20]:
        console.print(f"  failed {rid}: {why}")


def print_labelled(out: Path, reports: int, skipped: list[tuple[str, str]], unlabelled: int) -> None:
    for rid, why in skipped:
        console.print(f"skipped {rid}: {why}")
    console.print(f"wrote {reports} reports ({len(skipped)} skipped) to {out}")
    if unlabelled:
        console.print(
            f"{unlabelled} reports have no labels (column 'labelled' = 0): training and evaluation leave them out"
        )


def _bounds(ci: Mapping[str, float] | None, digits: int) -> str:
    """'[low, high]' of a patient-bootstrap interval, or nothing (no interval, or undefined)."""
    if not ci or ci["ci_low"] != ci["ci_low"]:
        return ""
    return f"[{ci['ci_low']:.{digits}f}, {ci['ci_high']:.{digits}f}]"


def print_agreement(report: Mapping[str, Any], teacher: str) -> None:
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


# ------------------------------------------------------------------------------------------ train


class TrainingBars:
    """The hooks of a training run's bars: ``features(done, total)`` for the frozen encoder's feature
    pass (reports, with an ETA), ``step(info)`` for the steps (loss, epsilon so far, speed)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.train = progress.add_task("train", total=None, unit="steps", info="preparing")
        self.feature_task: Any = None

    def features(self, done: int, total: int) -> None:
        if self.feature_task is None:
            self.feature_task = self.progress.add_task("features", total=total, unit="reports", info="")
        self.progress.update(self.feature_task, total=total, completed=done)

    def step(self, s: StepInfo) -> None:
        eps = f" eps {s.epsilon:.3g}" if s.epsilon is not None else ""
        self.progress.update(
            self.train,
            total=s.steps,
            completed=s.step,
            info=f"loss {s.loss:.4f}{eps} {s.examples_per_s:.0f} ex/s",
        )


@contextmanager
def training_progress() -> Iterator[TrainingBars]:
    """The training bars on a terminal (nothing otherwise); yields their hooks."""
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        yield TrainingBars(progress)


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def print_trained(out: Path, result: TrainResult, canary: Canary | None) -> None:
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
    if canary is not None:
        console.print(
            f"audit: {canary.raw.get('m')} canaries, {canary.correct}/{canary.guesses} guesses right -> empirical "
            f"epsilon >= {_g(canary.epsilon_lower_bound)} (95%; this audit can show at most {_g(canary.ceiling)}); "
            f"ledger epsilon {led.epsilon if led.epsilon is not None else 'inf (not private)'}"
        )


# ------------------------------------------------------------------------------------------ evaluate


def _ci(d: Mapping[str, float]) -> str:
    if d["estimate"] != d["estimate"]:  # NaN
        return "n/a"
    return f"{d['estimate']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def print_evaluation(res: Mapping[str, Any]) -> None:
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
        _print_subgroups(out, attr, sub)


def _print_subgroups(out: Console, attr: str, sub: Mapping[str, Any]) -> None:
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


def print_comparison(res: Mapping[str, Any], run_a: Path, run_b: Path) -> None:
    o = Console(width=160)
    o.print(f"B={run_b} minus A={run_a} on {res['reports']} reports ({res['split']})")
    t = Table()
    for col in ("metric", "A", "B", "B - A [95% CI]", "p"):
        t.add_column(col)
    rows = [(k, d) for k, d in res["headline"].items()]
    rows += [(f"F1 {row['label']}", row["f1"]) for row in res["per_label"]]
    for name, d in rows:
        t.add_row(
            name,
            f"{d['a']:.3f}",
            f"{d['b']:.3f}",
            f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
            f"{d['p_value']:.3g}",
        )
    o.print(t)


# ------------------------------------------------------------------------------------------ audit

ATTACK_NAMES = {
    "loss": "loss",
    "confidence": "confidence",
    "lira_online": "LiRA online",
    "lira_offline": "LiRA offline",
    "rmia": "RMIA",
    "rmia_offline": "RMIA offline",
}


def _audit_ci(i: Interval | None, *, pct: bool = False) -> str:
    if i is None or i.estimate is None:
        return "-"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
    ci = f" [{f(i.low)}, {f(i.high)}]" if i.low is not None and i.high is not None else ""
    return f"{f(i.estimate)}{ci}"


def _render_attribute(section: Attribute | None, out: Console) -> None:
    """Attribute inference: per label, how much better the finding is recovered for members."""
    if section is None:
        return
    from dprad.run.audit import AttributeRow
    from dprad.run.results import Interval

    t = Table(title="attribute inference: the finding's sentences removed, members vs non-members")
    for col in ("label", "members", "non-members", "AUC [95% CI]", "TPR @ 1% FPR"):
        t.add_column(col)
    if section.control:
        t.add_column("control AUC (another split seed)")
    t.add_column("note")
    none = Interval(None)
    pooled = section.pooled or AttributeRow("all labels (pooled)", False, False, None, None, none, none, "")
    for row in (pooled, *section.labels):
        flags = " (rare)" if row.rare else ""
        flags += " (critical)" if row.critical else ""
        t.add_row(
            f"{row.label}{flags}",
            "-" if row.members is None else str(row.members),
            "-" if row.nonmembers is None else str(row.nonmembers),
            _audit_ci(row.auc),
            _audit_ci(row.tpr_at_1pct_fpr, pct=True),
            *([_audit_ci(row.control_auc)] if section.control else []),
            row.note,
        )
    out.print(t)


def _render_extraction(section: Extraction | None, out: Console) -> None:
    """Model extraction: the clone's agreement with the victim by number of attacker queries."""
    if section is None:
        return
    t = Table(
        title=f"model extraction through {section.through or '?'}: clone vs victim on "
        f"{section.evaluated_on or '?'} (constant clone agrees {section.constant_agreement or 0:.3f})"
    )
    for col in ("queries (reports)", "agreement [95% CI]", "clone weighted F1 [95% CI]"):
        t.add_column(col)
    for point in section.points:
        t.add_row(str(point.queries), _audit_ci(point.agreement), _audit_ci(point.clone_weighted_f1))
    out.print(t)
    if section.cut_off is not None:
        out.print(f"[yellow]the server cut the attacker off: {section.cut_off}[/yellow]")


def render_audit(content: Mapping[str, Any], out: Console) -> None:
    """Theory epsilon, the canary audit's empirical lower bound, and each attack's AUC / TPR at low FPR
    (``content``: audit.json's, read through :func:`dprad.run.audit.audit_of`)."""
    from dprad.run.audit import audit_of
    from dprad.run.files import AUDIT

    audit = audit_of(content, source=AUDIT)
    theory, canary = audit.theory, audit.canary
    eps = theory.epsilon if theory else None
    head = Table(title=f"privacy audit of {audit.run or ''}", show_lines=False)
    head.add_column("what")
    head.add_column("value")
    head.add_row("mode", theory.mode if theory and theory.mode is not None else "-")
    head.add_row(
        "theory epsilon (privacy.json)",
        f"{eps:.3g} at delta {theory.delta if theory else None:g}" if eps else "none (non-private)",
    )
    if canary is not None and canary.raw:
        head.add_row(
            "empirical epsilon lower bound (canaries)",
            f"{canary.epsilon_lower_bound:.3f} ({canary.correct}/{canary.guesses} right, "
            f"ceiling {canary.ceiling:.2f})",
        )
    else:
        head.add_row("empirical epsilon lower bound (canaries)", "not run (train with canaries)")
    out.print(head)
    _render_attribute(audit.attribute, out)
    _render_extraction(audit.extraction, out)
    mia = audit.mia
    if mia is None or not mia.attacks:
        return
    t = Table(
        title=f"membership inference: {mia.members} members vs {mia.nonmembers} non-members"
        + (f", {mia.reference_models} reference models" if mia.reference_models else "")
    )
    for col in ("attack", "AUC [95% CI]", "TPR @ 1% FPR", "TPR @ 0.1% FPR", "advantage"):
        t.add_column(col)
    for a in mia.attacks:
        t.add_row(
            ATTACK_NAMES.get(a.name, a.name),
            _audit_ci(a.auc),
            _audit_ci(a.tpr_at_1pct_fpr, pct=True),
            _audit_ci(a.tpr_at_01pct_fpr, pct=True),
            _audit_ci(a.advantage),
        )
    out.print(t)


# ------------------------------------------------------------------------------------------ sweep


def results_table(df: Any, *, title: str = "") -> Table:
    """The sweep's results as a console table: one row per cell, F1 and AUROC with their 95% CIs."""
    t = Table(title=title or None)
    for col in (
        "cell",
        "mode",
        "eps target",
        "eps spent",
        "weighted F1 [95% CI]",
        "macro AUROC [95% CI]",
        "status",
        "s",
    ):
        t.add_column(col, justify="left" if col in ("cell", "mode", "status") else "right")
    for r in df.itertuples(index=False):
        status = str(r.status) + (" (reused)" if bool(r.reused) else "")
        if r.status == "failed":
            status = f"failed: {str(r.error)[:80]}"
        t.add_row(
            str(r.cell),
            str(r.mode),
            _eps(r.epsilon_target),
            _eps(r.epsilon_spent),
            _cell_ci(r.weighted_f1, r.weighted_f1_low, r.weighted_f1_high),
            _cell_ci(r.macro_auroc, r.macro_auroc_low, r.macro_auroc_high),
            status,
            "" if _nan(r.wall_s) else f"{r.wall_s:.0f}",
        )
    return t


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _eps(x: Any) -> str:
    if _nan(x):
        return "-"
    return "inf" if math.isinf(x) else f"{x:.3g}"


def _cell_ci(est: Any, low: Any, high: Any) -> str:
    if _nan(est):
        return "-"
    if _nan(low):
        return f"{est:.3f}"
    return f"{est:.3f} [{low:.3f}, {high:.3f}]"


@contextmanager
def sweep_progress(name: str, *, steps: bool) -> Iterator[tuple[Callable[..., None], Callable[..., None]]]:
    """Bars for a sweep's cells and (``steps``: one cell at a time) the training steps of the current cell;
    yields the hooks ``on_cell(cell, done, total)`` and ``on_step(info)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        cells = bar.add_task(f"sweep {name}", total=None)
        step_task = bar.add_task("  training", total=None, visible=steps)

        def on_cell(cell: str, done: int, total: int) -> None:
            bar.update(cells, completed=done, total=total, description=f"sweep {name}: {cell}")

        def on_step(info: Any) -> None:
            bar.update(step_task, completed=info.step, total=info.steps)

        yield on_cell, on_step


# ------------------------------------------------------------------------------------------ serve


def print_audit_log_summary(df: Any, log_dir: Path) -> None:
    table = Table(title=f"audit log {log_dir}")
    for col in df.columns:
        table.add_column(str(col), justify="left" if col in {"key_id", "first", "last"} else "right")
    for row in df.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    Console().print(table)


def print_was_sent(result: WasSent, text_file: Path | None, text: str) -> None:
    for m in result.matches:
        print(
            f"{m['time']}  key {m['key_id'] or '(no key)'}  {m['endpoint']}  status {m['status']}  "
            f"secret {m['hmac_key_id']}"
        )
    verdict = f"found in {len(result.matches)}" if result.found else "not found in any"
    print(f"{verdict} of {_lines(result.checked)} with report hashes under the given secret(s)")
    if result.other_keys:
        n_other = sum(result.other_keys.values())
        ids = ", ".join(f"{k} ({n})" for k, n in sorted(result.other_keys.items()))
        print(
            f"{_lines(n_other)} {'was' if n_other == 1 else 'were'} hashed under another secret: give "
            f"that secret to check them (secret ids: {ids})"
        )
    if result.unkeyed:
        print(f"not checked: {_lines(result.unkeyed)} with plain report_sha256 hashes (before keyed hashes)")
    if not result.found and text_file is not None and text.endswith("\n"):
        print(f"note: {text_file} ends with a newline, which is part of the text checked")


def _lines(n: int) -> str:
    return f"{n} line" if n == 1 else f"{n} lines"


def print_monitor(result: MonitorResult) -> None:
    con = Console()
    con.print(
        f"[bold]{result.run}[/] vs {result.data}: {result.n_new} new reports, reference "
        f"{result.n_reference} ({result.reference_source}); thresholds: {result.threshold_rule}"
    )
    for note in result.notes:
        con.print(f"note: {note}")
    sens = {c.label: c for c in result.sensitivity}
    t = Table()
    for col in (
        "label",
        "PSI",
        "KS p (adj)",
        "prevalence ref -> new",
        "diff (95% CI)",
        "sensitivity ref -> new",
        "flag",
    ):
        t.add_column(col, justify="left" if col in {"label", "flag"} else "right")
    for d in result.labels:
        c = sens.get(d.label)
        s = ""
        if c is not None:
            ref = f"{c.reference.estimate:.2f}" if c.reference and c.reference.n else "-"
            new = f"{c.new.estimate:.2f} ({c.new.k}/{c.new.n})" if c.new.n else "-"
            s = f"{ref} -> {new}"
        flags = [x for x in (d.score_severity, d.prevalence_severity, c.severity if c else "ok") if x != "ok"]
        t.add_row(
            d.label,
            f"{d.psi:.3f}",
            f"{d.ks_p_adj:.2g}",
            f"{d.reference_prevalence.estimate:.3f} -> {d.new_prevalence.estimate:.3f}",
            f"{d.prevalence_diff:+.3f} ({d.prevalence_diff_low:+.3f}, {d.prevalence_diff_high:+.3f})",
            s,
            ", ".join(sorted(set(flags))) or "ok",
        )
    con.print(t)
    for f in (result.length, result.oov):
        con.print(
            f"{f.name}: mean {f.reference_mean:.3g} -> {f.new_mean:.3g}, PSI {f.psi:.3f}, "
            f"KS p (adj) {f.ks_p_adj:.2g}: {f.severity}"
        )
    if not result.alerts:
        con.print("[green]no alert[/]")
    for a in result.alerts:
        colour = "red" if a.severity == "alert" else "yellow"
        con.print(f"[{colour}]{a.severity}[/] {a.kind}: {a.message}")


def print_federation(result: dict[str, Any], out: Path) -> None:
    """The federation's outcome: rounds, each hospital's and the network's weighted F1 with its CI."""
    rounds = [r for r in result.get("rounds", []) if "answered" in r]
    print(f"federation: {len(rounds)} round(s); results in {out / 'federation.json'}")
    secure = result.get("secure_aggregation", {})
    if secure.get("on"):
        print(
            f"  secure aggregation (SecAgg+), threshold {secure['threshold'].split(':')[0]}: {secure['server_sees']}"
        )
    for r in result.get("rounds", []):
        for site, why in {**r.get("declined", {}), **r.get("failed", {})}.items():
            print(f"  round {r['round']}: {site}: {why}")
    ev = result.get("evaluation", {})
    for site, e in {**ev.get("sites", {}), **({"overall": ev["overall"]} if "overall" in ev else {})}.items():
        w = e["headline"]["weighted_f1"]
        print(
            f"  {site}: weighted F1 {w['estimate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] on {e['reports']} test reports"
        )
    for site, d in result.get("client_level_dp", {}).get("per_site", {}).items():
        print(f"  client-level DP, {site}: epsilon {d['epsilon']:.3g} over {d['rounds']} round(s)")
