"""The head's input rows, in numpy and free of torch: encoder features centred on the public mean and
scaled to unit norm (``head_inputs``), and the relative weight of the public prior block beside them
(``PRIOR_NORM``: ``dprad.priors.combine_features`` builds the rows with it, and the classifier's
``probe_inputs`` reads them the same way after LP-FT)."""

from __future__ import annotations

import numpy as np

PRIOR_NORM = 3.0  # prior block norm relative to the unit-norm encoder block: bench/head_trainers.py stage 2


def head_inputs(features: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Centre on the public mean, then scale every report's feature vector to unit norm: (N, H) -> (N, H)."""
    x = features - center[None, :]
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
