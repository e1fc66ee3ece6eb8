"""Full fine-tuning: every encoder weight trains (under DP the embeddings stay frozen, see below)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dprad.modes.base import ModeDefaults
from dprad.modes.encoder import EncoderMode


class FullMode(EncoderMode):
    name = "full"
    private_defaults = ModeDefaults(epochs=4.0, lr=5e-4, batch_size=512)
    plain_defaults = ModeDefaults(epochs=4.0, lr=5e-5, batch_size=32)

    def adapt(self, encoder: nn.Module) -> nn.Module:
        from dprad.nn.model import freeze_for_dp_full

        if self.plan.private:  # position ids shaped [1, T] break per-sample gradients of the embeddings
            freeze_for_dp_full(encoder)
        return encoder

    def save_encoder(self, model_dir: Path) -> None:
        self.encoder.save_pretrained(str(model_dir / "encoder"))  # type: ignore[operator]

    @classmethod
    def load_encoder(cls, run_dir: Path, model_dir: Path) -> nn.Module:
        from dprad.nn.model import load_encoder

        del model_dir
        return load_encoder(run_dir / "model" / "encoder")
