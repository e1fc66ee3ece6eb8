"""Empirical privacy audit: the one-run canary bound, membership inference, LiRA and RMIA."""

from dprad.audit.bound import audit_ceiling, epsilon_lower_bound, p_value
from dprad.audit.canaries import CanaryAudit, CanarySet, canary_section, make_canaries, score_canaries
from dprad.audit.run_audit import audit_run

__all__ = [
    "CanaryAudit",
    "CanarySet",
    "audit_ceiling",
    "audit_run",
    "canary_section",
    "epsilon_lower_bound",
    "make_canaries",
    "p_value",
    "score_canaries",
]
