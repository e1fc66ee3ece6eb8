"""One self-contained HTML report over run directories: figures embedded as PNG data URIs, no external
resource (a Content-Security-Policy in the page forbids any), so it opens offline in any browser.

Rendering only: every number shown is read from the runs' files by :mod:`dprad.report.collect`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dprad.errors import DpradError
from dprad.io import write_text
from dprad.report import attacks, plots
from dprad.report.collect import Run, Selection, SweepTable, find_selection, read_runs, read_sweep_table
from dprad.report.fmt import fmt_interval, fmt_num
from dprad.report.glance import fmt_eps as fmt_eps
from dprad.report.glance import headline, legend
from dprad.report.glance import weighted_f1 as weighted_f1
from dprad.report.label_noise import Corpus, LabelNoiseStudy, load_study
from dprad.report.public import public_ledger, training_units
from dprad.run import files
from dprad.run.audit import Audit
from dprad.run.results import Evaluation, Interval, number

DEFAULT_TITLE = "dprad privacy-utility report"


def eval_source(ev: Evaluation | None) -> str:
    if ev is None:
        return "no metrics"
    name = Path(ev.source).name
    if ev.has_ci:
        boot = f", {ev.bootstrap_resamples} patient resamples" if ev.bootstrap_resamples else ""
        return f"{name}{boot}"
    return f"{name} (point estimates, no CI)"


# ---------------------------------------------------------------------------------------------------
# tables


def ledger_parts(run: Run) -> str:
    """The releases the ledger's epsilon is made of: 'training (DP-SGD) 0.991; thresholds (...) 0.1'."""
    parts = run.ledger.parts
    return "; ".join(f"{p.get('part') or '?'} {fmt_num(number(p.get('epsilon')), '.4g')}" for p in parts)


def selection_text(run: Run) -> str:
    """The ledger's DP threshold / model selection epsilon and its part's name, or '—'."""
    return "—" if run.selection is None else f"{fmt_num(run.selection[0], '.3g')} ({run.selection[1]})"


def _dp_row(r: Run) -> dict[str, str]:
    """The guarantee a run's ledger states and what its epsilon is made of."""
    led = r.ledger
    return {
        "run": r.name,
        "mode": led.mode,
        "private": "yes" if led.private else "no",
        "ε spent": fmt_num(r.epsilon, ".4g") if led.private else "∞",
        "target ε": fmt_num(led.target_epsilon, "g"),
        "δ": fmt_num(led.delta, ".1e"),
        "unit": led.privacy_unit,
        "accountant": (led.accountant or "—") + (f" ({led.accountant_note})" if led.accountant_note else ""),
        "selection ε": selection_text(r),
        "ε parts": ledger_parts(r) or "—",
        "training n": training_units(led),
    }


def _dp_mechanism_row(r: Run) -> dict[str, str]:
    """The DP-SGD mechanism behind a run's guarantee, as its ledger records it."""
    led = r.ledger
    return {
        "run": r.name,
        "noise σ": fmt_num(led.noise_multiplier, ".4g"),
        "clip C": fmt_num(led.max_grad_norm, "g"),
        "sample rate q": fmt_num(led.sample_rate, ".4g"),
        "expected batch": fmt_num(led.expected_batch_size, ".4g"),
        "steps": fmt_num(led.steps, "d"),
        "epochs": fmt_num(led.epochs, ".3g"),
        "sampler": led.sampler or "—",
        "trainable params": fmt_num(led.trainable_parameters, ",d"),
        "canaries": fmt_num(led.canaries, "d"),
    }


HEADLINE_METRICS = (
    ("weighted_f1", "weighted F1"),
    ("macro_f1", "macro F1"),
    ("micro_f1", "micro F1"),
    ("macro_auroc", "macro AUROC"),
)


def _metrics_row(r: Run) -> dict[str, str]:
    ev = r.evaluation
    row = {"run": r.name, "data": r.dataset, "mode": r.mode, "ε": fmt_eps(r)}
    for key, name in HEADLINE_METRICS:
        row[name] = fmt_interval(ev.metric(key)) if ev else "—"
    if ev is not None:
        size = f", {ev.reports} reports / {ev.patients} patients" if ev.reports else ""
        row["evaluated on"] = f"{Path(ev.data).name if ev.data else '?'} ({ev.split or '?'}{size})"
        row["thresholds"] = r.at
    else:
        row["evaluated on"] = row["thresholds"] = "—"
    row["source"] = eval_source(ev)
    return row


def _rare_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    out = []
    for r in runs:
        if r.evaluation is None:
            continue
        for lr in r.evaluation.per_label:
            if lr.rare:
                out.append(
                    {
                        "run": r.name,
                        "ε": fmt_eps(r),
                        "label": lr.label + (" (critical)" if lr.critical else ""),
                        "positives in test": fmt_num(lr.support, "d"),
                        "F1": fmt_interval(lr.f1),
                        "recall": fmt_interval(lr.recall),
                    }
                )
    return out


def _calibration_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    out = []
    for r in runs:
        cal = r.evaluation.calibration if r.evaluation else None
        if cal is None:
            continue
        worst = max(cal.per_label_ece, key=lambda t: t[1], default=None)
        out.append(
            {
                "run": r.name,
                "ε": fmt_eps(r),
                "pooled ECE": fmt_num(cal.pooled_ece, ".3f"),
                "pooled Brier": fmt_num(cal.pooled_brier, ".3f"),
                "worst label ECE": f"{worst[0]}: {worst[1]:.3f}" if worst else "—",
                "bins": f"{fmt_num(cal.n_bins, 'd')} {cal.binning}".strip(),
            }
        )
    return out


def _subgroup_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    out = []
    for r in runs:
        if r.evaluation is None:
            continue
        for s in r.evaluation.subgroups:
            gap = (
                f"{s.largest_tpr_gap:.3f} ({s.largest_tpr_gap_label})"
                if s.largest_tpr_gap is not None
                else "—"
            )
            for g in s.groups:
                out.append(
                    {
                        "run": r.name,
                        "ε": fmt_eps(r),
                        "attribute": s.attribute,
                        "group": g.name,
                        "reports": fmt_num(g.reports, "d"),
                        "weighted F1": fmt_interval(g.weighted_f1),
                        "small group": "yes" if g.small else "",
                        "largest TPR gap (label)": gap,
                    }
                )
    return out


def _transfer_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    out = []
    for r in runs:
        evs = [e for e in (r.evaluation, *r.extra_evaluations) if e is not None and e.domain_transfer]
        home = r.evaluation if r.evaluation and not r.evaluation.domain_transfer else None
        for ev in evs:
            out.append(
                {
                    "run": r.name,
                    "ε": fmt_eps(r),
                    "trained on": r.dataset,
                    "evaluated on": Path(ev.data).name if ev.data else "?",
                    "reports": fmt_num(ev.reports, "d"),
                    "weighted F1": fmt_interval(ev.metric("weighted_f1")),
                    "macro AUROC": fmt_interval(ev.metric("macro_auroc")),
                    "thresholds": r.at_of(ev),
                    "in-domain weighted F1": fmt_interval(home.metric("weighted_f1")) if home else "—",
                    "notes": "; ".join(ev.notes),
                }
            )
    return out


ATTACK_NAMES = {"lira_online": "LiRA online", "lira_offline": "LiRA offline", "rmia": "RMIA"}
ATTACK_NAMES |= {"rmia_offline": "RMIA offline"}


def _mia_text(a: Audit) -> str:
    m = a.mia
    if m is None:
        return "—"
    if m.attacks:
        return "; ".join(f"{ATTACK_NAMES.get(x.name, x.name)} {fmt_interval(x.auc)}" for x in m.attacks)
    return fmt_num(m.auc, ".3f")


def _audit_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    out = []
    for r in runs:
        a = r.audit
        if a is None:
            continue
        c = a.canary
        verdict = "—"
        if c is not None and c.exceeds_ledger is not None:
            verdict = "ABOVE the ledger's ε: a privacy bug" if c.exceeds_ledger else "consistent"
        out.append(
            {
                "run": r.name,
                "ε (ledger)": fmt_eps(r),
                "empirical ε lower bound": fmt_num(c.epsilon_lower_bound, ".3g") if c else "not run",
                "canary guesses right": f"{fmt_num(c.correct, 'd')} / {fmt_num(c.guesses, 'd')}"
                if c
                else "—",
                "audit ceiling": fmt_num(c.ceiling, ".3g") if c else "—",
                "bound vs ledger": verdict,
                "membership inference AUC [95% CI]": _mia_text(a),
                "source": Path(a.source).name,
            }
        )
    return out


def _selection_rows(sel: Selection | None) -> list[dict[str, str]]:
    out = []
    for g in sel.groups if sel else ():
        for c in g.costs:
            out.append(
                {
                    "dataset": g.dataset,
                    "choosing among": f"{g.scope} ({len(g.candidates)} runs)",
                    "compared on": g.compared_on,
                    "bound": c.method,
                    "ε of the chosen run": fmt_num(c.epsilon, ".4g"),
                    "δ": fmt_num(c.delta, ".1e"),
                    "largest single run's ε": fmt_num(c.largest_single_epsilon, ".4g"),
                    "holds when": c.assumption,
                }
            )
    return out


@dataclass(frozen=True)
class Table:
    id: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def table(id_: str, rows: Sequence[dict[str, str]]) -> Table | None:
    if not rows:
        return None
    columns = tuple(rows[0])
    return Table(id_, columns, tuple(tuple(row.get(c, "") for c in columns) for row in rows))


def _sweep(t: SweepTable | None) -> Table | None:
    return Table("table-sweep", t.columns, t.rows) if t is not None and t.rows else None


# ---------------------------------------------------------------------------------------------------
# label noise x DP (a study from bench/label_noise.py, not from the runs)


@dataclass(frozen=True)
class LabelBlock:
    """One rare or critical label: a row per teacher, a cell per eps."""

    label: str
    marks: tuple[str, ...]  # "rare", "critical"
    positives: str
    rows: tuple[tuple[str, tuple[str, ...]], ...]  # (teacher, sensitivity per eps)


@dataclass(frozen=True)
class NoiseCorpus:
    name: str
    eps: tuple[str, ...]  # column heads
    f1: Table
    sensitivity_id: str
    labels: tuple[LabelBlock, ...]


def _eps_head(eps: float) -> str:
    return "ε = ∞ (non-private)" if math.isinf(eps) else f"ε = {fmt_num(eps, 'g')}"


def _rate(values: Sequence[tuple[float, float]]) -> str:
    """A teacher's realised rate: one number when every eps saw the same training labels (the study's
    noise does not depend on eps), else each eps's."""
    if len({v for _, v in values}) == 1:
        return fmt_num(values[0][1], ".3f")
    return "; ".join(f"{fmt_num(v, '.3f')} (ε {fmt_num(e, 'g')})" for e, v in values)


def _noise_corpus(c: Corpus, i: int) -> NoiseCorpus:
    epsilons = c.epsilons
    rows = []
    for t in c.teachers:
        row = {
            "teacher": t.name,
            "training labels FNR": _rate(
                [(x.epsilon, x.training_label_noise.false_negative_rate) for x in t.cells]
            ),
            "training labels FPR": _rate(
                [(x.epsilon, x.training_label_noise.false_positive_rate) for x in t.cells]
            ),
        }
        for eps in epsilons:
            cell = t.cell(eps)
            f1 = cell.weighted_f1 if cell is not None else None
            row[_eps_head(eps)] = f"{f1.mean:.3f} ({f1.min:.3f}..{f1.max:.3f})" if f1 is not None else "—"
        rows.append(row)
    f1_table = table(f"table-label-noise-f1-{i}", rows)
    assert f1_table is not None  # a corpus has at least one teacher
    blocks = []
    for j, lab in enumerate(c.labels):
        if not (lab.rare or lab.critical):
            continue
        per_teacher = []
        for t in c.teachers:
            cells = []
            for eps in epsilons:
                cell = t.cell(eps)
                if cell is None:
                    cells.append("—")
                    continue
                s = cell.per_label[j].sensitivity
                cells.append(fmt_interval(Interval(s.estimate, s.ci_low, s.ci_high)))
            per_teacher.append((t.name, tuple(cells)))
        marks = tuple(m for m, on in (("rare", lab.rare), ("critical", lab.critical)) if on)
        blocks.append(LabelBlock(lab.label, marks, fmt_num(lab.test_positives, ".3g"), tuple(per_teacher)))
    return NoiseCorpus(
        c.name, tuple(_eps_head(e) for e in epsilons), f1_table, f"table-label-noise-sens-{i}", tuple(blocks)
    )


def label_noise_view(study: LabelNoiseStudy | None) -> dict[str, Any] | None:
    if study is None:
        return None
    return {
        "source": study.source,
        "rare_below": fmt_num(study.rare_below, "g"),
        "resamples": fmt_num(study.resamples, ",d"),
        "corpora": [_noise_corpus(c, i) for i, c in enumerate(study.corpora)],
    }


# ---------------------------------------------------------------------------------------------------
# the page


PLAIN_NOT_COVERED = (
    "the base model's own pre-training data (it was trained by others, before dprad saw it)",
    "the validation reports, where thresholds or the best run were chosen on them without DP "
    "(the table of DP parameters shows a selection ε where one was paid)",
    "a patient with several reports, beyond about k × ε for k reports, when the unit is one report",
    "the reports people send to the model for classification, and what its answers reveal about them: "
    "the guarantee covers the training reports, for any number of queries to this fixed model",
    "non-private runs (ε = ∞): no guarantee at all",
)


def build_context(
    runs: Sequence[Run],
    *,
    sweep: SweepTable | None,
    title: str,
    skipped: Sequence[str],
    selection: Selection | None = None,
    label_noise: LabelNoiseStudy | None = None,
) -> dict[str, Any]:
    ordered = sorted(runs, key=plots.run_order)
    datasets = list(dict.fromkeys(r.dataset for r in ordered))
    figures = {
        "utility": plots.privacy_utility(ordered),
        "labels": [
            p for i, d in enumerate(datasets) if (p := plots.label_heatmap(ordered, d, i)) is not None
        ],
        "reliability": plots.reliability(ordered),
        "subgroups": plots.subgroup_gap(ordered),
        "audit": plots.audit(ordered),
        "extraction": attacks.extraction_plot(ordered),
    }
    public = {r.name: public_ledger(r.record) for r in ordered}  # local paths named, no split sizes
    ledger_items = list(dict.fromkeys(x for r in ordered for x in public[r.name].not_protected))
    private_by_data = {d: sum(r.private for r in ordered if r.dataset == d) for d in datasets}
    no_ci = [r.name for r in ordered if r.evaluation is not None and not r.evaluation.has_ci]
    selection_cols = [c for c in (sweep.columns if sweep else ()) if "select" in c.lower()]
    return {
        "title": title,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "n_runs": len(ordered),
        "n_private": sum(r.private for r in ordered),
        "datasets": datasets,
        "headlines": [headline(r) for r in ordered],
        "legend": legend(ordered),
        "figures": figures,
        "tables": {
            "headline": table("table-headline", [_metrics_row(r) for r in ordered]),
            "rare": table("table-rare", _rare_rows(ordered)),
            "calibration": table("table-calibration", _calibration_rows(ordered)),
            "subgroups": table("table-subgroups", _subgroup_rows(ordered)),
            "transfer": table("table-transfer", _transfer_rows(ordered)),
            "audit": table("table-audit", _audit_rows(ordered)),
            "attribute": table("table-attribute", attacks.attribute_rows(ordered)),
            "extraction": table("table-extraction", attacks.extraction_rows(ordered)),
            "dp": table("table-dp", [_dp_row(r) for r in ordered]),
            "dp_mechanism": table("table-dp-mechanism", [_dp_mechanism_row(r) for r in ordered]),
            "selection": table("table-selection", _selection_rows(selection)),
            "sweep": _sweep(sweep),
        },
        "sweep": sweep,
        "label_noise": label_noise_view(label_noise),
        "selection": selection,
        "selection_cols": selection_cols,
        "several_private": any(n > 1 for n in private_by_data.values()),
        # a DP threshold release is paid inside each run; it does not pay for choosing among runs
        "selection_paid": any(
            r.selection is not None and "threshold" not in r.selection[1].lower() for r in ordered
        ),
        "no_ci": no_ci,
        "not_shipped": [(r.name, r.at) for r in ordered if r.evaluation is not None and not r.at_shipped],
        "not_covered": PLAIN_NOT_COVERED,
        "ledger_not_covered": ledger_items,
        "statements": [(r.name, public[r.name].statement) for r in ordered if r.ledger.statement],
        "skipped": list(skipped),
        "runs": ordered,
    }


def render(context: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("dprad.report", "templates"),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**context)


def write_report(
    runs: Sequence[Path],
    out: Path,
    *,
    sweep_table: Path | None = None,
    title: str = DEFAULT_TITLE,
    label_noise: Path | None = None,
) -> Path:
    """Read the run directories (a folder of runs stands for the finished runs below it), the sweep table
    and the sweep's selection.json beside it, and a label-noise study (``bench/label_noise.py --out``)
    where given, and write one self-contained HTML page to ``out`` (atomically). Returns ``out``."""
    from dprad.report.federation import federation_context
    from dprad.run.federation import FederationRecord

    federations = [Path(p) for p in runs if FederationRecord.is_federation(p)]
    runs = [p for p in runs if not FederationRecord.is_federation(p)]
    if not runs:
        raise DpradError(
            "dprad report: give at least one run directory"
            + (" (for a federation: its hospitals' site directories beside it)" if federations else "")
        )
    study = load_study(label_noise) if label_noise is not None else None
    found, skipped = read_runs(runs)
    sweep = read_sweep_table(sweep_table) if sweep_table is not None else None
    # a sweep writes selection.json beside its results table: what choosing among its cells costs
    places = [Path(sweep_table).parent] if sweep_table is not None else []
    places += [Path(p) for p in runs if Path(p).is_dir() and not (Path(p) / files.PRIVACY).is_file()]
    selection = find_selection(places)
    context = build_context(
        found, sweep=sweep, title=title, skipped=skipped, selection=selection, label_noise=study
    )
    context["federations"] = federation_context(federations, table)
    html = render(context)
    out = Path(out)
    write_text(out, html)
    return out
