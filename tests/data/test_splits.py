from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dprad import CHEXPERT14, Report, SynthConfig, generate_reports, label_matrix, split_by_patient


@settings(max_examples=40, deadline=None)
@given(
    n_patients=st.integers(1, 60),
    reports_per_patient=st.lists(st.integers(1, 8), min_size=60, max_size=60),
    seed=st.integers(0, 10_000),
    train=st.floats(0.1, 0.9),
)
def test_no_patient_in_two_splits(
    n_patients: int, reports_per_patient: list[int], seed: int, train: float
) -> None:
    rng = np.random.default_rng(seed)
    reports = []
    for p in range(n_patients):
        for s in range(reports_per_patient[p]):
            labels = {lab: 1 for lab in CHEXPERT14.labels if rng.random() < 0.2}
            reports.append(Report(id=f"{p}-{s}", patient_id=f"p{p}", text="x", labels=labels))
    rest = 1 - train
    splits = split_by_patient(reports, CHEXPERT14, fractions=(train, rest / 2, rest / 2), seed=seed)
    assert splits.patient_overlap() == set()
    assert sorted(r.id for reps in splits.as_dict().values() for r in reps) == sorted(r.id for r in reports)


def test_split_is_deterministic_stratified_and_sized() -> None:
    reports = generate_reports(SynthConfig(n_patients=1500, seed=3))
    a = split_by_patient(reports, CHEXPERT14, seed=7)
    b = split_by_patient(reports, CHEXPERT14, seed=7)
    c = split_by_patient(reports, CHEXPERT14, seed=8)
    assert [r.id for r in a.test] == [r.id for r in b.test]
    assert [r.id for r in a.test] != [r.id for r in c.test]
    n = len(reports)
    for reps, frac in zip((a.train, a.val, a.test), (0.7, 0.1, 0.2), strict=True):
        assert abs(len(reps) / n - frac) < 0.02
    # every label's positives are spread close to the fractions (stratification), rare ones included
    y_all = label_matrix(reports, CHEXPERT14)[0].sum(0)
    y_test = label_matrix(a.test, CHEXPERT14)[0].sum(0)
    share = y_test / np.maximum(y_all, 1)
    assert np.all(np.abs(share - 0.2) < 0.06), dict(zip(CHEXPERT14.labels, share.round(3), strict=True))
    # a random patient split is visibly worse on the rarest labels: stratification does something
    assert y_test.min() > 0
