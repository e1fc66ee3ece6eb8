"""Patient-level Poisson sampling: the unit the accountant protects is the patient, not the report.

Each step, every *patient* joins the logical batch independently with probability ``sample_rate``, and
brings all of their reports with them. With the patient's reports summed into one gradient that is clipped
to C (``dprad.privacy.dp_step.private_step(..., groups=...)``), this is DP-SGD over patients: the accountant's
n is the number of patients and q the patient sample rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dprad.errors import DpradError


def patient_groups(patient_ids: Sequence[str]) -> np.ndarray:
    """Patient ids, one per report -> (N,) int64 patient index 0..P-1, in order of first appearance."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(p, len(index)) for p in patient_ids], dtype=np.int64)


class PatientPoissonSampler:
    """Poisson sampling over patients; ``sample()`` returns the (sorted) report indices of the sampled patients.

    ``groups[i]`` is the patient index of report ``i`` (any non-negative integers; ``patient_groups`` makes
    them). Batches vary in size (in patients and in reports) and can be empty, as the accountant assumes.
    """

    name = "poisson-patient"

    def __init__(self, groups: np.ndarray, sample_rate: float, rng: np.random.Generator) -> None:
        groups = np.asarray(groups)
        if groups.ndim != 1 or not np.issubdtype(groups.dtype, np.integer):
            raise DpradError(f"patient groups must be a 1-D integer array, got {groups.dtype} {groups.shape}")
        if len(groups) and int(groups.min()) < 0:
            raise DpradError("patient groups must be non-negative integers")
        if not 0.0 <= sample_rate <= 1.0:
            raise DpradError(f"sample rate {sample_rate} must lie in [0, 1]")
        self.groups, self.sample_rate, self.rng = groups, sample_rate, rng
        self.patients, self._dense = np.unique(groups, return_inverse=True)  # (P,), (N,) dense 0..P-1

    @property
    def n(self) -> int:
        """The number of privacy units (patients): the accountant's n."""
        return len(self.patients)

    @property
    def n_reports(self) -> int:
        return len(self.groups)

    def sample(self) -> np.ndarray:
        chosen = self.rng.random(self.n) < self.sample_rate  # (P,) one coin per patient
        return np.flatnonzero(chosen[self._dense])  # (N_batch,) sorted report indices
