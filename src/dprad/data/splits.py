"""Patient-level, label-stratified train / val / test splits.

No patient is ever in two splits. Within that constraint the label distribution is balanced with
iterative stratification (Sechidis et al., 2011) applied to *patients*, each weighted by its number of
reports. ``iterative-stratification`` (iterstrat) implements the item-level two-way variant only; the
patient-weighted, k-way form needed here is short enough to own (below).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dprad.data.reports import Report, label_matrix
from dprad.data.schemas import LabelSchema, UncertainPolicy
from dprad.errors import DpradError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    train: list[Report]
    val: list[Report]
    test: list[Report]

    def as_dict(self) -> dict[str, list[Report]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def patient_overlap(self) -> set[str]:
        """Patients found in more than one split; empty by construction."""
        seen: dict[str, str] = {}
        overlap: set[str] = set()
        for name, reps in self.as_dict().items():
            for r in reps:
                if seen.setdefault(r.patient_id, name) != name:
                    overlap.add(r.patient_id)
        return overlap


def split_by_patient(
    reports: Sequence[Report],
    schema: LabelSchema,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> Splits:
    """Split reports by patient, stratified on the schema's labels; deterministic for a given seed.

    Reports carrying a fixed ``attrs['split']`` (``train``/``val``/``test``) keep it.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise DpradError(f"--split fractions {fractions} must be three non-negative numbers summing to 1")
    fixed = [r for r in reports if "split" in r.attrs]
    if fixed:
        return _fixed_splits(reports)
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(reports):
        by_patient[r.patient_id].append(i)
    patients = sorted(by_patient)
    y, _ = label_matrix(reports, schema, policy=UncertainPolicy.ONES)
    # (P, L) positives per patient, (P,) reports per patient
    counts = np.stack([y[by_patient[p]].sum(0) for p in patients]) if patients else np.zeros((0, len(schema)))
    sizes = np.array([len(by_patient[p]) for p in patients], dtype=float)
    assign = iterative_stratification(counts, sizes, np.asarray(fractions), rng=np.random.default_rng(seed))
    out: dict[str, list[Report]] = {n: [] for n in SPLIT_NAMES}
    for p, k in zip(patients, assign, strict=True):
        out[SPLIT_NAMES[k]].extend(reports[i] for i in by_patient[p])
    return Splits(**out)


def iterative_stratification(
    counts: np.ndarray, sizes: np.ndarray, fractions: np.ndarray, *, rng: np.random.Generator
) -> np.ndarray:
    """Assign each group (row of ``counts``: (G, L) label counts, ``sizes``: (G,) items) to a fold.

    Rarest label first: its groups go to the fold that most lacks that label, ties broken by the fold
    that most lacks items, then at random. Groups with no positive label fill the item deficit.
    """
    g = counts.shape[0]
    want_labels = fractions[:, None] * counts.sum(0)[None, :]  # (K, L)
    want_items = fractions * sizes.sum()  # (K,)
    assign = np.full(g, -1)
    remaining = counts > 0
    order = rng.permutation(g)
    while True:
        open_groups = assign < 0
        label_left = (remaining & open_groups[:, None]).sum(0)
        if not label_left.any():
            break
        lab = int(np.where(label_left > 0, label_left, np.iinfo(np.int64).max).argmin())
        for grp in order[(remaining[order, lab]) & open_groups[order]]:
            need = want_labels[:, lab]
            best = np.flatnonzero(need == need.max())
            if len(best) > 1:
                best = best[want_items[best] == want_items[best].max()]
            fold = int(rng.choice(best)) if len(best) > 1 else int(best[0])
            assign[grp] = fold
            want_labels[fold] -= counts[grp]
            want_items[fold] -= sizes[grp]
    for grp in order[assign[order] < 0]:
        fold = int(np.argmax(want_items))
        assign[grp] = fold
        want_items[fold] -= sizes[grp]
    return assign


def _fixed_splits(reports: Sequence[Report]) -> Splits:
    out: dict[str, list[Report]] = {n: [] for n in SPLIT_NAMES}
    where: dict[str, str] = {}
    for r in reports:
        name = str(r.attrs.get("split", "")).lower()
        name = {"validation": "val", "valid": "val", "dev": "val"}.get(name, name)
        if name not in out:
            raise DpradError(
                f"report '{r.id}': split '{r.attrs.get('split')}' is not one of train, val, test"
            )
        if where.setdefault(r.patient_id, name) != name:
            raise DpradError(
                f"report '{r.id}': patient '{r.patient_id}' is in split '{name}' and in '{where[r.patient_id]}'"
            )
        out[name].append(r)
    return Splits(**out)
