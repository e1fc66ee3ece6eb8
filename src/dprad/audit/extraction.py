"""Model extraction: how close a clone an attacker holding an API key gets, per report it sends.

The attacker sends public or synthetic reports to ``POST /v1/classify``, keeps the answers, and trains a
clone on them: the public encoder the model card names, frozen, and one logistic regression per label
(scikit-learn) on its pooled features. For each budget n (nested prefixes of one shuffled attacker pool,
so a larger budget only adds data) the clone trained on the first n answers is compared with the victim
on held-out reports the attacker never sent: agreement of the per-label decisions, per-label agreement,
and the clone's weighted F1 with the victim's decisions as labels, with patient-bootstrap intervals.

Queries are counted in reports, the unit ``dprad serve`` key budgets count (``budget_per_day`` and
``budget_total`` in the keys file; ``rate_per_minute`` counts requests). The API answers each report with
its per-label decisions at the served thresholds and its probabilities. By default the attack uses the
decisions only (``http_query(answer="decisions")``): a label-only attacker, the weakest assumption about
what an answer carries. With ``answer="probabilities"`` and the served thresholds (``GET /v1/model``
publishes them to every key) the clone fits the probabilities as soft targets and decides at the same
thresholds: the stronger attacker this API allows.

Serving sits above the audit: the query function is passed in. :func:`http_query` is a plain HTTP client
of the API (``urllib``; it imports nothing of ``dprad.serve``); :func:`local_query` answers as the server
would, from the run directory, for the auditor's own access.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema
from dprad.data.synth import SynthConfig, generate_reports
from dprad.errors import DpradError
from dprad.metrics.bootstrap import headline, interval, patient_weights, weighted_label_metrics
from dprad.metrics.scores import f1_scores
from dprad.run import RunRecord

# texts -> the victim's answers (N, L): 0/1 decisions at the served thresholds, or probabilities
Query = Callable[[Sequence[str]], np.ndarray]

EXTRACTION_STREAM = 0x45585452  # "EXTR": the attacker's synthetic seed stream, apart from users' and public
QUERY_UNIT = "reports"  # what a key's budget counts (dprad.serve.budgets): one report = one query
WHAT_IT_MEANS = (
    "The clone is trained only on the model's answers, so under differential privacy it is post-processing "
    "of a DP release: it is itself DP with respect to the training patients and reveals nothing about them "
    "that the served model does not. Extraction threatens the hospital's model (its value, the work and "
    "data behind it), not the patients. What limits it is the key budgets: set them against this curve "
    "(queries are counted in reports, the unit the budgets count)."
)


@dataclass(frozen=True)
class CloneSpec:
    """The attacker's clone: a public encoder, frozen, and a logistic regression per label on its features."""

    model: str = "minilm"  # the public encoder the model card names, or a local model directory
    pooling: str = "auto"  # auto: what the checkpoint declares (mean for MiniLM), else CLS
    max_length: int = 256
    max_tokens: int = 8192
    c: float = 1.0  # inverse L2 strength of each logistic regression
    device: str = "cpu"

    def describe(self) -> str:
        return (
            f"frozen public encoder '{self.model}' ({self.pooling} pooling, {self.max_length} tokens) + one "
            f"logistic regression per label (scikit-learn, C={self.c:g}) on its pooled features, centred on "
            "the attacker's own reports and L2-normalised; a label the victim answered only one way in the "
            "first n answers is predicted as that constant"
        )


class QueriesRefused(DpradError):
    """The server refused a request (HTTP 429): ``answered`` reports of this call were answered first, and
    ``answers`` (answered, L) holds their answers."""

    def __init__(self, message: str, *, answered: int, answers: np.ndarray, code: str) -> None:
        super().__init__(message)
        self.answered, self.answers, self.code = answered, answers, code


# ---------------------------------------------------------------- the attacker's data and access


def synthetic_reports(modality: str, n_reports: int, *, seed: int) -> list[Report]:
    """``n_reports`` synthetic reports from the attacker's own seed stream, which neither ``dprad synth``
    nor the public corpus (:func:`dprad.nn.public.public_reports`) draws from. Use one seed for the
    attacker's pool and another for the evaluation reports."""
    patients = max(1, int(n_reports / 1.6 * 1.2) + 10)  # 1.6 reports per patient on average
    out = generate_reports(
        SynthConfig(modality=modality, n_patients=patients, seed=seed, stream=EXTRACTION_STREAM)
    )
    while len(out) < n_reports:  # a short draw: more patients, same stream and seed
        patients *= 2
        out = generate_reports(
            SynthConfig(modality=modality, n_patients=patients, seed=seed, stream=EXTRACTION_STREAM)
        )
    return out[:n_reports]


@dataclass
class HttpQuery:
    """A client of ``POST /v1/classify`` with one API key; ``answered`` counts the reports it got answers
    for over its life. Calling it with texts returns (N, L) answers in ``labels`` order (the server's own
    order when None): booleans (``answer="decisions"``) or probabilities."""

    base_url: str
    api_key: str
    batch: int = 64
    labels: tuple[str, ...] | None = None
    answer: str = "decisions"
    timeout: float = 120.0
    answered: int = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[np.ndarray] = []
        done, size = 0, self.batch
        while done < len(texts):
            chunk = list(texts[done : done + size])
            status, doc = self._post(chunk)
            if status == 200:
                rows.append(self._columns(doc, len(chunk)))
                done += len(chunk)
                self.answered += len(chunk)
                continue
            err = doc.get("error")
            err = err if isinstance(err, dict) else {}
            code, message = str(err.get("code", "")), str(err.get("message", ""))
            left = _remaining(doc.get("budget"))
            if status == 429 and code == "over_budget" and 0 < left < len(chunk):
                size = left  # the server refuses a whole request that does not fit: send what is left
                continue
            if status == 429:
                width = len(self.labels) if self.labels is not None else 0
                answers = np.concatenate(rows) if rows else np.zeros((0, width))
                raise QueriesRefused(
                    f"{self.base_url}: the server refused more queries (HTTP 429 {code}: {message}) "
                    f"after answering {done} of the {len(texts)} reports of this call "
                    f"({self.answered} by this client in all)",
                    answered=done,
                    answers=answers,
                    code=code,
                )
            raise DpradError(f"{self.base_url}/v1/classify: HTTP {status} {code}: {message}")
        width = len(self.labels) if self.labels is not None else 0
        return np.concatenate(rows) if rows else np.zeros((0, width))

    def _post(self, texts: list[str]) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"reports": [{"text": t} for t in texts]}).encode("utf-8")
        req = urllib.request.Request(
            f"{self.base_url.rstrip('/')}/v1/classify",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return int(resp.status), _json_object(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), _json_object(err.read())
        except urllib.error.URLError as err:
            raise DpradError(f"{self.base_url}: cannot reach the server ({err.reason})") from None

    def _columns(self, doc: dict[str, Any], n: int) -> np.ndarray:
        served = [str(x) for x in doc.get("labels", [])]
        labels = list(self.labels) if self.labels is not None else served
        missing = [lab for lab in labels if lab not in served]
        if missing:
            raise DpradError(f"{self.base_url}: the served model has no label '{missing[0]}'")
        results = doc.get("results", [])
        if len(results) != n:
            raise DpradError(f"{self.base_url}: {n} reports sent, {len(results)} answered")
        if self.answer == "decisions":
            return np.array([[bool(r["decisions"][lab]) for lab in labels] for r in results], dtype=bool)
        return np.array([[float(r["probabilities"][lab]) for lab in labels] for r in results])


def http_query(
    base_url: str,
    api_key: str,
    *,
    batch: int = 64,
    labels: Sequence[str] | None = None,
    answer: str = "decisions",
    timeout: float = 120.0,
) -> HttpQuery:
    """A query function against a running ``dprad serve`` (``base_url`` like ``http://127.0.0.1:8000``):
    ``batch`` reports per request (at most the server's ``max_reports_per_request``); the answers'
    columns follow ``labels`` (pass the schema's; default the server's order). On HTTP 429 it stops with
    :class:`QueriesRefused` saying how many reports were answered; when the budget refuses a request
    that does not fit, it first sends the reports that still fit."""
    if answer not in ("decisions", "probabilities"):
        raise DpradError(f"answer '{answer}' must be decisions or probabilities")
    if batch < 1:
        raise DpradError(f"batch {batch} must be at least 1")
    return HttpQuery(base_url, api_key, batch, None if labels is None else tuple(labels), answer, timeout)


def local_query(run: str | Path | RunRecord, *, answer: str = "decisions") -> Query:
    """The run's own answers, as the server gives them (probabilities, or decisions at the shipped
    thresholds), without a server: the auditor's access, e.g. for the victim's answers on the
    evaluation reports, which then spend no key's budget."""
    from dprad.modes import load_run

    if answer not in ("decisions", "probabilities"):
        raise DpradError(f"answer '{answer}' must be decisions or probabilities")
    record = run if isinstance(run, RunRecord) else RunRecord.open(run)
    predictor, thresholds = load_run(record), record.thresholds.array

    def query(texts: Sequence[str]) -> np.ndarray:
        reports = [Report(id=str(i), patient_id=str(i), text=t) for i, t in enumerate(texts)]
        probs = predictor.predict(reports).probs  # (N, L)
        return probs >= thresholds[None, :] if answer == "decisions" else probs

    return query


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _remaining(budget: Any) -> int:
    """Reports a refused key may still send: the smaller of what is left today and in total."""
    if not isinstance(budget, dict):
        return 0
    left = [int(v) for v in (budget.get("remaining_day"), budget.get("remaining_total")) if v is not None]
    return min(left) if left else 0


# ---------------------------------------------------------------- the clone


@dataclass(frozen=True)
class Clone:
    """Per label, a fitted logistic regression or the constant decision the victim always gave."""

    center: np.ndarray  # (H,) mean feature of the attacker's first n reports
    models: tuple[Any, ...]  # L entries: a LogisticRegression, or a bool constant
    cuts: np.ndarray  # (L,) decision thresholds on the clone's probabilities

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H) -> probabilities (N, L) and decisions (N, L)."""
        x = _normalised(features, self.center)
        probs = np.empty((len(x), len(self.models)))
        for j, m in enumerate(self.models):
            probs[:, j] = float(m) if isinstance(m, bool) else m.predict_proba(x)[:, 1]
        const = np.array([isinstance(m, bool) for m in self.models])
        decisions = np.where(const[None, :], probs >= 0.5, probs >= self.cuts[None, :])
        return probs, decisions


def fit_clone(
    features: np.ndarray, targets: np.ndarray, decisions: np.ndarray, *, c: float, cuts: np.ndarray
) -> Clone:
    """Fit one logistic regression per label on (N, H) features and (N, L) targets in [0, 1] (0/1
    decisions, or probabilities fitted as soft targets through weighted rows); labels whose (N, L)
    ``decisions`` are all equal are that constant."""
    from sklearn.linear_model import LogisticRegression

    center = features.mean(0)
    x = _normalised(features, center)
    models: list[Any] = []
    for j in range(targets.shape[1]):
        if decisions[:, j].all() or not decisions[:, j].any():
            models.append(bool(decisions[0, j]))
            continue
        t = targets[:, j].astype(np.float64)
        xx, yy, w = np.vstack([x, x]), np.r_[np.ones(len(x)), np.zeros(len(x))], np.r_[t, 1.0 - t]
        keep = w > 0  # hard targets: each report once, with its decision
        models.append(LogisticRegression(C=c, max_iter=2000).fit(xx[keep], yy[keep], sample_weight=w[keep]))
    return Clone(center=center, models=tuple(models), cuts=cuts)


def clone_features(reports: Sequence[Report], spec: CloneSpec, schema: LabelSchema) -> np.ndarray:
    """(N, H) pooled features of the clone's frozen encoder."""
    from dprad.data.dataset import encode
    from dprad.local_models import load_tokenizer, resolve_model_dir
    from dprad.nn.device import resolve_device
    from dprad.nn.features import encoder_features
    from dprad.nn.model import load_encoder, resolve_pooling

    model_dir = resolve_model_dir(spec.model)
    encoder = load_encoder(model_dir).to(resolve_device(spec.device))
    enc = encode(reports, load_tokenizer(str(model_dir)), schema, max_length=spec.max_length)
    pooling = resolve_pooling(spec.pooling, model_dir)
    return encoder_features(encoder, enc, pooling=pooling, max_tokens=spec.max_tokens)


def _normalised(features: np.ndarray, center: np.ndarray) -> np.ndarray:
    x = features - center[None, :]  # (N, H)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- the curve


def extraction_curve(
    query: Query,
    *,
    attacker_reports: Sequence[Report],
    eval_reports: Sequence[Report],
    budgets: Sequence[int],
    schema: LabelSchema,
    clone: CloneSpec | str | Path = CloneSpec(),
    rng: np.random.Generator,
    reference: Query | None = None,
    thresholds: np.ndarray | None = None,
    attacker_data: str = "",
    n_boot: int = 1000,
) -> dict[str, Any]:
    """The clone's agreement with the victim as a function of the reports the attacker sent.

    ``query`` is the attacker's access (:func:`http_query` with its key); ``reference`` gives the
    victim's answers on ``eval_reports`` (the auditor's access, e.g. :func:`local_query`; default
    ``query`` itself, which then spends the key's budget on them first). Answers are 0/1 decisions, or
    probabilities when the served ``thresholds`` (L,) are given. Evaluation reports whose text is in the
    attacker's pool are dropped. When the server stops answering (429), the curve ends with a point at
    the reports answered, and ``cut_off`` says where and why. Returns ``audit.json``'s ``"extraction"``.
    """
    spec = clone if isinstance(clone, CloneSpec) else CloneSpec(model=str(clone))
    steps = sorted({int(b) for b in budgets})
    if not steps or steps[0] < 1 or steps[-1] > len(attacker_reports):
        raise DpradError(
            f"budgets {list(budgets)}: each must be between 1 and the attacker's {len(attacker_reports)} reports"
        )
    pool = {r.text for r in attacker_reports}
    held_out = [r for r in eval_reports if r.text not in pool]
    if not held_out:
        raise DpradError("every evaluation report is in the attacker's pool: evaluate on other reports")
    order = rng.permutation(len(attacker_reports))
    sent = [attacker_reports[i] for i in order[: steps[-1]]]

    try:
        victim = _decisions((reference or query)([r.text for r in held_out]), thresholds, schema)[1]
    except QueriesRefused as err:
        raise DpradError(
            f"{err} while asking the victim about the evaluation reports: pass reference= (the auditor's "
            "own access) or a key with budget for them"
        ) from None
    answers, cut_off = _ask(query, [r.text for r in sent], steps)
    targets, decided = _decisions(answers, thresholds, schema)
    points = [b for b in steps if b <= len(answers)]
    if cut_off is not None and len(answers) and len(answers) not in points:
        points.append(len(answers))
    if cut_off is not None:
        cut_off["budgets_not_reached"] = [b for b in steps if b > len(answers)]
    if not points:
        raise DpradError(f"the server answered none of the attacker's reports: {cut_off}")

    feats = clone_features([*sent[: len(answers)], *held_out], spec, schema)  # (n + M, H)
    train_x, eval_x = feats[: len(answers)], feats[len(answers) :]
    cuts = np.full(len(schema), 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    weights = patient_weights([r.patient_id for r in held_out], n_boot, random_state=rng)  # (B, M)
    rows = []
    for n in points:
        model = fit_clone(train_x[:n], targets[:n], decided[:n], c=spec.c, cuts=cuts)
        probs, decisions = model.predict(eval_x)  # (M, L) each
        rows.append(_compare(victim, probs, decisions, weights, cuts))
    labels = list(schema.labels)
    return {
        "queries": points,
        "query_unit": QUERY_UNIT,
        "answers": "decisions" if thresholds is None else "probabilities",
        "agreement": [r["agreement"] for r in rows],
        "clone_weighted_f1": [r["weighted_f1"] for r in rows],
        "per_label_agreement": {lab: [r["per_label"][j] for r in rows] for j, lab in enumerate(labels)},
        "constant_agreement": float(np.maximum(victim.mean(0), 1 - victim.mean(0)).mean()),
        "victim_positive_rate": dict(zip(labels, victim.mean(0).round(6).tolist(), strict=True)),
        "cut_off": cut_off,
        "clone": spec.describe(),
        "attacker_data": attacker_data
        or f"{len(attacker_reports)} public or synthetic reports supplied by the caller, shuffled once; "
        "budget n sends the first n",
        "eval_reports": len(held_out),
        "eval_dropped_in_pool": len(eval_reports) - len(held_out),
        "bootstrap": {"n_boot": n_boot, "level": 0.95, "unit": "patient"},
        "what_it_means": WHAT_IT_MEANS,
    }


def _ask(query: Query, texts: list[str], steps: list[int]) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The victim's answers to ``texts``, asked budget by budget, up to where the server stops."""
    parts: list[np.ndarray] = []
    done = 0
    for b in steps:
        try:
            parts.append(np.asarray(query(texts[done:b])))
        except QueriesRefused as err:
            if len(err.answers):
                parts.append(np.asarray(err.answers))
            answered = done + err.answered
            cut = {"after_reports": answered, "code": err.code, "message": str(err)}
            return np.concatenate(parts) if parts else np.zeros((0, 0)), cut
        done = b
    return np.concatenate(parts), None


def _decisions(
    answers: np.ndarray, thresholds: np.ndarray | None, schema: LabelSchema
) -> tuple[np.ndarray, np.ndarray]:
    """(targets in [0, 1], 0/1 decisions), each (N, L), from the victim's answers."""
    a = np.asarray(answers, dtype=np.float64)
    if len(a) and a.shape[1] != len(schema):
        raise DpradError(f"the victim answered {a.shape[1]} labels; the schema has {len(schema)}")
    if len(a) == 0:
        return np.zeros((0, len(schema))), np.zeros((0, len(schema)), dtype=bool)
    if thresholds is None:
        if not np.isin(a, (0.0, 1.0)).all():
            raise DpradError(
                "the answers are not 0/1 decisions: pass the served thresholds to use probabilities"
            )
        return a, a > 0.5
    return a, a >= np.asarray(thresholds, dtype=np.float64)[None, :]


def _compare(
    victim: np.ndarray, probs: np.ndarray, decisions: np.ndarray, weights: np.ndarray, cuts: np.ndarray
) -> dict[str, Any]:
    """Agreement with the victim (per report, averaged; patient-bootstrap CI), per label, and the clone's
    weighted F1 with the victim's decisions as labels."""
    same = decisions == victim  # (M, L)
    per_report = same.mean(1)  # (M,)
    boot = weights @ per_report / np.maximum(weights.sum(1), 1e-12)  # (B,)
    agreement = interval(float(per_report.mean()), boot).to_dict()
    point = f1_scores(victim.astype(int), probs, thresholds=cuts)["weighted"]
    samples = headline(weighted_label_metrics(victim.astype(int), probs, decisions, weights))["weighted_f1"]
    return {
        "agreement": agreement,
        "weighted_f1": interval(point, samples).to_dict(),
        "per_label": same.mean(0).round(6).tolist(),
    }


__all__ = [
    "EXTRACTION_STREAM",
    "WHAT_IT_MEANS",
    "CloneSpec",
    "HttpQuery",
    "QueriesRefused",
    "extraction_curve",
    "fit_clone",
    "http_query",
    "local_query",
    "synthetic_reports",
]
