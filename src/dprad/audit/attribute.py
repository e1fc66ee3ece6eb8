"""Attribute inference: does the model fill in a removed finding better for its training reports?

For each label L and each report positive for L (its labels as the run read them, uncertain ones under the
run's policy), every sentence in which the rule teacher finds a mention of L (positive, negated, uncertain
or historical alike) is removed, and the run's model scores the rest. The attack score is the model's
probability for L on the redacted text; members are the run's training reports, non-members its test
reports (other patients), as in :mod:`dprad.audit.run_audit`. The metrics are those of membership
inference (:mod:`dprad.audit.mia`): AUC and TPR at low FPR with percentile bootstrap CIs.

A report positive for L in which the rules find no mention of L has nothing to remove: it is skipped and
counted, never scored with its finding still in the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dprad.audit.mia import bootstrap_attack
from dprad.audit.run_audit import _pick
from dprad.data.reports import Report, label_matrix
from dprad.data.schemas import UncertainPolicy
from dprad.errors import DpradError
from dprad.labeling.context import SENTENCE, sentences
from dprad.labeling.rules import RuleSet, find_mentions, rules_for
from dprad.modes import load_run
from dprad.run import RunRecord
from dprad.run.results import RARE_SUPPORT

FPRS = (0.01, 0.1)
MIN_POSITIVES = 10  # members and non-members a label needs before it gets an AUC (as mia.MIN_SLICE)
REDACTION = "sentences the rule teacher reads as mentioning the label"
WHAT_IT_CHECKS = (
    "For each finding, training reports (members) and held-out test reports of other patients "
    "(non-members) that are positive for it lose every sentence the rule teacher reads as mentioning it; "
    "the attack scores each by the model's probability for the finding on what is left. AUC near 0.5 (and "
    "TPR near the FPR) means the model does not restore a removed finding better for the reports it was "
    "trained on than for new ones: no memorised finding shows through this attack. It does not mean the "
    "finding cannot be inferred: the model may predict it from the rest of the text for everyone "
    "(correlated findings, an impression that restates it in words the rules do not know); that is "
    "generalisation, not a leak, and the mean scores show how much of it there is. Nor does it rule out "
    "stronger attacks (reference models, other redactions) or findings outside the schema. With few "
    "positives the CI is wide, so a rare label's AUC near 0.5 bounds little; the pooled result counts each "
    "(report, label) pair once and resamples pairs, although the pairs of one report are not independent. "
    "TPR at 1% FPR with fewer than 100 non-members is the share of members above every non-member. The "
    "two sets are fixed, so a chance difference in what their remaining text says shows as well: runs "
    "trained on the same split (with and without DP) differ only in what the model took from its members."
)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) in ``text`` of each of ``context.sentences(text)``, in order (same indices)."""
    spans, prev = [], 0
    for m in [*SENTENCE.finditer(text), None]:
        lo, hi = prev, (m.start() if m is not None else len(text))
        piece = text[lo:hi]
        if piece.strip():
            lo += len(piece) - len(piece.lstrip())
            spans.append((lo, lo + len(piece.strip())))
        if m is not None:
            prev = m.end()
    return spans


def _without(text: str, drop: set[int]) -> str:
    """``text`` less the sentences numbered ``drop`` as ``find_mentions`` numbers them (its whitespace
    normalisation included; the kept sentences keep their case)."""
    norm = " ".join(text.split())
    low = " ".join(text.lower().split())  # exactly what find_mentions splits
    spans = sentence_spans(low)
    if [low[a:b] for a, b in spans] != sentences(low):  # the splitter changed under us: fail loudly
        raise DpradError("attribute inference: sentence spans disagree with the rule teacher's sentences")
    src = norm if len(norm) == len(low) else low  # lower() can change the length of some characters
    return " ".join(src[a:b] for i, (a, b) in enumerate(spans) if i not in drop)


def redact(text: str, label: str, rules: RuleSet) -> tuple[str, int]:
    """The text without every sentence in which ``rules`` find a mention of ``label``, and how many
    sentences were removed (0: the rules never see the label, and the text is returned unchanged)."""
    drop = {m.sentence for m in find_mentions(text, rules) if m.label == label}
    return (_without(text, drop), len(drop)) if drop else (text, 0)


@dataclass
class _Tally:
    """One label's (or the pool's) scored pairs and what was skipped."""

    scores: list[float]
    member: list[bool]
    positives: list[int]  # [members, non-members] positive for the label
    skipped: int = 0

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        s, m = np.asarray(self.scores, float), np.asarray(self.member, bool)
        return s[m], s[~m]


def _redacted_pairs(
    groups: Sequence[tuple[bool, Sequence[Report]]], run: RunRecord, rules: RuleSet
) -> tuple[list[tuple[int, bool, Report]], dict[int, _Tally]]:
    """(label index, is member, redacted report) for every positive pair with a removable mention, and
    per-label tallies (positives and skipped filled in, scores still empty)."""
    schema = run.schema
    policy = UncertainPolicy(run.config.data.uncertain_policy)
    tallies = {j: _Tally([], [], [0, 0]) for j in range(len(schema))}
    pairs: list[tuple[int, bool, Report]] = []
    for is_member, reps in groups:
        y, mask = label_matrix(reps, schema, policy=policy)  # (N, L)
        pos = (y * mask) > 0
        for i, r in enumerate(reps):
            if not pos[i].any():
                continue
            mentions = find_mentions(r.text, rules)
            for j in np.flatnonzero(pos[i]):
                t = tallies[int(j)]
                t.positives[0 if is_member else 1] += 1
                drop = {m.sentence for m in mentions if m.label == schema.labels[j]}
                if not drop:
                    t.skipped += 1
                    continue
                pairs.append((int(j), is_member, replace(r, text=_without(r.text, drop))))
    return pairs, tallies


def _result(t: _Tally, *, rng: np.random.Generator, n_boot: int, min_positives: int) -> dict[str, Any]:
    s_in, s_out = t.split()
    out: dict[str, Any] = {
        "members": len(s_in),
        "nonmembers": len(s_out),
        "skipped": t.skipped,
        "positives": {"members": t.positives[0], "nonmembers": t.positives[1]},
        "auc": None,
        **{f"tpr_at_{x:g}_fpr": None for x in FPRS},
        "advantage": None,
        "mean_score_members": float(s_in.mean()) if len(s_in) else None,
        "mean_score_nonmembers": float(s_out.mean()) if len(s_out) else None,
        "note": None,
    }
    if min(len(s_in), len(s_out)) < min_positives:
        out["note"] = (
            f"{len(s_in)} member(s) and {len(s_out)} non-member(s) with a removable mention: fewer than "
            f"{min_positives} on a side, so no AUC"
        )
        return out
    boot = bootstrap_attack(s_in, s_out, rng=rng, n_boot=n_boot, fprs=FPRS)
    out |= {k: v for k, v in boot.items() if k not in ("members", "nonmembers")}
    return out


def attribute_inference(
    run: RunRecord,
    reports_by_id: Mapping[str, Report],
    *,
    rng: np.random.Generator,
    n_boot: int = 1000,
    min_positives: int = MIN_POSITIVES,
    control: RunRecord | None = None,
) -> dict[str, Any]:
    """The ``"attribute"`` section of ``audit.json``: per label and pooled over labels, how well the
    model's probability for a finding whose sentences were removed separates training reports from test
    reports (see the module docstring and ``WHAT_IT_CHECKS``).

    ``control``: a run of the same recipe on the same data with another split seed. Its model scores the
    same two groups; its membership in them is unrelated to the grouping, so its AUC is what the groups'
    remaining text alone gives, and ``auc_minus_control`` is the part that the target model's training
    on its members adds."""
    if control is not None:
        return _with_control(run, reports_by_id, control, rng=rng, n_boot=n_boot, min_positives=min_positives)
    if n_boot < 1:
        raise DpradError(f"--bootstrap {n_boot} must be at least 1")
    if min_positives < 1:
        raise DpradError(f"min_positives {min_positives} must be at least 1")
    schema = run.schema
    rules = rules_for(schema)
    by_id = dict(reports_by_id)
    members = _pick(by_id, run.splits.get("train", ()), "train", run.path)
    nonmembers = _pick(by_id, run.splits.get("test", ()), "test", run.path)
    if not members or not nonmembers:
        raise DpradError(f"{run.path}: attribute inference needs training and test reports")

    pairs, tallies = _redacted_pairs(((True, members), (False, nonmembers)), run, rules)
    if pairs:
        probs = load_run(run).predict([r for _, _, r in pairs]).probs  # (P, L)
        for p, (j, is_member, _) in enumerate(pairs):
            tallies[j].scores.append(float(probs[p, j]))
            tallies[j].member.append(is_member)

    readable = set(rules.compiled())
    labels = []
    for j, name in enumerate(schema.labels):
        res = _result(tallies[j], rng=rng, n_boot=n_boot, min_positives=min_positives)
        if name not in readable:
            res["note"] = (
                "the rule teacher has no vocabulary for this label (it reads it from the absence of "
                "findings), so there is no sentence to remove"
            )
        rare = tallies[j].positives[1] < RARE_SUPPORT  # positive test reports, as metrics' support
        labels.append({"label": name, "rare": rare, "critical": name in schema.critical, **res})

    pool = _Tally(
        [s for t in tallies.values() for s in t.scores],
        [m for t in tallies.values() for m in t.member],
        [sum(t.positives[k] for t in tallies.values()) for k in (0, 1)],
        sum(t.skipped for t in tallies.values()),
    )
    return {
        "labels": labels,
        "pooled": _result(pool, rng=rng, n_boot=n_boot, min_positives=min_positives),
        "n_boot": n_boot,
        "min_positives": min_positives,
        "redaction": REDACTION,
        "what_it_checks": WHAT_IT_CHECKS,
    }


CONTROL = (
    "control: the same recipe trained with another split seed scores the same two groups; training on its "
    "own split says nothing about this grouping, so its AUC is what the groups' remaining text alone gives, "
    "and the target's AUC above it is what training on the members added"
)


def _with_control(
    run: RunRecord,
    reports_by_id: Mapping[str, Report],
    control: RunRecord,
    *,
    rng: np.random.Generator,
    n_boot: int,
    min_positives: int,
) -> dict[str, Any]:
    """The target's section, each result beside the control model's on the same groups."""
    from dataclasses import replace

    if control.schema.labels != run.schema.labels or control.data_path != run.data_path:
        raise DpradError(
            f"--control {control.path}: must be trained on the same data and labels as {run.path}"
        )
    if control.splits.get("train") == run.splits.get("train"):
        raise DpradError(
            f"--control {control.path}: has the same training split as {run.path} (use another split seed)"
        )
    kw: dict[str, Any] = {"rng": rng, "n_boot": n_boot, "min_positives": min_positives}
    target = attribute_inference(run, reports_by_id, **kw)
    other = attribute_inference(replace(control, splits=run.splits), reports_by_id, **kw)

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        diff = (
            None
            if a.get("auc") is None or b.get("auc") is None
            else a["auc"]["estimate"] - b["auc"]["estimate"]
        )
        return {**a, "control_auc": b.get("auc"), "auc_minus_control": diff}

    target["labels"] = [merge(a, b) for a, b in zip(target["labels"], other["labels"], strict=True)]
    target["pooled"] = merge(target["pooled"], other["pooled"])
    target["control"] = {"run": str(control.path), "what": CONTROL}
    return target


__all__ = ["CONTROL", "FPRS", "MIN_POSITIVES", "REDACTION", "WHAT_IT_CHECKS", "attribute_inference", "redact"]
