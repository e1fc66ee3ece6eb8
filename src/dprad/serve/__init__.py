"""Serving a trained run over HTTP: API keys, query budgets, an audit log without report text."""

from __future__ import annotations

from dprad.serve.app import ServeLimits, create_app
from dprad.serve.auditlog import AuditLog, summarize
from dprad.serve.budgets import BudgetStore
from dprad.serve.keys import ApiKey, KeyRing, load_keys

__all__ = [
    "ApiKey",
    "AuditLog",
    "BudgetStore",
    "KeyRing",
    "ServeLimits",
    "create_app",
    "load_keys",
    "summarize",
]
