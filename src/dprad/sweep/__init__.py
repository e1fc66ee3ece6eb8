"""A privacy-utility sweep: a grid of normal runs (datasets x models x modes x epsilons x seeds), resumable.

:mod:`~dprad.sweep.spec` reads the sweep YAML (its keys are described there), :mod:`~dprad.sweep.plan`
expands it into cells, :mod:`~dprad.sweep.run` runs them and :mod:`~dprad.sweep.results` tabulates them.

Each cell is a normal run directory ``OUT/cells/<cell-id>`` (config.json, privacy.json, metrics.json, ...)
plus ``evaluation.json`` (the test split, with patient-level bootstrap CIs), ``cell.json`` (the cell's
spec, attempts, last error) and ``done.json`` (written last). Re-running skips cells whose ``done.json``,
``privacy.json`` and ``evaluation.json`` exist and whose spec is unchanged; an interrupted cell resumes
from its checkpoint (or evaluates only, when training had finished). ``OUT/results.parquet`` and
``results.csv`` hold one row per cell; ``OUT/selection.json`` says which cells were compared on which data
and what choosing the best of them costs in privacy (:mod:`dprad.privacy.selection`).
"""

from dprad.sweep.plan import Cell, fingerprint, plan_cells
from dprad.sweep.results import RESULT_COLUMNS, result_rows, write_results, write_selection
from dprad.sweep.run import CellTask, SweepResult, run_cell, run_sweep
from dprad.sweep.spec import AuditSpec, DatasetSpec, ModeSpec, SweepConfig
from dprad.sweep.state import CellOutcome, cell_finished

__all__ = [
    "RESULT_COLUMNS",
    "AuditSpec",
    "Cell",
    "CellOutcome",
    "CellTask",
    "DatasetSpec",
    "ModeSpec",
    "SweepConfig",
    "SweepResult",
    "cell_finished",
    "fingerprint",
    "plan_cells",
    "result_rows",
    "run_cell",
    "run_sweep",
    "write_results",
    "write_selection",
]
