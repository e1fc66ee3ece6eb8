"""Public, label-free inputs: the rule teacher's reading of each report, as features that cost no privacy.

The rule teacher (``dprad.labeling.rules``) is a fixed public function of the report text: its per-label
reading (positive / uncertain / negative / not mentioned) depends on no one's labels and on no other
report, so, like the frozen encoder, it is a per-report map and adding it to the model's input spends no
privacy budget. It is a far lower-dimensional and (for labels written by people) far stronger signal than
pooled embedding dimensions.

When the training labels *are* the rule teacher's output, the prior only teaches the student to copy its
teacher; its value is when labels come from people, an LLM, or codes.

Combining with the encoder features (``combine_features``): the encoder rows from
``dprad.nn.inputs.head_inputs`` have norm exactly 1 and the one-hot block has norm sqrt(L) (one reading per
label). The block is scaled to norm ``prior_norm`` and the concatenated row divided by
sqrt(1 + prior_norm**2), so every row has norm exactly 1: per-example gradients of a linear head stay on
the same scale as without priors (DP-SGD's clipping norm keeps its meaning) and AdaSSP's row bound holds.
``PRIOR_NORM`` is the default relative weight, chosen by ``bench/head_trainers.py`` on dprad's public
synthetic corpus and on validation splits (see that bench's output); it lives with the classifier
(``dprad.nn.inputs``), which reads the rows the same way after LP-FT.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema
from dprad.errors import DpradError
from dprad.labeling.rules import RuleSet, label_text, rules_for
from dprad.nn.inputs import PRIOR_NORM

# column order of each label's one-hot block
READINGS = ("positive", "uncertain", "negative", "not_mentioned")
NOT_MENTIONED = 2  # rule_readings' code for a label the report does not mention
# one-hot column, indexed by reading + 1: -1 -> uncertain, 0 -> negative, 1 -> positive, 2 -> not mentioned
_COLUMN = np.array([1, 2, 0, 3])


def has_rule_vocabulary(schema: LabelSchema) -> bool:
    """True when the rule teacher can read reports for this schema (built-in, or ``terms`` for every label)."""
    try:
        rules_for(schema)
    except DpradError:
        return False
    return True


def rule_readings(texts: Sequence[str], schema: LabelSchema) -> np.ndarray:
    """The rule teacher's reading of each report: (N, L) int8 with 1 / -1 / 0, and 2 for not mentioned."""
    rules = rules_for(schema)
    out = np.full((len(texts), len(schema.labels)), NOT_MENTIONED, dtype=np.int8)
    for i, text in enumerate(texts):
        for j, v in _read(text, rules, schema).items():
            out[i, j] = v
    return out


def _read(text: str, rules: RuleSet, schema: LabelSchema) -> dict[int, int]:
    return {schema.labels.index(k): v for k, v in label_text(text, rules).items()}


def rule_prior_features(texts: Sequence[str], schema: LabelSchema) -> np.ndarray:
    """One-hot rule readings: (N, 4L) float32, block j = label j's (positive, uncertain, negative, not
    mentioned). Computed from the text alone: no labels are read."""
    readings = rule_readings(texts, schema)  # (N, L)
    cols = _COLUMN[readings.astype(np.int64) + 1]  # (N, L) column of each reading
    n, n_labels = readings.shape
    out = np.zeros((n, n_labels, len(READINGS)), dtype=np.float32)  # (N, L, 4)
    out[np.arange(n)[:, None], np.arange(n_labels)[None, :], cols] = 1.0
    return out.reshape(n, n_labels * len(READINGS))


def report_prior_features(reports: Sequence[Report], schema: LabelSchema) -> np.ndarray:
    """:func:`rule_prior_features` of reports: (N, 4L). Only ``report.text`` is read, never its labels."""
    return rule_prior_features([r.text for r in reports], schema)


def rule_predictions(prior: np.ndarray) -> np.ndarray:
    """The rule teacher's own binary prediction from the one-hot prior: positive or uncertain -> 1 (N, L)."""
    blocks = prior.reshape(len(prior), -1, len(READINGS))  # (N, L, 4)
    return (blocks[:, :, 0] + blocks[:, :, 1]).astype(np.float32)


def prior_block(texts: Sequence[str], schema: LabelSchema, *, prior_norm: float = PRIOR_NORM) -> np.ndarray:
    """The rule readings as a separate input block for encoder modes: (N, 4L) one-hot rows scaled to norm
    ``prior_norm``, read by the classification head next to the pooled encoder output."""
    one_hot = rule_prior_features(texts, schema)
    return (one_hot * (prior_norm / np.sqrt(max(len(schema), 1)))).astype(np.float32)


def combine_features(
    encoder_x: np.ndarray, prior: np.ndarray | None, *, prior_norm: float = PRIOR_NORM
) -> np.ndarray:
    """[encoder (N, H) | prior (N, 4L)] with every row of norm exactly 1 when encoder rows have norm 1.

    ``prior`` None (a schema without vocabulary) returns ``encoder_x`` unchanged.
    """
    if prior is None:
        return encoder_x.astype(np.float32)
    if len(prior) != len(encoder_x):
        raise DpradError(f"{len(encoder_x)} encoder rows but {len(prior)} prior rows")
    if prior_norm < 0 or not np.isfinite(prior_norm):
        raise DpradError(f"--prior-norm {prior_norm} must be a finite number >= 0")
    n_labels = prior.shape[1] // len(READINGS)
    block = prior * (prior_norm / np.sqrt(max(n_labels, 1)))  # (N, 4L), row norm = prior_norm
    return (np.concatenate([encoder_x, block], axis=1) / np.sqrt(1.0 + prior_norm**2)).astype(np.float32)


__all__ = [
    "NOT_MENTIONED",
    "PRIOR_NORM",
    "READINGS",
    "combine_features",
    "has_rule_vocabulary",
    "report_prior_features",
    "rule_predictions",
    "rule_prior_features",
    "rule_readings",
]
