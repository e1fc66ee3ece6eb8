"""How well a teacher's labels agree with gold labels, per label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score

from dprad.data.schemas import LabelSchema, UncertainPolicy
from dprad.metrics.bootstrap import headline, interval, patient_weights, weighted_label_metrics
from dprad.metrics.scores import f1_scores, per_label

STATES = {1: "positive", 0: "negative", -1: "uncertain", None: "not mentioned"}


def _binary(v: int | None, policy: UncertainPolicy) -> int:
    if v == 1:
        return 1
    if v == -1:
        return 1 if policy is UncertainPolicy.ONES else 0
    return 0


def agreement(
    teacher: Sequence[Mapping[str, int] | None],
    gold: Sequence[Mapping[str, int] | None],
    schema: LabelSchema,
    *,
    policy: UncertainPolicy = UncertainPolicy.ONES,
    patient_ids: Sequence[str] | None = None,
    n_boot: int = 1000,
    random_state: int = 0,
) -> dict[str, Any]:
    """Per-label precision / recall / F1 / Cohen's kappa of the teacher against gold (reports where both
    exist), the weighted F1 over labels, and the positive / negative / uncertain / not-mentioned confusion.
    With ``patient_ids``: 95% patient-level bootstrap intervals of precision, recall, F1 and weighted F1."""
    keep: list[int] = []
    pairs: list[tuple[Mapping[str, int], Mapping[str, int]]] = []
    for i, (t, g) in enumerate(zip(teacher, gold, strict=True)):
        if t is not None and g is not None:
            keep.append(i)
            pairs.append((t, g))
    if not pairs:
        raise ValueError("no report has both teacher and gold labels")
    t_bin = np.array([[_binary(t.get(lab), policy) for lab in schema.labels] for t, _ in pairs])
    g_bin = np.array([[_binary(g.get(lab), policy) for lab in schema.labels] for _, g in pairs])
    rows = []
    # the teacher's binary reading is scored like a classifier's decisions at threshold 0.5
    point = per_label(g_bin, t_bin.astype(float), labels=schema.labels)
    for j, lab in enumerate(schema.labels):
        confusion: dict[str, dict[str, int]] = {}
        for t, g in pairs:
            gs, ts = STATES[g.get(lab)], STATES[t.get(lab)]
            confusion.setdefault(gs, {}).setdefault(ts, 0)
            confusion[gs][ts] += 1
        same = len(set(t_bin[:, j].tolist()) | set(g_bin[:, j].tolist())) == 1
        rows.append(
            {
                "label": lab,
                "gold_positive": int(g_bin[:, j].sum()),
                "teacher_positive": int(t_bin[:, j].sum()),
                **{k: point[j][k] for k in ("precision", "recall", "f1")},
                "kappa": 1.0 if same else float(cohen_kappa_score(g_bin[:, j], t_bin[:, j])),
                "confusion_gold_by_teacher": confusion,
            }
        )
    f1 = f1_scores(g_bin, t_bin.astype(float))
    out: dict[str, Any] = {
        "reports": len(pairs),
        "uncertain_policy": policy.value,
        "weighted_f1": f1["weighted"],
        "macro_f1": f1["macro"],
        "per_label": rows,
    }
    if patient_ids is not None:
        w = patient_weights([patient_ids[i] for i in keep], n_boot, random_state=random_state)  # (B, N)
        boot = weighted_label_metrics(g_bin, t_bin.astype(float), t_bin, w)  # each (B, L)
        for j, row in enumerate(rows):
            row["ci"] = {k: interval(row[k], boot[k][:, j]).to_dict() for k in ("precision", "recall", "f1")}
        out["weighted_f1_ci"] = interval(f1["weighted"], headline(boot)["weighted_f1"]).to_dict()
        out["bootstrap"] = {"resamples": n_boot, "unit": "patient", "level": 0.95}
    return out
