"""Canaries for the one-run audit: make them, then turn their losses into an empirical epsilon lower bound.

A canary is a copy of a real training report whose labels are replaced by a random label vector (each
label 1 with probability 1/2, every label observed): a model can only fit those labels by memorising the
report. Each canary enters training independently with probability 1/2. After training, the auditor scores
every canary by minus its loss on its random labels, guesses "in" for the k+ highest scores and "out" for
the k- lowest (k+ and k- fixed before scoring), and :func:`dprad.audit.bound.epsilon_lower_bound` turns
(r = k+ + k- guesses, v correct) into a 95% lower bound on epsilon.

The training stage (1) calls :func:`make_canaries`, (2) removes ``CanarySet.source_ids`` from the training
split (so that no duplicate text sits in training) and adds ``CanarySet.included_reports()`` (steps 1-2
are :func:`canary_hook`, ready for ``dprad.stages.train.train(..., canaries=...)``), (3) trains,
(4) computes every canary's loss with ``Predictor.predict(canaries.reports).loss`` and (5) writes
:func:`canary_section` into ``audit.json``. Excluded canaries go nowhere: not val, not test, not metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dprad.audit.bound import audit_ceiling, epsilon_lower_bound
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema
from dprad.errors import DpradError

CANARY_PREFIX = "canary-"
RARE_WORDS = 3  # random letter strings appended per canary with rare_tokens=True
RARE_WORD_LETTERS = 7  # each splits into several rare wordpieces under a BERT-style tokenizer
_LETTERS = np.array(list("bcdfghjklmnpqrstvwxz"))


@dataclass(frozen=True, eq=False)
class CanarySet:
    reports: tuple[Report, ...]  # (M,) canary reports carrying their random labels
    included: np.ndarray  # (M,) bool: True where the canary goes into the training split
    source_ids: tuple[str, ...]  # (M,) ids of the training reports they copy: remove these from training
    rare_tokens: bool

    @property
    def m(self) -> int:
        return len(self.reports)

    def included_reports(self) -> list[Report]:
        """The canaries that join the training split."""
        return [r for r, keep in zip(self.reports, self.included, strict=True) if keep]

    def label_matrix(self, schema: LabelSchema) -> np.ndarray:
        """(M, L) float32 random labels, in the schema's order."""
        return np.array([[(r.labels or {})[lab] for lab in schema.labels] for r in self.reports], np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "m": self.m,
            "included": int(self.included.sum()),
            "rare_tokens": self.rare_tokens,
            "ids": [r.id for r in self.reports],
            "in_training": [bool(x) for x in self.included],
            "source_ids": list(self.source_ids),
        }


def _rare_suffix(rng: np.random.Generator) -> str:
    words = rng.choice(_LETTERS, size=(RARE_WORDS, RARE_WORD_LETTERS))
    return " ".join("".join(w) for w in words)


def make_canaries(
    train_reports: Sequence[Report],
    schema: LabelSchema,
    *,
    m: int,
    rng: np.random.Generator,
    rare_tokens: bool = False,
) -> CanarySet:
    """M canaries copied from M distinct training reports, each with a random label vector.

    Ids are ``canary-00000`` ... and each canary is its own patient (``canary-00000``), so that patient-level
    code never groups it with its source. ``rare_tokens`` appends a few random letter strings (rare
    wordpieces) to the text, which makes a canary easier to memorise and the audit stronger.
    """
    if m < 2:  # one guessed in and one guessed out at the least
        raise DpradError(f"--audit-canaries {m} must be at least 2")
    if m > len(train_reports):
        raise DpradError(
            f"--audit-canaries {m} is more than the {len(train_reports)} training reports canaries are copied from"
        )
    chosen = rng.choice(len(train_reports), size=m, replace=False)  # (M,) distinct sources
    labels = rng.random((m, len(schema))) < 0.5  # (M, L)
    included = rng.random(m) < 0.5  # (M,)
    reports = []
    for i, (src_idx, row) in enumerate(zip(chosen, labels, strict=True)):
        src = train_reports[int(src_idx)]
        text = f"{src.text} {_rare_suffix(rng)}" if rare_tokens else src.text
        cid = f"{CANARY_PREFIX}{i:05d}"
        attrs = {k: v for k, v in src.attrs.items() if k != "split"} | {"canary": True}
        reports.append(
            Report(
                id=cid,
                patient_id=cid,
                text=text,
                sections={},
                attrs=attrs,
                labels={lab: int(y) for lab, y in zip(schema.labels, row, strict=True)},
            )
        )
    return CanarySet(
        reports=tuple(reports),
        included=included,
        source_ids=tuple(train_reports[int(j)].id for j in chosen),
        rare_tokens=rare_tokens,
    )


def canary_hook(
    *, m: int, rng: np.random.Generator, rare_tokens: bool = False
) -> Callable[[list[Report], LabelSchema], tuple[list[Report], CanarySet]]:
    """The training stage's hook: (training split, schema) -> (the training split to use, the canaries).

    The training split loses the canaries' source reports (no duplicate text in training) and gains the
    canaries drawn "in"; canaries drawn "out" go nowhere.
    """

    def hook(train_reports: list[Report], schema: LabelSchema) -> tuple[list[Report], CanarySet]:
        canaries = make_canaries(train_reports, schema, m=m, rng=rng, rare_tokens=rare_tokens)
        sources = set(canaries.source_ids)
        kept = [r for r in train_reports if r.id not in sources]
        return [*kept, *canaries.included_reports()], canaries

    return hook


@dataclass(frozen=True)
class CanaryAudit:
    m: int
    k_plus: int
    k_minus: int
    r: int  # guesses made
    v: int  # guesses right
    delta: float
    confidence: float
    epsilon_lower_bound: float
    ceiling: float  # the bound had all r guesses been right
    can_check: str
    cannot_check: str
    guess_rule: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "m": self.m,
            "k_plus": self.k_plus,
            "k_minus": self.k_minus,
            "guesses": self.r,
            "correct": self.v,
            "delta": self.delta,
            "confidence": self.confidence,
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "ceiling": self.ceiling,
            "guess_rule": self.guess_rule,
            "can_check": self.can_check,
            "cannot_check": self.cannot_check,
            **self.extra,
        }


def default_k(m: int) -> int:
    """The documented rule: k+ = k- = m // 10 (r = m / 5 guesses, e.g. 200 of 1000 canaries)."""
    return max(1, m // 10)


def score_canaries(
    losses: np.ndarray,
    canaries: CanarySet,
    *,
    k_plus: int | None = None,
    k_minus: int | None = None,
    delta: float,
    confidence: float = 0.95,
) -> CanaryAudit:
    """Guess membership from each canary's loss on its random labels and bound epsilon from below.

    ``losses`` is (M,) in the order of ``canaries.reports``. Score = -loss; the k+ highest scores are
    guessed "in", the k- lowest "out", the rest abstain. k+ and k- default to :func:`default_k`.
    """
    losses = np.asarray(losses, dtype=np.float64)
    m = canaries.m
    if losses.shape != (m,):
        raise DpradError(f"canary losses have shape {losses.shape}, expected ({m},): one per canary")
    if not np.all(np.isfinite(losses)):
        raise DpradError("canary losses contain NaN or inf: every canary needs its loss on its random labels")
    kp = default_k(m) if k_plus is None else k_plus
    km = default_k(m) if k_minus is None else k_minus
    if kp < 0 or km < 0 or kp + km > m:
        raise DpradError(f"k+ = {kp} and k- = {km} must be >= 0 with k+ + k- <= m = {m}")
    order = np.argsort(losses, kind="stable")  # (M,) lowest loss (highest score) first
    guess_in, guess_out = order[:kp], order[m - km :]
    v = int(canaries.included[guess_in].sum() + (~canaries.included[guess_out]).sum())
    r = kp + km
    eps = epsilon_lower_bound(m=m, r=r, v=v, delta=delta, confidence=confidence)
    ceiling = audit_ceiling(r, delta, m=m, confidence=confidence)
    return CanaryAudit(
        m=m,
        k_plus=kp,
        k_minus=km,
        r=r,
        v=v,
        delta=delta,
        confidence=confidence,
        epsilon_lower_bound=eps,
        ceiling=ceiling,
        guess_rule=f"score = -loss on the random labels; top {kp} guessed in, bottom {km} guessed out "
        "(k fixed before scoring)",
        can_check=(
            f"With {r} guesses on {m} canaries the largest bound this audit can prove is {ceiling:.2f} (all "
            f"guesses right, {confidence:.0%} confidence, delta {delta:g}). A bound above the ledger's epsilon "
            "would show that training does not implement the algorithm the accountant assumes (a privacy bug); "
            f"an epsilon claim below {ceiling:.2f} is one this audit could contradict."
        ),
        cannot_check=(
            f"Claims of epsilon >= {ceiling:.2f} cannot be refuted with {r} guesses. A bound below the ledger's "
            "epsilon does not confirm the guarantee: it is what one black-box attacker (loss on random labels, "
            "final model only) proves, and one-run audits of DP-SGD are far from tight. The audit does not test "
            "reports other than the canaries, the threshold selection on the validation split (canaries are "
            "training data only), patients with several reports (each canary is its own patient), or the base "
            "model's pre-training data."
        ),
    )


def canary_section(
    losses: np.ndarray,
    canaries: CanarySet,
    *,
    delta: float,
    ledger_epsilon: float | None,
    k_plus: int | None = None,
    k_minus: int | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The dict for ``audit.json``'s "canary" section, from the per-canary losses on their random labels.

    ``delta``: the run's delta (privacy.json) for a private run; for a non-private run pass the delta a
    private run of the same size would use (``dprad.privacy.default_delta(n)``). ``exceeds_ledger`` is True
    when the empirical lower bound is above the ledger's epsilon: a privacy bug to find, not a number to report.
    """
    audit = score_canaries(
        losses, canaries, k_plus=k_plus, k_minus=k_minus, delta=delta, confidence=confidence
    )
    exceeds = None if ledger_epsilon is None else bool(audit.epsilon_lower_bound > ledger_epsilon)
    return {
        **audit.to_dict(),
        "ledger_epsilon": ledger_epsilon,
        "exceeds_ledger": exceeds,
        "canaries": {k: v for k, v in canaries.to_dict().items() if k not in ("ids", "source_ids")},
        "canary_losses": {
            "in": [float(x) for x in np.asarray(losses)[canaries.included]],
            "out": [float(x) for x in np.asarray(losses)[~canaries.included]],
        },
    }


__all__ = [
    "CANARY_PREFIX",
    "CanaryAudit",
    "CanarySet",
    "canary_hook",
    "canary_section",
    "default_k",
    "make_canaries",
    "score_canaries",
]
