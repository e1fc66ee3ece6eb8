"""Rule priors: one-hot readings of the rule teacher, computed from text only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dprad.data.reports import label_matrix
from dprad.data.schemas import CHEXPERT14, CTRATE18, LabelSchema
from dprad.data.synth import SynthConfig, generate_reports
from dprad.errors import DpradError
from dprad.labeling.rules import label_text, rules_for
from dprad.priors import (
    READINGS,
    combine_features,
    has_rule_vocabulary,
    report_prior_features,
    rule_predictions,
    rule_prior_features,
)


def test_one_hot_matches_the_rule_teacher() -> None:
    texts = [
        "There is a large right pleural effusion. No pneumothorax.",
        "Possible consolidation in the left lower lobe.",
        "Normal chest.",
    ]
    prior = rule_prior_features(texts, CHEXPERT14)
    assert prior.shape == (3, 4 * len(CHEXPERT14)) and prior.dtype == np.float32
    blocks = prior.reshape(3, len(CHEXPERT14), len(READINGS))
    assert (blocks.sum(-1) == 1).all()  # exactly one reading per label
    column = {1: 0, -1: 1, 0: 2}
    for i, text in enumerate(texts):
        read = label_text(text, rules_for(CHEXPERT14))
        for j, lab in enumerate(CHEXPERT14.labels):
            expected = column[read[lab]] if lab in read else 3
            assert blocks[i, j].argmax() == expected
    effusion, ptx, cons = (
        CHEXPERT14.labels.index(x) for x in ("Pleural Effusion", "Pneumothorax", "Consolidation")
    )
    assert blocks[0, effusion, 0] == 1 and blocks[0, ptx, 2] == 1 and blocks[1, cons, 1] == 1
    assert blocks[2, CHEXPERT14.labels.index("Fracture"), 3] == 1
    assert rule_predictions(prior)[0, effusion] == 1 and rule_predictions(prior)[1, cons] == 1
    assert rule_predictions(prior)[0, ptx] == 0


def test_features_ignore_labels() -> None:
    reports = generate_reports(SynthConfig(modality="ct", n_patients=40, seed=7))
    labels = [r.labels for r in reports]
    order = np.random.default_rng(0).permutation(len(reports))
    shuffled = [dataclasses.replace(r, labels=labels[k]) for r, k in zip(reports, order, strict=True)]
    y, _ = label_matrix(reports, CTRATE18)
    y_shuffled, _ = label_matrix(shuffled, CTRATE18)
    assert not np.array_equal(y, y_shuffled)  # the labels really differ
    a, b = report_prior_features(reports, CTRATE18), report_prior_features(shuffled, CTRATE18)
    np.testing.assert_array_equal(a, b)
    # and the features do carry the (true) labels' signal: the rule reading agrees with them
    assert (rule_predictions(a) == y).mean() > 0.9


def test_vocabulary_and_user_terms() -> None:
    assert has_rule_vocabulary(CHEXPERT14) and has_rule_vocabulary(CTRATE18)
    bare = LabelSchema(name="mine", labels=("Nodule", "Mass"))
    assert not has_rule_vocabulary(bare)
    with pytest.raises(DpradError):
        rule_prior_features(["a nodule"], bare)
    user = LabelSchema(
        name="mine", labels=("Nodule", "Mass"), terms={"Nodule": ("nodule",), "Mass": ("mass",)}
    )
    assert has_rule_vocabulary(user)
    blocks = rule_prior_features(["A small nodule. No mass."], user).reshape(1, 2, 4)
    assert blocks[0, 0, 0] == 1 and blocks[0, 1, 2] == 1


def test_combined_rows_have_unit_norm() -> None:
    rng = np.random.default_rng(0)
    enc = rng.normal(size=(5, 8))
    enc /= np.linalg.norm(enc, axis=1, keepdims=True)
    prior = rule_prior_features(["Cardiomegaly.", "No effusion.", "", "Edema.", "Fracture?"], CHEXPERT14)
    for s in (0.0, 0.5, 1.0, 4.0):
        x = combine_features(enc, prior, prior_norm=s)
        assert x.shape == (5, 8 + prior.shape[1])
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(
            np.linalg.norm(x[:, 8:], axis=1) / np.linalg.norm(x[:, :8], axis=1), s, rtol=1e-5
        )
    np.testing.assert_array_equal(combine_features(enc, None), enc.astype(np.float32))
    with pytest.raises(DpradError):
        combine_features(enc[:3], prior)
