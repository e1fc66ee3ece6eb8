"""MODEL_CARD.md for one run: what it is for, what it was trained on, its privacy guarantee in plain words
and in numbers, its metrics with intervals, its known limits, and what differential privacy does not
protect. Every number is read from the run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dprad.io import write_text
from dprad.privacy.ledger import noise_warning
from dprad.report.collect import Run, read_run
from dprad.report.fmt import fmt_interval, fmt_num
from dprad.report.html import (
    HEADLINE_METRICS,
    eval_source,
    fmt_eps,
    ledger_parts,
    selection_text,
    weighted_f1,
)
from dprad.report.public import (
    METRICS_INCLUDED,
    METRICS_OF_RUN,
    public_ledger,
    released_outside,
    short_name,
)
from dprad.run import files
from dprad.run.results import RARE_SUPPORT

ECE_WARN = 0.05  # a pooled ECE above this gets a plain-words warning


@dataclass(frozen=True)
class ExportScope:
    """The card of an export (``dprad export``), which holds only what the ledger covers unless told
    otherwise: what it leaves out is not quoted, and anything outside the guarantee is said first."""

    evaluation: bool = False  # its evaluation files (computed on private data WITHOUT DP) are included
    data_sha256: str | None = None  # the training file's SHA-256, when the export could read it

    def warnings(self, run: Run) -> list[str]:
        """The card's first lines: what in this export the privacy guarantee does not cover."""
        lines = []
        if not run.ledger.private:
            lines.append(
                "> **This model carries no privacy guarantee**: it was trained without differential privacy "
                "and exported with `--force`. It may memorise and reveal its training reports."
            )
        if not run.thresholds.covered:
            lines.append(
                "> **Its thresholds are not covered by differential privacy**: they were fitted on the private "
                "validation split WITHOUT DP (`thresholds.json`, exported with `--force`)."
            )
        if self.evaluation:
            lines.append(
                "> **The evaluation files in this export (`evaluation*.json`) and the metrics in this card were "
                "computed on private data WITHOUT differential privacy**: they are outside the guarantee."
            )
        return [*lines, ""] if lines else []


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(map(esc, columns)) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


def _intended_use(run: Run, export: ExportScope | None = None) -> list[str]:
    labels = ", ".join(run.labels) if run.labels else "the labels in schema.json"
    lines = [
        "## Intended use",
        "",
        f"Multi-label classification of free-text radiology reports into the {len(run.labels) or '?'} findings of "
        f"the `{run.schema}` schema ({labels}), to support cohort building, triage of report worklists, "
        "audit and research at the institution that trained it, or at another one that receives the model.",
        "",
        "Not intended for: diagnosing individual patients without a clinician reading the report; images "
        "(the model reads report text only); report styles, languages or label definitions unlike the "
        "training data without first evaluating it there (`dprad evaluate`).",
    ]
    if run.critical:
        shipped = run.thresholds
        lines += [
            "",
            f"Critical findings: {', '.join(run.critical)}. "
            + (f"Validation-fitted thresholds: {shipped.rule}. " if shipped.fitted_on else "")
            + (
                "Check their recall below before relying on the model to flag them."
                if export is None or export.evaluation
                else "Measure their recall on your own reports before relying on the model to flag them."
            ),
        ]
    return lines


def _data(run: Run, export: ExportScope | None = None) -> list[str]:
    d = run.config.data
    split = ", ".join(f"{k} {v}" for k, v in run.splits.items()) or "unknown"
    sha = f", SHA-256 `{export.data_sha256}`" if export is not None and export.data_sha256 else ""
    lines = [
        "## Data, labels and teacher",
        "",
        f"- Training data: `{run.dataset}` (format `{d.format}`{sha}).",
        f"- Reports per split (by patient, no patient in two splits): {split}."
        if export is None
        else "- Split by patient into training, validation and test reports (no patient in two splits); this "
        "export holds no split, report id or patient id.",
        f"- Label schema: `{run.schema}`, {len(run.labels)} labels"
        + (f"; critical: {', '.join(run.critical)}" if run.critical else "")
        + ".",
        f"- Uncertain mentions (-1) trained as: `{d.uncertain_policy}`.",
        (
            f"- Teacher: {d.teacher}."
            if d.teacher
            else "- Teacher: the labels are the ones in the training file. The run does not record which teacher "
            "wrote them (gold labels, `dprad label --teacher rules`, or a local LLM; `dprad label` records it, "
            "`--teacher` states it); state it here before sharing."
        )
        + " Teacher errors are learned as truth, and "
        + (
            "the metrics below measure agreement with the same labels."
            if export is None or export.evaluation
            else "metrics against the same teacher's labels measure agreement with it, not truth."
        ),
        f"- Encoder: `{run.model}` ({run.mode}).",
    ]
    if export is None:  # the notes can hold counts of the private data: an export leaves them out
        lines += [f"- Note from training: {n}" for n in run.notes]
    return lines


def _privacy(run: Run, export: ExportScope | None = None) -> list[str]:
    led = public_ledger(run.record)
    lines = ["## Privacy guarantee", ""]
    if not led.private:
        lines += [
            "**None.** This model was trained without differential privacy (ε = ∞). It may memorise and reveal "
            "details of its training reports; keep it inside the institution that holds them.",
            "",
        ]
    else:
        unit = led.privacy_unit
        lines += [
            f"**In plain words.** Whether or not any one {unit} was in the training data changes what this model "
            f"can do by at most a factor of e^ε = e^{fmt_num(run.epsilon, '.3g')} in probability (plus a chance "
            f"of δ = {fmt_num(led.delta, '.1e')} that this bound fails). Smaller ε is stronger privacy; a value "
            "near 1 or below is generally called strong, around 10 moderate.",
            "",
        ]
    rows = [
        ["private", "yes" if led.private else "no"],
        ["ε (spent)", fmt_num(run.epsilon, ".4g") if led.private else "∞"],
        ["target ε", fmt_num(led.target_epsilon, "g")],
        ["δ", fmt_num(led.delta, ".1e")],
        ["unit of privacy", led.privacy_unit],
        ["noise multiplier σ", fmt_num(led.noise_multiplier, ".4g")],
        ["clipping norm C", fmt_num(led.max_grad_norm, "g")],
        ["sample rate q (Poisson)", fmt_num(led.sample_rate, ".4g")],
        ["expected batch size", fmt_num(led.expected_batch_size, ".4g")],
        ["steps", fmt_num(led.steps, "d")],
        ["epochs", fmt_num(led.epochs, ".3g")],
        ["sampler", led.sampler or "—"],
        [
            "accountant",
            (led.accountant or "—") + (f" ({led.accountant_note})" if led.accountant_note else ""),
        ],
        [f"training {led.privacy_unit}s (n)", fmt_num(led.dataset_size, ",d")],
        ["trainable parameters", fmt_num(led.trainable_parameters, ",d")],
    ]
    if run.selection is not None:
        rows.append(["threshold / model selection ε", selection_text(run)])
    if led.parts:
        rows.append(["ε made of", ledger_parts(run)])
    if led.canaries:
        rows.append(["audit canaries in the training split", fmt_num(led.canaries, "d")])
    lines += ["**In numbers** (from `privacy.json`):", "", *_md_table(["parameter", "value"], rows)]
    if led.statement:
        lines += ["", f"> {led.statement}"]
    if led.private:
        quoted = METRICS_OF_RUN if export is None else METRICS_INCLUDED if export.evaluation else None
        lines += [
            "",
            "**Released outside the guarantee** (public, or published without DP):",
            "",
            *(f"- {item}." for item in released_outside(run.record, metrics=quoted)),
        ]
    c = run.audit.canary if run.audit else None
    if export is not None:
        c = None  # audit.json stays with the run
    if c is not None and c.epsilon_lower_bound is not None:
        verdict = " ABOVE the ledger's ε: a privacy bug to investigate." if c.exceeds_ledger else ""
        lines += [
            "",
            f"**Audit** (`audit.json`): the canary audit's empirical lower bound is ε ≥ "
            f"{c.epsilon_lower_bound:.3g} ({fmt_num(c.correct, 'd')} of {fmt_num(c.guesses, 'd')} guesses right; "
            f"the most this audit could show is {fmt_num(c.ceiling, '.3g')}).{verdict}",
        ]
    return lines


def _metrics(run: Run, export: ExportScope | None = None) -> list[str]:
    ev = run.evaluation
    lines = ["## Metrics", ""]
    if export is not None and not export.evaluation:
        return [
            *lines,
            "None in this export. The run's metrics were computed on its private validation and test reports "
            "without differential privacy, so they are outside the guarantee and stay with the institution that "
            "trained it (`dprad export --include evaluation` adds its evaluation files, and says so at the top "
            "of this card). Measure the model on your own labelled reports: `dprad evaluate EXPORT DATA`.",
        ]
    if ev is None:
        return [*lines, "No metrics: the run has neither evaluation.json nor metrics.json."]
    if ev.has_ci:
        lines.append(
            f"From `{Path(ev.source).name}`: {ev.split or '?'} split of `{short_name(ev.data or '?')}`, {ev.reports} reports from "
            f"{ev.patients} patients, {run.at}; brackets are 95% intervals from "
            f"{ev.bootstrap_resamples or '?'} patient-level bootstrap resamples."
        )
    else:
        lines.append(
            f"From `{Path(ev.source).name}` ({ev.split or '?'} split, {run.at}): **point estimates only, no "
            "confidence interval** (this run has no evaluation.json; run "
            "`dprad evaluate RUN DATA --out RUN/evaluation.json`)."
        )
    if not run.at_shipped:
        lines += ["", f"**These numbers are not what the shipped model does**: they are {run.at}."]
    lines.append("")
    head = [[name, fmt_interval(ev.metric(key))] for key, name in HEADLINE_METRICS]
    lines += _md_table(["metric", "value"], head)
    if ev.per_label:
        lines += ["", "Per label:", ""]
        rows = [
            [
                lr.label + (" (critical)" if lr.critical else ""),
                fmt_num(lr.support, "d"),
                fmt_interval(lr.f1),
                fmt_interval(lr.recall),
                fmt_interval(lr.specificity),
                fmt_interval(lr.auroc),
            ]
            for lr in ev.per_label
        ]
        lines += _md_table(["label", "positives", "F1", "recall", "specificity", "AUROC"], rows)
    for extra in run.extra_evaluations:
        lines += [
            "",
            f"On `{short_name(extra.data or '?')}` ({eval_source(extra)}, {run.at_of(extra)}): weighted F1 "
            f"{fmt_interval(extra.metric('weighted_f1'))}, macro AUROC {fmt_interval(extra.metric('macro_auroc'))}.",
        ]
    return lines


def _limits(run: Run, export: ExportScope | None = None) -> list[str]:
    ev = run.evaluation
    lines = ["## Known limits", ""]
    if export is not None and not export.evaluation:
        return [
            *lines,
            "- Not stated in this export: rare labels, subgroup gaps, the recall of critical findings and "
            "calibration were measured on private data without DP. Measure them on your own reports "
            "(`dprad evaluate EXPORT DATA --groups sex,site,age`) before relying on the model.",
            "- Performance at another institution is unknown until it is evaluated there.",
        ]
    if ev is None:
        return [*lines, "- Not evaluated: no limits can be stated from this run directory."]
    rare = [lr for lr in ev.per_label if lr.rare]
    if rare:
        names = ", ".join(f"{lr.label} ({lr.support})" for lr in rare)
        lines.append(
            f"- **Rare labels** (fewer than {RARE_SUPPORT} positive test reports): {names}. Their F1 and recall "
            "rest on very few reports; treat them as unmeasured, not as measured well."
        )
    else:
        lines.append(f"- Every label has at least {RARE_SUPPORT} positive test reports.")
    if ev.subgroups:
        for s in ev.subgroups:
            groups = "; ".join(
                f"{g.name}: {fmt_interval(g.weighted_f1)}{' (small group)' if g.small else ''}"
                for g in s.groups
            )
            gap = (
                f" Largest sensitivity (TPR) gap between groups: {s.largest_tpr_gap:.3f} ({s.largest_tpr_gap_label})."
                if s.largest_tpr_gap is not None
                else ""
            )
            lines.append(f"- **Subgroups by {s.attribute}** (weighted F1): {groups}.{gap}")
    else:
        lines.append(
            "- **Subgroups**: not evaluated (run `dprad evaluate ... --groups sex,site,age`); performance may "
            "differ between patient groups and sites."
        )
    crit = [lr for lr in ev.per_label if lr.critical]
    if crit:
        values = "; ".join(f"{lr.label} {fmt_interval(lr.recall)}" for lr in crit)
        lines.append(f"- **Recall of the critical findings** ({run.at}): {values}.")
    cal = ev.calibration
    if cal is not None and cal.pooled_ece is not None:
        worst = max(cal.per_label_ece, key=lambda t: t[1], default=None)
        warn = (
            " The scores are not calibrated probabilities: do not read 0.8 as an 80% chance."
            if cal.pooled_ece > ECE_WARN
            else ""
        )
        lines.append(
            f"- **Calibration**: pooled ECE {cal.pooled_ece:.3f} ({cal.n_bins} {cal.binning} bins)"
            + (f"; worst label {worst[0]} ({worst[1]:.3f})" if worst else "")
            + f".{warn}"
        )
    else:
        lines.append("- **Calibration**: not evaluated.")
    if any(e.domain_transfer for e in (ev, *run.extra_evaluations)):
        lines.append("- Evaluated on another dataset too: see the metrics above; expect a drop elsewhere.")
    else:
        lines.append(
            "- Evaluated only on data from the training source: performance at another institution is unknown."
        )
    return lines


def _not_protected(run: Run, export: ExportScope | None = None) -> list[str]:
    led = public_ledger(run.record)
    lines = ["## What differential privacy does not protect", ""]
    if not led.private:
        lines.append(
            "- Nothing: this run is not private. Every item below applies, and the training reports too."
        )
    lines.append(
        f"- **The base model `{run.model}` and its own pre-training data**: they were trained by others, "
        "without this guarantee."
    )
    if export is not None and run.thresholds.fitted_on is None:
        lines.append("- No thresholds were fitted: the model ships 0.5 for every label.")
    elif export is not None and run.selection is None:
        lines.append(
            "- **The validation split**: the thresholds were fitted on it without DP, so it is not covered; "
            "the thresholds are part of every output."
        )
    elif run.selection is None:
        lines.append(
            f"- **The validation split** ({run.splits.get('val', '?')} reports): thresholds (and any choice of "
            "run or ε made by looking at validation or test scores) were fitted on it without DP, so it is not "
            "covered; the thresholds are part of every output."
        )
    else:
        lines.append(
            f"- The validation split is covered only through the selection ε = {fmt_num(run.selection[0], '.3g')} "
            "recorded in the ledger; choices made by people after seeing other scores are not."
        )
    lines.append(
        "- **Outputs under unlimited querying**: for the training reports, the guarantee holds for any number of "
        "queries to this fixed model. It does not cover the reports people send to the model, nor what its "
        "answers reveal about them, nor a model retrained or fine-tuned on those queries."
    )
    if led.privacy_unit != "patient":
        lines.append(
            f"- **Patients with several reports**: the unit of privacy is one {led.privacy_unit}. A patient with "
            "k reports in the training data is protected only at about k × ε (with a larger δ): group privacy."
        )
    for item in led.not_protected:
        lines.append(f"- From the ledger: {item}.")
    return lines


def model_card_markdown(run: Run, export: ExportScope | None = None) -> str:
    led = run.ledger
    guarantee = f"ε = {fmt_eps(run)}, δ = {fmt_num(led.delta, '.1e')}" if led.private else "no DP (ε = ∞)"
    quotes_metrics = export is None or export.evaluation
    warning = noise_warning(led)
    lines = [
        *(export.warnings(run) if export is not None else []),
        f"# Model card: {run.name}",
        "",
        *([f"> **The DP noise is not secret.** {warning}", ""] if warning else []),
        f"{run.mode} classifier of `{run.schema}` findings in radiology reports, encoder `{run.model}`, "
        f"trained on `{run.dataset}`. Privacy: {guarantee} per {led.privacy_unit}."
        + (f" Weighted F1 on the test split: {weighted_f1(run)}." if quotes_metrics else ""),
        "",
        *_intended_use(run, export),
        "",
        *_data(run, export),
        "",
        *_privacy(run, export),
        "",
        *_metrics(run, export),
        "",
        *_limits(run, export),
        "",
        *_not_protected(run, export),
        "",
        f"_Written by dprad from run `{run.name}`; every number is read from the run directory._"
        if export is None
        else f"_Written by `dprad export` from run `{run.name}`; every number is read from the files of this "
        "export (`MANIFEST.json` lists them)._",
        "",
    ]
    return "\n".join(lines)


def write_model_card(run_dir: Path, out: Path | None = None, *, export: ExportScope | None = None) -> Path:
    """Write RUN/MODEL_CARD.md (or ``out``) atomically; returns its path. With ``export``, the card of an
    export of the run: it quotes only what the export holds and says first what the guarantee does not
    cover."""
    from dprad.run.federation import FederationRecord

    target = Path(out) if out is not None else Path(run_dir) / files.MODEL_CARD
    if FederationRecord.is_federation(run_dir):  # a federation's global model: each hospital's guarantee
        from dprad.report.federation import federation_card

        write_text(target, federation_card(FederationRecord.open(run_dir)))
        return target
    run = read_run(run_dir)
    write_text(target, model_card_markdown(run, export))
    return target
