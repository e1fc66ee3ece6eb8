"""dprad: differentially private radiology-report classifiers."""

from dprad.data.read import read_reports
from dprad.data.reports import ReadResult, Report, label_matrix
from dprad.data.schemas import CHEXPERT14, CTRATE18, LabelSchema, UncertainPolicy, load_schema
from dprad.data.splits import Splits, split_by_patient
from dprad.data.synth import SynthConfig, generate_reports
from dprad.errors import DpradError

__all__ = [
    "CHEXPERT14",
    "CTRATE18",
    "DpradError",
    "LabelSchema",
    "ReadResult",
    "Report",
    "Splits",
    "SynthConfig",
    "UncertainPolicy",
    "generate_reports",
    "label_matrix",
    "load_schema",
    "read_reports",
    "split_by_patient",
]
__version__ = "0.1.0"
