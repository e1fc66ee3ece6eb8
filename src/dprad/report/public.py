"""What a shareable text may say about a run: the export's files, the model card, the report's pages and
the API's non-admin answers.

Names and content hashes, never a local path: a run records where its training file, its base encoder and
its caches lie on the machine that trained it (a hospital's file layout), and every text written from it
names them by their last part instead. One count computed on private data is public, the number of
training units n (DP-SGD's expected batch size is q * n and the accountant's sample rate is q: every DP-SGD
implementation treats n as public), and it is stated as released outside the guarantee; no other count of
the private data (the validation or test split's size) is quoted.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from dprad.privacy.ledger import PrivacyLedger, noise_warning
from dprad.run.record import RunRecord

# keys of a ledger part that count private data other than n (ledgers written before they were removed)
PRIVATE_COUNT_KEYS = frozenset({"validation_reports", "test_reports"})
# "the 26 validation reports", "26 test patients": a split's size, quoted by ledgers of earlier versions
_SPLIT_SIZE = re.compile(r"\b\d[\d,]* (?=(?:validation|test) (?:reports?|patients?)\b)")

# what the card, the manifest and the API say about the releases a run's files hold (``released_outside``)
METRICS_OF_RUN = "run"  # the run's own card: it quotes metrics.json / evaluation.json
METRICS_INCLUDED = "evaluation"  # an export with --include evaluation


def short_name(name: str) -> str:
    """A path's last part ('/models/minilm' -> 'minilm'); a plain name stays as it is."""
    return (Path(name).name or name) if ("/" in name or "\\" in name) else name


def model_name(record: RunRecord) -> str:
    """The base encoder as a shareable text names it: its name as given (``minilm``), or a local model
    directory's last part."""
    return short_name(record.config.model.name)


def data_name(record: RunRecord) -> str:
    """The training data as a shareable text names it: its file (or folder) name, or 'unknown'."""
    return short_name(record.data_path) if record.data_path else "unknown"


def local_paths(record: RunRecord) -> dict[str, str]:
    """Every local path the run records (as written and resolved), mapped to the name shared instead;
    longest first, so that a path is replaced before any path inside it."""
    cfg = record.config
    named: list[tuple[str | None, str]] = [
        (str(record.derived.get("model_dir") or "") or None, model_name(record)),
        (cfg.model.name, model_name(record)),
        (cfg.data.path or None, data_name(record)),
        (cfg.data.labels_path, short_name(cfg.data.labels_path or "")),
        (cfg.data.schema, short_name(cfg.data.schema or "")),
        (cfg.train.feature_cache, short_name(cfg.train.feature_cache or "")),
        (str(record.path), record.name),
    ]
    out: dict[str, str] = {}
    for path, name in named:
        if not path or not ("/" in path or "\\" in path):
            continue  # a plain name is already what is shared
        for variant in (path, str(Path(path).absolute()), _resolved(path)):
            if variant and variant not in ("/", "\\"):
                out.setdefault(variant, name)
    return dict(sorted(out.items(), key=lambda kv: -len(kv[0])))


def _resolved(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return ""


def scrub(text: str, paths: dict[str, str]) -> str:
    """``text`` with every path in ``paths`` replaced by its name, and no split size ('the 26 validation
    reports' reads 'the validation reports')."""
    for path, name in paths.items():
        text = text.replace(path, name)
    return _SPLIT_SIZE.sub("", text)


def scrub_json(obj: Any, paths: dict[str, str]) -> Any:
    """A JSON value with ``scrub`` applied to every string in it (keys included)."""
    if isinstance(obj, str):
        return scrub(obj, paths)
    if isinstance(obj, dict):
        return {scrub(str(k), paths): scrub_json(v, paths) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub_json(v, paths) for v in obj]
    return obj


def public_ledger(record: RunRecord) -> PrivacyLedger:
    """The run's ledger as a shareable file holds it: every number of the guarantee as written; its texts
    with local paths named and split sizes left out; no part that counts the validation or test split."""
    led, paths = record.ledger, local_paths(record)
    return replace(
        led,
        statement=scrub(led.statement, paths),
        protected=[scrub(x, paths) for x in led.protected],
        not_protected=[scrub(x, paths) for x in led.not_protected],
        accountant_note=scrub(led.accountant_note, paths),
        parts=[
            {k: scrub_json(v, paths) for k, v in p.items() if k not in PRIVATE_COUNT_KEYS} for p in led.parts
        ],
    )


def training_units(ledger: PrivacyLedger) -> str:
    """'139 patients': the training split's size in the units the ledger protects."""
    n = ledger.dataset_size
    return f"{n:,} {ledger.privacy_unit}{'' if n == 1 else 's'}"


def n_released(ledger: PrivacyLedger) -> str:
    """The decision, in words: the number of training units n is public, and released outside the guarantee."""
    unit = ledger.privacy_unit
    q = ledger.sample_rate
    scale = f" = {q * ledger.dataset_size:.4g}" if q is not None else ""
    rate = f" = {q:.4g}" if q is not None else ""
    return (
        f"the number of training {unit}s, n = {ledger.dataset_size:,}: DP-SGD treats n as public (each step's "
        f"noisy sum is scaled by the expected batch size q·n{scale}, and the accountant's sample rate q{rate} "
        f"is fixed with it, as in every DP-SGD implementation), so the ledger, config.json (derived.train_size, "
        f"train.batch_size) and the model card state it; the guarantee covers whether any one {unit} was among "
        "the n, not n itself"
    )


def released_outside(record: RunRecord, *, metrics: str | None = None) -> list[str]:
    """What the run's shareable files release outside its DP guarantee, one item each ([] when the run is
    not private: it has no guarantee to be outside of). ``metrics``: ``METRICS_OF_RUN`` when the text
    quotes the run's own metrics, ``METRICS_INCLUDED`` when an export ships its evaluation files."""
    led = record.ledger
    if not led.private:
        return []
    items = [n_released(led)]
    if not record.thresholds.covered:
        items.append(
            "the per-label thresholds (thresholds.json), fitted on the private validation split WITHOUT DP"
        )
    if metrics == METRICS_OF_RUN:
        items.append(
            "the metrics, supports and split sizes this card quotes: computed WITHOUT DP on the run's own "
            "validation and test splits (this card stays with the run; `dprad export` writes one without them)"
        )
    elif metrics == METRICS_INCLUDED:
        items.append(
            "the evaluation files (evaluation*.json) and every metric and count quoted from them: computed "
            "WITHOUT DP on private reports (added with --include evaluation)"
        )
    warning = noise_warning(led)
    if warning:
        items.append(f"the DP noise: {warning}")
    return items


def guarantee_text(record: RunRecord, *, metrics: str | None = None) -> str:
    """The guarantee in one paragraph, with what is released outside it (the export's manifest quotes it)."""
    led = record.ledger
    if not led.private:
        return (
            "None: the model was trained WITHOUT differential privacy (exported with --force). It may memorise "
            "and reveal details of its training reports."
        )
    eps = "?" if led.epsilon is None else f"{led.epsilon:.4g}"
    delta = "?" if led.delta is None else f"{led.delta:.1e}"
    return (
        f"({eps}, {delta})-differential privacy with respect to the addition or removal of any one "
        f"{led.privacy_unit} of the training split (DP-SGD, {led.accountant or '?'} accountant; privacy.json "
        f"holds the ledger and the accounting event its epsilon is computed from). Released outside the "
        f"guarantee: {'; '.join(released_outside(record, metrics=metrics))}."
    )


__all__ = [
    "METRICS_INCLUDED",
    "METRICS_OF_RUN",
    "data_name",
    "guarantee_text",
    "local_paths",
    "model_name",
    "n_released",
    "public_ledger",
    "released_outside",
    "scrub",
    "scrub_json",
    "short_name",
    "training_units",
]
