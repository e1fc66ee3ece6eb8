"""Before an export shares a guarantee: the ledger's epsilon is recomputed from its own accounting event.

``privacy.json`` is a file anyone with the run directory can edit. An export states the ledger's epsilon
to people who cannot check the run, so it first recomputes that epsilon from the dp-accounting event the
ledger stores (``event``, written by the run from the mechanism it actually ran) under the ledger's own
accountant, and refuses a ledger whose epsilon disagrees or whose numbers are not finite.
"""

from __future__ import annotations

import math
from typing import Any

from dprad.errors import DpradError
from dprad.privacy.accounting import DP_ACCOUNTANTS, compute_epsilon, epsilon_of, event_from_dict
from dprad.privacy.ledger import PrivacyLedger

# how far a ledger's epsilon may be from the one recomputed from its event (the accountants are
# deterministic: the run and the export compute the same number, up to floating-point noise)
RELATIVE_TOLERANCE = 1e-6


def non_finite(obj: Any, where: str = "") -> tuple[str, float] | None:
    """The first number in a JSON value that is NaN or infinite, and its place (e.g. 'parts[1].epsilon')."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "value", obj
    if isinstance(obj, dict):
        items: Any = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    return next((bad for key, v in items if (bad := non_finite(v, key)) is not None), None)


def recomputed_epsilon(ledger: PrivacyLedger, *, source: str) -> float | None:
    """The epsilon of a private ledger's own event under its own accountant (None for a non-private ledger).
    Refused (``DpradError``, one line): a number in the ledger that is not finite, a private ledger without
    an event, an event that cannot be read, or an epsilon more than ``RELATIVE_TOLERANCE`` away from it."""
    bad = non_finite(ledger.to_dict())
    if bad is not None:
        raise DpradError(
            f"{source}: {bad[0]} is {bad[1]!r}, not a finite number: the ledger was edited or is corrupt, and "
            "an export would state a guarantee it does not hold"
        )
    if not ledger.private:
        return None
    if ledger.epsilon is None or ledger.delta is None or not ledger.event:
        raise DpradError(
            f"{source}: a private ledger without an epsilon, a delta and the accounting event they come from: "
            "nothing to recompute its guarantee from (retrain with this version of dprad)"
        )
    try:
        again = _epsilon(ledger.event, delta=ledger.delta, accountant=ledger.accountant or "pld")
    except DpradError as err:
        raise DpradError(f"{source}: {err}") from None
    except Exception as err:  # noqa: BLE001 - an unreadable event is a broken ledger, said in one line
        raise DpradError(
            f"{source}: its accounting event cannot be read ({type(err).__name__}: {err})"
        ) from None
    if not math.isclose(ledger.epsilon, again, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0):
        raise DpradError(
            f"{source}: states epsilon {ledger.epsilon:.6g}, but its own accounting event gives {again:.6g} "
            f"({ledger.accountant} accountant, delta {ledger.delta:.1e}): the ledger was edited or is corrupt, "
            "and an export would state a guarantee it does not hold"
        )
    return again


def _epsilon(event: dict[str, Any], *, delta: float, accountant: str) -> float:
    """The event's epsilon as the run computed it: dp-accounting's accountants for any event; opacus's PRV
    for the one event it accounts (DP-SGD: Poisson-sampled Gaussian steps)."""
    if accountant in DP_ACCOUNTANTS:
        return epsilon_of(event_from_dict(event), delta=delta, accountant=accountant)
    if accountant == "prv" and event.get("type") == "SelfComposedDpEvent":
        sampled = event.get("event") or {}
        gaussian = sampled.get("event") or {}
        if sampled.get("type") == "PoissonSampledDpEvent" and gaussian.get("type") == "GaussianDpEvent":
            return compute_epsilon(
                noise_multiplier=float(gaussian["noise_multiplier"]),
                sample_rate=float(sampled["sampling_probability"]),
                steps=int(event["count"]),
                delta=delta,
                accountant="prv",
            ).epsilon
    raise DpradError(f"the {accountant} accountant cannot recompute an event of type {event.get('type')}")
