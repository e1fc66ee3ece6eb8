"""LoRA mode: low-rank adapters (peft) on the encoder's attention projections, plus the linear head."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dprad.modes.base import ModeDefaults
from dprad.modes.encoder import EncoderMode


class LoraMode(EncoderMode):
    name = "lora"
    private_defaults = ModeDefaults(epochs=6.0, lr=3e-3, batch_size=512)
    plain_defaults = ModeDefaults(epochs=5.0, lr=1e-3, batch_size=32)

    def adapt(self, encoder: nn.Module) -> nn.Module:
        from dprad.model import attach_lora

        lo = self.plan.cfg.lora
        return attach_lora(
            encoder,
            kind=self.plan.model_type,
            r=lo.r,
            alpha=lo.alpha,
            dropout=lo.dropout,
            target_modules=lo.target_modules,
        )

    def save_encoder(self, model_dir: Path) -> None:
        self.encoder.save_pretrained(str(model_dir / "adapter"))  # type: ignore[operator]  # peft adapter

    @classmethod
    def load_encoder(cls, run_dir: Path, model_dir: Path) -> nn.Module:
        from peft import PeftModel

        from dprad.model import load_encoder

        return PeftModel.from_pretrained(load_encoder(model_dir), str(run_dir / "model" / "adapter"))
