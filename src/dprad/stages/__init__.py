"""The stages of a run: plan -> run directory -> fit -> finish (``train``), and evaluating a finished run."""
