"""Noise calibration, before and after the coarse-then-confirm PLD search, on the same events in one run.

    python bench/calibration_speed.py

For a one-phase run (DP-SGD + DP thresholds) and a two-phase LP-FT run (probe + fine-tuning +
thresholds) at IU's sizes: seconds per calibration, the number of accountant evaluations, and the
full-precision epsilon each sigma spends (both must be at most the target and within 1% of it).
"""

from __future__ import annotations

import time
from typing import Any

import dp_accounting
from dp_accounting import pld

from dprad.privacy import accounting
from dprad.privacy.accounting import calibrate_noise, dpsgd_event, epsilon_of


def counted(fn: Any) -> tuple[Any, list[int]]:
    calls = [0]

    def wrapped(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        return fn(*a, **k)

    return wrapped, calls


def main() -> None:
    delta = 1e-4
    cases = {
        "one phase (IU head, eps 1)": dict(
            sample_rate=0.39, steps=103, releases=(dp_accounting.GaussianDpEvent(31.0),), target=1.0
        ),
        "two phases (IU LP-FT, eps 10)": dict(
            sample_rate=0.197,
            steps=31,
            releases=(
                dpsgd_event(noise_multiplier=3.0, sample_rate=0.39, steps=103),
                dp_accounting.GaussianDpEvent(3.4),
            ),
            target=10.0,
        ),
    }
    print(f"{'event':<32} {'search':<14} {'s':>7} {'PLD evals':>9} {'sigma':>9} {'eps (full PLD)':>14}")
    for name, c in cases.items():
        times = {}
        for coarse in (False, True):
            full, calls = counted(pld.PLDAccountant)
            saved = accounting.DP_ACCOUNTANTS["pld"], accounting._coarse_pld
            coarse_fn, coarse_calls = counted(saved[1])
            accounting.DP_ACCOUNTANTS["pld"], accounting._coarse_pld = full, coarse_fn
            tick = time.perf_counter()
            try:
                sigma = calibrate_noise(
                    target_epsilon=c["target"],
                    sample_rate=c["sample_rate"],
                    steps=c["steps"],
                    delta=delta,
                    releases=c["releases"],
                    coarse=coarse,
                )
            finally:
                accounting.DP_ACCOUNTANTS["pld"], accounting._coarse_pld = saved
            times[coarse] = time.perf_counter() - tick
            event = dp_accounting.ComposedDpEvent(
                [
                    dpsgd_event(noise_multiplier=sigma, sample_rate=c["sample_rate"], steps=c["steps"]),
                    *c["releases"],
                ]
            )
            eps = epsilon_of(event, delta=delta)
            label = "coarse+confirm" if coarse else "full (before)"
            evals = f"{calls[0]}+{coarse_calls[0]}c" if coarse else str(calls[0])
            print(f"{name:<32} {label:<14} {times[coarse]:>7.2f} {evals:>9} {sigma:>9.5f} {eps:>14.5f}")
        print(f"{name:<32} speed-up {times[False] / times[True]:.1f}x")


if __name__ == "__main__":
    main()
