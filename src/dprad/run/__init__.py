"""A run as data: the plan it was trained from (:class:`RunPlan`) and, once finished, its directory read
back typed (:class:`RunRecord`): the one place a run's files are parsed."""

from dprad.run.record import RunRecord, Thresholds, open_run

__all__ = ["RunRecord", "Thresholds", "open_run"]
