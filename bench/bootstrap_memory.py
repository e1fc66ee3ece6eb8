"""Patient bootstrap at MIMIC-CXR test size: the whole (B, N) weight matrix vs resamples drawn in blocks.

An evaluation of N = 45,000 test reports (about 13,000 patients), L = 14 labels, B = 1,000 resamples,
on synthetic scores. Side by side in one run: the unblocked path (``patient_weights``: the (B, N) matrix,
then the metrics over all its rows at once) and the blocked one (``patient_resamples``: blocks of a
fixed cell budget, counts from per-patient sums). Each prints its time and its peak traced memory
(tracemalloc sees numpy's buffers), and the two results are checked equal bit for bit.

python bench/bootstrap_memory.py [--reports 45000] [--patients 13000] [--labels 14] [--boot 1000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np


def measure(fn: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], float, float]:
    """(result, seconds, peak MiB traced): timed once without tracing, then traced once."""
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def main() -> None:
    from dprad.metrics.bootstrap import patient_resamples, patient_weights, weighted_label_metrics

    ap = argparse.ArgumentParser()
    ap.add_argument("--reports", type=int, default=45_000)
    ap.add_argument("--patients", type=int, default=13_000)
    ap.add_argument("--labels", type=int, default=14)
    ap.add_argument("--boot", type=int, default=1000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    n, n_labels = a.reports, a.labels
    y = (rng.random((n, n_labels)) < 0.15).astype(np.float32)  # (N, L)
    s = np.clip(y * 0.3 + rng.random((n, n_labels)) * 0.7, 0, 1).astype(np.float32)  # (N, L)
    pred = (s >= 0.5).astype(int)
    mask = (rng.random((n, n_labels)) < 0.95).astype(np.float32)
    pids = [f"p{i}" for i in rng.integers(0, a.patients, size=n)]

    def unblocked() -> dict[str, np.ndarray]:
        w = patient_weights(pids, a.boot, random_state=0)  # (B, N)
        return weighted_label_metrics(y, s, pred, w, mask, cell_budget=w.size)

    def blocked() -> dict[str, np.ndarray]:
        return weighted_label_metrics(y, s, pred, patient_resamples(pids, a.boot, random_state=0), mask)

    print(f"N={n} reports, P<={a.patients} patients, L={n_labels} labels, B={a.boot} resamples")
    results = {}
    for name, fn in (("unblocked (B, N) matrix", unblocked), ("blocked resamples", blocked)):
        results[name], seconds, peak = measure(fn)
        print(f"{name:26s} {seconds:7.1f} s   peak traced {peak:7.0f} MiB")
    a_out, b_out = results.values()
    same = all(np.array_equal(a_out[k], b_out[k], equal_nan=True) for k in a_out)
    print(f"equal bit for bit: {same}")


if __name__ == "__main__":
    main()
