"""Read run directories into typed, frozen records for the report and the model card.

Reading only: every number here is copied from a file a run (or its evaluation, audit or sweep) wrote.
Optional files (evaluation.json, audit.json, a sweep table) may be absent, and any of their keys may be
missing; a missing value is ``None`` and the renderers say so instead of inventing one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dprad.errors import DpradError

RARE_SUPPORT = 20  # a label with fewer positive test reports than this is marked rare
REQUIRED_FILES = ("config.json", "privacy.json")


@dataclass(frozen=True)
class Interval:
    """A point estimate and, when the evaluation bootstrapped one, its 95% CI."""

    estimate: float | None
    low: float | None = None
    high: float | None = None

    @property
    def has_ci(self) -> bool:
        return _finite(self.low) and _finite(self.high)

    @property
    def known(self) -> bool:
        return _finite(self.estimate)


@dataclass(frozen=True)
class LabelResult:
    label: str
    support: int | None  # positive reports in the evaluated split
    f1: Interval
    recall: Interval
    specificity: Interval
    auroc: Interval
    critical: bool = False

    @property
    def rare(self) -> bool:
        return self.support is not None and self.support < RARE_SUPPORT


@dataclass(frozen=True)
class ReliabilityBin:
    mean_predicted: float
    observed_rate: float
    count: int


@dataclass(frozen=True)
class Calibration:
    pooled_ece: float | None
    pooled_brier: float | None
    bins: tuple[ReliabilityBin, ...]
    n_bins: int | None
    binning: str
    per_label_ece: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class GroupResult:
    name: str
    reports: int | None
    small: bool
    weighted_f1: Interval


@dataclass(frozen=True)
class Subgroups:
    attribute: str
    groups: tuple[GroupResult, ...]
    min_group_size: int | None
    largest_tpr_gap: float | None  # the largest equal-opportunity difference over labels, as evaluated
    largest_tpr_gap_label: str | None


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run: evaluation.json (CIs) or, without one, metrics.json (point estimates)."""

    source: str  # path of the file read
    has_ci: bool
    data: str | None
    split: str | None
    reports: int | None
    patients: int | None
    thresholds: str | None
    bootstrap_resamples: int | None
    headline: Mapping[str, Interval]
    per_label: tuple[LabelResult, ...]
    calibration: Calibration | None
    subgroups: tuple[Subgroups, ...]
    notes: tuple[str, ...]
    domain_transfer: bool  # evaluated on a dataset other than the one the run was trained on

    def metric(self, name: str) -> Interval:
        return self.headline.get(name, Interval(None))


@dataclass(frozen=True)
class Ledger:
    """privacy.json, with the numbers the report shows pulled out (``raw`` keeps everything)."""

    private: bool
    epsilon: float  # spent; math.inf for a non-private run
    target_epsilon: float | None
    delta: float | None
    privacy_unit: str
    noise_multiplier: float | None
    max_grad_norm: float | None
    sample_rate: float | None
    expected_batch_size: float | None
    steps: int | None
    epochs: float | None
    sampler: str | None
    accountant: str | None
    accountant_note: str
    mode: str
    dataset_size: int | None
    trainable_parameters: int | None
    selection_epsilon: float | None  # privacy cost of a DP threshold / model selection, when recorded
    selection_note: str | None
    parts: tuple[tuple[str, float | None], ...]  # the releases the ledger's epsilon is made of
    canaries: int | None  # audit canaries mixed into the training split
    protected: tuple[str, ...]
    not_protected: tuple[str, ...]
    statement: str
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class Canary:
    epsilon_lower_bound: float | None
    guesses: int | None
    correct: int | None
    ceiling: float | None
    exceeds_ledger: bool | None  # the audit's own verdict: a lower bound above the ledger's eps is a bug
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class Attack:
    name: str
    auc: Interval
    tpr_at_1pct_fpr: Interval


@dataclass(frozen=True)
class Mia:
    auc: float | None  # a single AUC, when the section holds one rather than per-attack results
    attacks: tuple[Attack, ...]
    members: int | None
    nonmembers: int | None
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class Audit:
    source: str
    canary: Canary | None
    mia: Mia | None
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class Run:
    path: Path
    name: str
    model: str  # encoder name as the user gave it (a path is shortened to its last part)
    mode: str
    dataset: str  # training data, shortened to its file name
    data_path: str
    schema: str
    labels: tuple[str, ...]
    critical: tuple[str, ...]
    seed: int | None
    ledger: Ledger
    config: Mapping[str, Any]
    metrics: Mapping[str, Any]
    splits: Mapping[str, int]  # split name -> number of reports
    evaluation: Evaluation | None  # the main evaluation: evaluation.json, else metrics.json's test split
    extra_evaluations: tuple[Evaluation, ...]  # evaluation-*.json: other datasets (domain transfer)
    audit: Audit | None
    notes: tuple[str, ...]

    @property
    def family(self) -> str:
        """The mode without its privacy switch: dp-head and head are one family."""
        return self.mode.removeprefix("dp-")

    @property
    def series(self) -> str:
        return f"{self.model} · {self.family}"

    @property
    def eps_label(self) -> str:
        return "∞ (non-private)" if not self.ledger.private else f"{self.ledger.epsilon:.3g}"


@dataclass(frozen=True)
class SweepTable:
    source: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]  # every cell as text, as the table holds it
    failed: tuple[tuple[str, str], ...]  # (cell, error) for rows the table marks as failed


# ---------------------------------------------------------------------------------------------------
# small defensive readers


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _float(x: object) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return None


def _int(x: object) -> int | None:
    f = _float(x)
    return int(f) if f is not None and math.isfinite(f) else None


def _interval(x: object) -> Interval:
    if isinstance(x, Mapping):
        return Interval(_float(x.get("estimate")), _float(x.get("ci_low")), _float(x.get("ci_high")))
    return Interval(_float(x))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DpradError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    except OSError as err:
        raise DpradError(f"{path}: cannot be read ({err.strerror})") from None


def _mapping(x: object) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _short(name: str) -> str:
    """A path's last part ('/models/minilm' -> 'minilm'); a plain name stays as it is."""
    return Path(name).name or name if ("/" in name or "\\" in name) else name


# ---------------------------------------------------------------------------------------------------
# ledger


def _parts(raw: Mapping[str, Any]) -> tuple[tuple[str, float | None], ...]:
    return tuple(
        (str(p.get("part") or p.get("name") or "?"), _float(p.get("epsilon")))
        for p in raw.get("parts") or ()
        if isinstance(p, Mapping)
    )


def _selection(raw: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """The privacy cost of a DP selection (thresholds, best run) when the ledger records one.

    Looked for as one of the ledger's ``parts`` whose name mentions thresholds or selection, else under a
    flat ``selection_epsilon`` / ``threshold_epsilon`` number, else a section (``threshold_selection``,
    ``selection``, ``thresholds``) with an ``epsilon``.
    """
    for name, eps in _parts(raw):
        if eps is not None and any(w in name.lower() for w in ("threshold", "select")):
            return eps, name
    for key in ("selection_epsilon", "threshold_selection_epsilon", "threshold_epsilon"):
        value = _float(raw.get(key))
        if value is not None:
            return value, key
    for key in ("threshold_selection", "selection", "thresholds", "model_selection"):
        section = raw.get(key)
        if isinstance(section, Mapping):
            value = _float(section.get("epsilon"))
            if value is not None:
                note = section.get("note") or section.get("method") or section.get("rule") or key
                return value, str(note)
    return None, None


def read_ledger(path: Path) -> Ledger:
    raw = _mapping(_read_json(path))
    if "private" not in raw:
        raise DpradError(f"{path}: not a privacy ledger (no 'private' key)")
    private = bool(raw.get("private"))
    eps = _float(raw.get("epsilon"))
    sel_eps, sel_note = _selection(raw)
    return Ledger(
        private=private,
        epsilon=(eps if eps is not None else math.inf) if private else math.inf,
        target_epsilon=_float(raw.get("target_epsilon")),
        delta=_float(raw.get("delta")),
        privacy_unit=str(raw.get("privacy_unit") or "report"),
        noise_multiplier=_float(raw.get("noise_multiplier")),
        max_grad_norm=_float(raw.get("max_grad_norm")),
        sample_rate=_float(raw.get("sample_rate")),
        expected_batch_size=_float(raw.get("expected_batch_size")),
        steps=_int(raw.get("steps")),
        epochs=_float(raw.get("epochs")),
        sampler=str(raw["sampler"]) if raw.get("sampler") else None,
        accountant=str(raw["accountant"]) if raw.get("accountant") else None,
        accountant_note=str(raw.get("accountant_note") or ""),
        mode=str(raw.get("mode") or "unknown"),
        dataset_size=_int(raw.get("dataset_size")),
        trainable_parameters=_int(raw.get("trainable_parameters")),
        selection_epsilon=sel_eps,
        selection_note=sel_note,
        parts=_parts(raw),
        canaries=_int(raw.get("canaries")),
        protected=tuple(str(x) for x in raw.get("protected") or ()),
        not_protected=tuple(str(x) for x in raw.get("not_protected") or ()),
        statement=str(raw.get("statement") or ""),
        raw=raw,
    )


# ---------------------------------------------------------------------------------------------------
# evaluations


def _calibration(raw: object) -> Calibration | None:
    c = _mapping(raw)
    if not c:
        return None
    bins = []
    for b in c.get("pooled_reliability") or ():
        b = _mapping(b)
        mp, obs = _float(b.get("mean_predicted")), _float(b.get("observed_rate"))
        if mp is not None and obs is not None:
            bins.append(ReliabilityBin(mp, obs, _int(b.get("count")) or 0))
    per = []
    for row in c.get("per_label") or ():
        row = _mapping(row)
        ece = _float(row.get("ece"))
        if ece is not None and row.get("label") is not None:
            per.append((str(row["label"]), ece))
    return Calibration(
        pooled_ece=_float(c.get("pooled_ece")),
        pooled_brier=_float(c.get("pooled_brier")),
        bins=tuple(bins),
        n_bins=_int(c.get("bins")),
        binning=str(c.get("binning") or ""),
        per_label_ece=tuple(per),
    )


def _subgroups(raw: object) -> tuple[Subgroups, ...]:
    out = []
    for attribute, section in _mapping(raw).items():
        section = _mapping(section)
        groups = tuple(
            GroupResult(
                name=str(name),
                reports=_int(_mapping(g).get("reports")),
                small=bool(_mapping(g).get("small", False)),
                weighted_f1=_interval(_mapping(g).get("weighted_f1")),
            )
            for name, g in _mapping(section.get("groups")).items()
        )
        gap, gap_label = None, None
        for row in section.get("gaps") or ():
            row = _mapping(row)
            value = _float(row.get("equal_opportunity_difference"))
            if value is not None and math.isfinite(value) and (gap is None or value > gap):
                gap, gap_label = value, str(row.get("label"))
        out.append(Subgroups(str(attribute), groups, _int(section.get("min_group_size")), gap, gap_label))
    return tuple(out)


def _same_data(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return True  # unknown: do not claim a transfer
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def read_evaluation(path: Path, *, train_data: str | None, critical: Sequence[str] = ()) -> Evaluation:
    """An evaluation.json written by ``dprad evaluate --out`` (headline and per-label metrics with CIs)."""
    raw = _mapping(_read_json(path))
    if "headline" not in raw and "per_label" not in raw:
        raise DpradError(f"{path}: not a dprad evaluation (no 'headline' or 'per_label' key)")
    headline = {str(k): _interval(v) for k, v in _mapping(raw.get("headline")).items()}
    per = tuple(
        LabelResult(
            label=str(row.get("label")),
            support=_int(row.get("support")),
            f1=_interval(row.get("f1")),
            recall=_interval(row.get("recall")),
            specificity=_interval(row.get("specificity")),
            auroc=_interval(row.get("auroc")),
            critical=str(row.get("label")) in critical,
        )
        for row in (_mapping(r) for r in raw.get("per_label") or ())
    )
    notes = tuple(str(n) for n in raw.get("notes") or ())
    data = str(raw["data"]) if raw.get("data") else None
    transfer = any(n.startswith("domain transfer") for n in notes) or not _same_data(data, train_data)
    boot = _mapping(raw.get("bootstrap"))
    return Evaluation(
        source=str(path),
        has_ci=any(i.has_ci for i in headline.values()),
        data=data,
        split=str(raw["split"]) if raw.get("split") else None,
        reports=_int(raw.get("reports")),
        patients=_int(raw.get("patients")),
        thresholds=str(_mapping(raw.get("thresholds")).get("source") or "") or None,
        bootstrap_resamples=_int(boot.get("resamples")),
        headline=headline,
        per_label=per,
        calibration=_calibration(raw.get("calibration")),
        subgroups=_subgroups(raw.get("subgroups")),
        notes=notes,
        domain_transfer=transfer,
    )


def evaluation_from_metrics(
    path: Path, metrics: Mapping[str, Any], *, train_data: str | None, critical: Sequence[str] = ()
) -> Evaluation | None:
    """metrics.json's test split at threshold 0.5: point estimates only (no CI), as training wrote them."""
    test = _mapping(_mapping(metrics.get("test")).get("threshold_0.5"))
    if not test:
        return None
    headline = {
        k: Interval(_float(test.get(k)))
        for k in ("weighted_f1", "macro_f1", "micro_f1", "macro_auroc")
        if k in test
    }
    per = tuple(
        LabelResult(
            label=str(row.get("label")),
            support=_int(row.get("support")),
            f1=Interval(_float(row.get("f1"))),
            recall=Interval(_float(row.get("recall"))),
            specificity=Interval(_float(row.get("specificity"))),
            auroc=Interval(_float(row.get("auroc"))),
            critical=str(row.get("label")) in critical,
        )
        for row in (_mapping(r) for r in test.get("per_label") or ())
    )
    return Evaluation(
        source=str(path),
        has_ci=False,
        data=train_data,
        split="test",
        reports=None,
        patients=None,
        thresholds="0.5",
        bootstrap_resamples=None,
        headline=headline,
        per_label=per,
        calibration=None,
        subgroups=(),
        notes=("metrics.json test split at threshold 0.5: point estimates, no CI",),
        domain_transfer=False,
    )


# ---------------------------------------------------------------------------------------------------
# audit


def read_audit(path: Path) -> Audit:
    raw = _mapping(_read_json(path))
    canary = None
    c = raw.get("canary")
    if isinstance(c, Mapping):
        canary = Canary(
            epsilon_lower_bound=_float(
                c.get("epsilon_lower_bound", c.get("eps_lower_bound", c.get("epsilon_lb")))
            ),
            guesses=_int(c.get("guesses")),
            correct=_int(c.get("correct")),
            ceiling=_float(c.get("ceiling")),
            exceeds_ledger=c["exceeds_ledger"] if isinstance(c.get("exceeds_ledger"), bool) else None,
            raw=c,
        )
    mia = None
    m = raw.get("mia")
    if isinstance(m, Mapping):
        auc = next((_float(m[k]) for k in ("auc", "auroc", "roc_auc", "mia_auc") if k in m), None)
        if auc is None and isinstance(m.get("auc"), Mapping):
            auc = _interval(m["auc"]).estimate
        attacks = tuple(
            Attack(str(name), _interval(res.get("auc")), _interval(res.get("tpr_at_0.01_fpr")))
            for name, res in _mapping(m.get("attacks")).items()
            if isinstance(res, Mapping)
        )
        mia = Mia(auc, attacks, _int(m.get("members")), _int(m.get("nonmembers")), raw=m)
    return Audit(str(path), canary, mia, raw)


# ---------------------------------------------------------------------------------------------------
# runs


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in REQUIRED_FILES)


def read_run(path: str | Path) -> Run:
    """One finished run directory: config.json and privacy.json are required, everything else optional."""
    path = Path(path)
    if not path.is_dir():
        raise DpradError(f"{path}: no such run directory")
    for f in REQUIRED_FILES:
        if not (path / f).is_file():
            raise DpradError(f"{path}: not a finished run directory ({f} is missing)")
    config = _mapping(_read_json(path / "config.json"))
    ledger = read_ledger(path / "privacy.json")
    metrics = _mapping(_read_json(path / "metrics.json")) if (path / "metrics.json").is_file() else {}
    schema = _mapping(_read_json(path / "schema.json")) if (path / "schema.json").is_file() else {}
    splits_raw = _mapping(_read_json(path / "splits.json")) if (path / "splits.json").is_file() else {}
    notes_raw = _read_json(path / "notes.json") if (path / "notes.json").is_file() else []
    data_cfg, model_cfg = _mapping(config.get("data")), _mapping(config.get("model"))
    derived, train_cfg = _mapping(config.get("derived")), _mapping(config.get("train"))
    data_path = str(data_cfg.get("path") or "")
    critical = tuple(str(x) for x in schema.get("critical") or ())
    evaluation = None
    if (path / "evaluation.json").is_file():
        evaluation = read_evaluation(path / "evaluation.json", train_data=data_path, critical=critical)
    elif metrics:
        evaluation = evaluation_from_metrics(
            path / "metrics.json", metrics, train_data=data_path, critical=critical
        )
    extra = tuple(
        read_evaluation(p, train_data=data_path, critical=critical)
        for p in sorted(path.glob("evaluation-*.json"))
    )
    audit = read_audit(path / "audit.json") if (path / "audit.json").is_file() else None
    return Run(
        path=path,
        name=path.name,
        model=_short(str(model_cfg.get("name") or derived.get("model_dir") or "unknown")),
        mode=_display_mode(ledger, str(train_cfg.get("mode") or "unknown")),
        dataset=_short(data_path) if data_path else "unknown",
        data_path=data_path,
        schema=str(schema.get("name") or derived.get("schema") or "unknown"),
        labels=tuple(str(x) for x in schema.get("labels") or ()),
        critical=critical,
        seed=_int(train_cfg.get("seed")),
        ledger=ledger,
        config=config,
        metrics=metrics,
        splits={str(k): len(v) for k, v in splits_raw.items() if isinstance(v, list)},
        evaluation=evaluation,
        extra_evaluations=extra,
        audit=audit,
        notes=tuple(str(n) for n in notes_raw) if isinstance(notes_raw, list) else (),
    )


def _dprad_config(path: Path) -> bool:
    """A dprad run's config.json (it has a 'train' section), not some other tool's (a model's, say)."""
    try:
        return "train" in _mapping(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


def _display_mode(ledger: Ledger, config_mode: str) -> str:
    """The ledger's mode (dp-head, lora, ...); a private run always reads dp-<mode>."""
    mode = ledger.mode if ledger.mode != "unknown" else config_mode
    return f"dp-{mode}" if ledger.private and not mode.startswith("dp-") else mode


def expand_runs(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Run directories named on the command line; a folder that is not a run stands for the finished
    runs below it (a sweep's output folder, two levels deep). Returns (runs, notes on skipped folders)."""
    runs: list[Path] = []
    skipped: list[str] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DpradError(f"{p}: no such run directory")
        if is_run_dir(p):
            runs.append(p)
            continue
        if not p.is_dir():
            raise DpradError(f"{p}: not a run directory")
        below = sorted(
            {c.parent for pattern in ("*/config.json", "*/*/config.json") for c in p.glob(pattern)}
        )
        below = [c for c in below if not is_run_dir(c.parent)]  # not a run's own model/ folder
        found = [c for c in below if is_run_dir(c)]
        skipped += [
            f"{c}: unfinished (no privacy.json), left out"
            for c in below
            if not is_run_dir(c) and _dprad_config(c / "config.json")
        ]
        if not found:
            raise DpradError(
                f"{p}: neither a run directory (config.json + privacy.json) nor a folder of runs"
            )
        runs += found
    unique = list(dict.fromkeys(r.resolve() for r in runs))
    return unique, skipped


def read_runs(paths: Iterable[str | Path]) -> tuple[list[Run], list[str]]:
    dirs, skipped = expand_runs(paths)
    return [read_run(d) for d in dirs], skipped


# ---------------------------------------------------------------------------------------------------
# sweep table

FAILED_STATUSES = ("failed", "error", "broken")


def read_sweep_table(path: str | Path) -> SweepTable:
    """A sweep's results table (CSV or Parquet), every cell kept as text; failed cells listed apart."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DpradError(f"--sweep {path}: no such file")
    try:
        parquet = path.suffix.lower() in (".parquet", ".pq")
        df = pd.read_parquet(path) if parquet else pd.read_csv(path)
    except (ValueError, OSError) as err:
        raise DpradError(f"--sweep {path}: cannot be read as a table ({err})") from None
    columns = tuple(str(c) for c in df.columns)
    rows = tuple(tuple(_cell(v) for v in row) for row in df.itertuples(index=False, name=None))
    failed: list[tuple[str, str]] = []
    status_col = next((c for c in ("status", "state") if c in columns), None)
    error_col = next((c for c in ("error", "error_message") if c in columns), None)
    cell_col = next((c for c in ("cell", "name", "run", "run_dir", "out") if c in columns), None)
    for row in rows:
        rec = dict(zip(columns, row, strict=True))
        bad = (status_col is not None and rec[status_col].lower() in FAILED_STATUSES) or (
            status_col is None and error_col is not None and rec[error_col] not in ("", "nan", "None")
        )
        if bad:
            failed.append(
                (rec[cell_col] if cell_col else "?", rec[error_col] if error_col else rec[status_col or ""])
            )
    return SweepTable(str(path), columns, rows, tuple(failed))


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.4g}"
    return str(v)


# ---------------------------------------------------------------------------------------------------
# the sweep's selection costs (selection.json)


@dataclass(frozen=True)
class SelectionCost:
    method: str
    epsilon: float | None
    delta: float | None
    largest_single_epsilon: float | None
    assumption: str


@dataclass(frozen=True)
class SelectionGroup:
    dataset: str
    scope: str
    candidates: tuple[str, ...]
    compared_on: str
    costs: tuple[SelectionCost, ...]


@dataclass(frozen=True)
class Selection:
    """What choosing 'the best run' among compared cells costs in privacy, as the sweep wrote it."""

    source: str
    what: str
    groups: tuple[SelectionGroup, ...]


def read_selection(path: str | Path) -> Selection:
    path = Path(path)
    raw = _mapping(_read_json(path))
    groups = []
    for g in raw.get("groups") or ():
        g = _mapping(g)
        costs = tuple(
            SelectionCost(
                method=str(method),
                epsilon=_float(_mapping(c).get("epsilon")),
                delta=_float(_mapping(c).get("delta")),
                largest_single_epsilon=_float(_mapping(c).get("largest_single_epsilon")),
                assumption=str(_mapping(c).get("assumption") or ""),
            )
            for method, c in _mapping(g.get("costs")).items()
        )
        groups.append(
            SelectionGroup(
                dataset=str(g.get("dataset") or "?"),
                scope=str(g.get("scope") or ""),
                candidates=tuple(str(c) for c in g.get("candidates") or ()),
                compared_on=str(g.get("compared_on") or ""),
                costs=costs,
            )
        )
    return Selection(str(path), str(raw.get("what") or ""), tuple(groups))


def find_selection(places: Iterable[str | Path]) -> Selection | None:
    """selection.json in the first of ``places`` (folders) that holds one."""
    for place in places:
        candidate = Path(place) / "selection.json"
        if candidate.is_file():
            return read_selection(candidate)
    return None
