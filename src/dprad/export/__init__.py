"""``dprad export``: the shareable part of a finished run (the model as safetensors, its base encoder, the
ledger, schema, config, shipped thresholds and a model card, listed in ``MANIFEST.json``), and the safe list
that says what may be in it and why."""

from dprad.export.bundle import export_run
from dprad.export.safe import LEFT_OUT, safe_files

__all__ = ["LEFT_OUT", "export_run", "safe_files"]
