"""Rendering a study for people: one self-contained HTML report over run directories, and a model card
per run. Reads run directories and arranges what they hold; computes no new metric."""

from dprad.report.html import write_report
from dprad.report.model_card import write_model_card

__all__ = ["write_model_card", "write_report"]
