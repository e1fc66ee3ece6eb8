"""Number formatting shared by the report and the model card."""

from __future__ import annotations

import math

from dprad.run.results import Interval


def fmt_num(x: float | int | None, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return format(x, spec)


def fmt_interval(iv: Interval, spec: str = ".3f") -> str:
    """'0.812 [0.790, 0.833]', or '0.812 (no CI)' for a point estimate, or '—'."""
    if not iv.known:
        return "—"
    if iv.has_ci:
        return f"{fmt_num(iv.estimate, spec)} [{fmt_num(iv.low, spec)}, {fmt_num(iv.high, spec)}]"
    return f"{fmt_num(iv.estimate, spec)} (no CI)"
