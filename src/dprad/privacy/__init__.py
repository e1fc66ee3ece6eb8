"""Privacy: accountants (by name), the privacy object a run trains with, and the ledger it writes."""

from dprad.privacy.accounting import (
    ACCOUNTANTS,
    RDP_ORDERS,
    Accounting,
    calibrate_noise,
    compute_epsilon,
    default_delta,
    dpsgd_event,
    epsilon_of,
    event_from_dict,
    event_to_dict,
)
from dprad.privacy.ledger import PrivacyLedger, guarantee_statement, library_versions
from dprad.privacy.mechanism import DpSgd, NonPrivate, Privacy

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "Accounting",
    "DpSgd",
    "NonPrivate",
    "Privacy",
    "PrivacyLedger",
    "calibrate_noise",
    "compute_epsilon",
    "default_delta",
    "dpsgd_event",
    "epsilon_of",
    "event_from_dict",
    "event_to_dict",
    "guarantee_statement",
    "library_versions",
]
