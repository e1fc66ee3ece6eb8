"""The run directory's life cycle: open (fresh, resume or refuse), checkpoint, save, close."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from dprad import io
from dprad.errors import DpradError
from dprad.privacy.noise import NoiseSource
from dprad.run.files import CHECKPOINT, CONFIG, NOISE_KEY, PRIVACY, RUN_FILES, as_written, read_object


class RunDir:
    """A self-describing run directory: ``config.json`` first, the rest when the run finishes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoint = self.path / CHECKPOINT
        # the run's secret DP key, owner-only, beside the checkpoint and deleted with it: a killed run
        # resumes with the same draws; a finished run (and so every export) holds no trace of it
        self.noise_key = self.path / NOISE_KEY
        # frozen-encoder features of the run's reports (without --feature-cache), written chunk by chunk
        # as the pass goes: as sensitive as the reports, kept for a resume and deleted with the checkpoint
        self.features = self.path / "features"

    def open(self, config: dict[str, Any], *, overwrite: bool) -> bool:
        """Prepare the directory for ``config``; True when an interrupted run of it will resume."""
        previous = None
        if (self.path / CONFIG).exists():
            previous = read_object(self.path / CONFIG)
            finished = (self.path / PRIVACY).exists() and not self.checkpoint.exists()
            if overwrite:
                self.checkpoint.unlink(missing_ok=True)
            elif finished:
                raise DpradError(
                    f"{self.path}: already holds a finished run (pass --overwrite to replace it)"
                )
            elif previous != as_written(config):
                raise DpradError(
                    f"{self.path}: holds a checkpoint of a different config (pass --overwrite or another --out)"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        resume = self.checkpoint.exists()
        if not resume:  # a fresh start: no file of an earlier run may outlive it
            self.noise_key.unlink(missing_ok=True)
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / "model", ignore_errors=True)
            if previous != as_written(config):  # a killed feature pass of this same config resumes
                shutil.rmtree(self.features, ignore_errors=True)
        io.write_json(self.path / CONFIG, config)
        return resume

    @property
    def model_dir(self) -> Path:
        d = self.path / "model"
        d.mkdir(exist_ok=True)
        return d

    def write_json(self, name: str, obj: Any) -> None:
        io.write_json(self.path / name, obj)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        io.write_with(self.checkpoint, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> dict[str, Any]:
        # on the CPU: load_state_dict copies onto each parameter's device (under torchrun rank 0 sends it on)
        return dict(torch.load(self.checkpoint, map_location="cpu", weights_only=False))

    def noise(self, noise_seed: int | None) -> NoiseSource:
        """The run's DP randomness: from the stated seed, else the secret key of the interrupted run this
        directory resumes, else a new secret key (written owner-only, for a resume after a kill)."""
        if noise_seed is not None:
            return NoiseSource.from_seed(noise_seed)
        if self.checkpoint.exists() and self.noise_key.exists():
            return NoiseSource.load(self.noise_key)
        source = NoiseSource.secret()
        source.save(self.noise_key)
        return source

    def close(self) -> None:
        self.checkpoint.unlink(missing_ok=True)
        self.noise_key.unlink(missing_ok=True)
        shutil.rmtree(self.features, ignore_errors=True)
