"""What LoRA and full fine-tuning share: the encoder runs inside every step, on length-sorted
micro-batches with dynamic padding; a linear head reads the pooled output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dprad.config import RunConfig
from dprad.data.dataset import collate, encode, inference_batches, micro_batches
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema, UncertainPolicy
from dprad.errors import DpradError
from dprad.modes.base import Mode, resolve_rule_prior
from dprad.modes.distributable import Distributable, SplitInputs
from dprad.nn.device import autocast, scoring_tokens
from dprad.nn.loss import loss_per_example

if TYPE_CHECKING:
    from dprad.modes.predictor import Predictor
    from dprad.nn.model import FeatureHead
    from dprad.run import RunRecord

CENTER_FILE = "center.pt"  # LP-FT runs: the public feature centre the head's inputs are centred on


class EncoderMode(Mode, Distributable):
    """A mode that trains (part of) the encoder; subclasses say which part (``adapt``) and how to save it.

    LP-FT (``train.probe``, the default): the stages train the head mode's probe first and hand it over
    with :meth:`start_from` before :meth:`build`; the classifier then reads the probe's inputs with the
    probe's weights, so before the first fine-tuning step (LoRA's B = 0) it computes the probe's logits.
    """

    distributable = True

    probe_head: FeatureHead | None = None

    @classmethod
    def resolve(cls, cfg: RunConfig, *, schema: LabelSchema | None) -> RunConfig:
        from dataclasses import replace

        from dprad.modes.base import resolve_public_warm_start

        probe = cfg.train.probe is not False
        if cfg.model.encoder_runtime != "torch":
            raise DpradError(
                f"--encoder-runtime {cfg.model.encoder_runtime} is for the head mode's frozen encoder; "
                f"--mode {cls.name} trains the encoder in torch (leave --encoder-runtime auto, or torch)"
            )
        if cfg.train.select_epoch and cfg.private:
            raise DpradError(
                "--select-epoch chooses the epoch on the validation reports, a release DP-SGD's ledger does not "
                "account: it is for non-private runs (private runs ship their last step)"
            )
        select = not cfg.private if cfg.train.select_epoch is None else cfg.train.select_epoch
        cfg = cfg.with_(train=replace(cfg.train, probe=probe, select_epoch=select))
        if probe:  # the public warm start is the probe's (phase 1 is the head mode)
            return resolve_rule_prior(resolve_public_warm_start(cfg, schema), schema)
        return super().resolve(cfg, schema=schema)

    def start_from(self, probe_head: FeatureHead) -> None:
        """Phase 2 of LP-FT starts from this trained probe (call before :meth:`build`)."""
        self.probe_head = probe_head

    def adapt(self, encoder: nn.Module) -> nn.Module:
        """Make the right parameters trainable (LoRA: wrap with peft; full: leave or freeze some)."""
        return encoder

    def build(self) -> nn.Module:
        from dprad.local_models import load_tokenizer
        from dprad.nn.model import ReportClassifier, load_encoder

        plan, cfg = self.plan, self.plan.cfg
        self.tokenizer = load_tokenizer(plan.model_dir)
        policy = UncertainPolicy(cfg.data.uncertain_policy)
        self.enc = {
            name: encode(reps, self.tokenizer, plan.schema, max_length=cfg.model.max_length, policy=policy)
            for name, reps in plan.splits.as_dict().items()
        }
        # on the device before the privacy object hooks it (opacus#820: parameters moved after wrapping
        # stop receiving per-sample gradients)
        self.encoder = self.adapt(load_encoder(Path(plan.model_dir)).to(self.device))
        self.prior: dict[str, np.ndarray] | None = None  # split -> (N, 4L) public rule readings
        if cfg.train.rule_prior:
            from dprad.priors import prior_block

            self.prior = {
                name: prior_block([r.text for r in reps], plan.schema)
                for name, reps in plan.splits.as_dict().items()
            }
            self.notes.append(
                "rule prior: the rule teacher's reading of each report (a public function of its text, "
                "no privacy cost) is read by the classification head beside the pooled encoder output"
            )
        probe = self.probe_head
        self.model = ReportClassifier(
            self.encoder,
            len(plan.schema),
            pooling=cfg.model.pooling,
            prior_dim=self.prior_dim,
            center=None if probe is None else probe.center.numpy(),  # type: ignore[operator]
        ).to(self.device)
        if probe is not None:
            self.model.head.load_state_dict(probe.head.state_dict())
            self.notes.append(
                "LP-FT: fine-tuning started from the trained linear probe (phase 1: the head mode's private "
                "head on frozen features); the head reads the probe's inputs"
            )
        self.model.train()
        return self.model

    @property
    def trainable(self) -> nn.Module:
        return self.model

    # a federation (Distributable, LoRA's: the site refuses --mode full): the trainable parameters travel
    # (adapters and head); the site keeps no inputs, a round encodes its reports again

    def get_parameters(self) -> dict[str, np.ndarray]:
        """The trainable parameters (LoRA adapters and the classification head), name -> array."""
        return {
            n: p.detach().cpu().numpy().copy()
            for n, p in self.trainable.named_parameters()
            if p.requires_grad
        }

    def set_parameters(self, params: Mapping[str, np.ndarray]) -> None:
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
        own = {n for n, p in self.trainable.named_parameters() if p.requires_grad}
        if set(state) != own:
            raise DpradError(
                f"the global model's parameters do not match this site's ({len(state)} vs {len(own)})"
            )
        self.trainable.load_state_dict(state, strict=False)

    def split_inputs(self, split: str) -> SplitInputs:
        return SplitInputs(self.enc[split].targets, self.enc[split].mask)

    def site_inputs(self) -> dict[str, np.ndarray]:
        return {}

    def build_on(self, stored: Mapping[str, np.ndarray]) -> nn.Module:
        del stored  # nothing stored: the encoder runs inside every step
        return self.build()

    @property
    def prior_dim(self) -> int:
        return 4 * len(self.plan.schema) if self.plan.cfg.train.rule_prior else 0

    def prior_rows(self, idx: np.ndarray) -> torch.Tensor | None:
        """(B, 4L) rule readings of training reports ``idx`` on the device, or None without the prior."""
        if self.prior is None:
            return None
        return torch.from_numpy(self.prior["train"][idx]).to(self.device)

    def optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        t = self.plan.cfg.train
        assert t.lr is not None
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)

    def loss_fn(self, module: nn.Module) -> Any:
        enc, device = self.enc["train"], self.device
        pin = device.type == "cuda"

        def loss(idx: np.ndarray) -> torch.Tensor:
            input_ids, attention, _, _ = collate(enc, idx)  # (B, T), (B, T)
            if pin:
                input_ids, attention = input_ids.pin_memory(), attention.pin_memory()
            input_ids = input_ids.to(device, non_blocking=True)
            attention = attention.to(device, non_blocking=True)
            with autocast(device):
                logits = module(input_ids, attention, self.prior_rows(idx)).float()  # (B, L)
            return loss_per_example(logits, enc.targets[idx], enc.mask[idx])  # (B,)

        return loss

    def batches(self, idx: np.ndarray) -> list[np.ndarray]:
        return micro_batches(idx, self.enc["train"].lengths, max_tokens=self.plan.cfg.train.max_tokens)

    def probs(self, split: str) -> np.ndarray:
        return self.score(self.plan.splits.as_dict()[split])

    def score(self, reports: Sequence[Report]) -> np.ndarray:
        cfg = self.plan.cfg
        was_training = self.model.training
        pred = encoder_predictor(
            self.scoring_model(),
            tokenizer=self.tokenizer,
            schema=self.plan.schema,
            max_length=cfg.model.max_length,
            max_tokens=cfg.train.max_tokens,
            policy=UncertainPolicy(cfg.data.uncertain_policy),
            mode=self.name,
            prior=bool(cfg.train.rule_prior),
        )
        probs = pred.predict(reports).probs  # scoring_model: the whole classifier over token ids
        self.model.train(was_training)
        return probs

    def scoring_model(self) -> nn.Module:
        """The classifier over token ids (the trained module may read cached hidden states instead)."""
        return self.model

    def save(self, model_dir: Path) -> None:
        from dprad import io

        state = dict(self.model.head.state_dict())
        io.write_with(model_dir / "head.pt", lambda tmp: torch.save(state, tmp))
        if self.model.center is not None:  # LP-FT: the head reads centred, normalised features
            center = self.model.center.detach().cpu()
            io.write_with(model_dir / CENTER_FILE, lambda tmp: torch.save(center, tmp))
        self.save_encoder(model_dir)

    def save_encoder(self, model_dir: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load_encoder(cls, run_dir: Path, model_dir: Path) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def load(cls, record: RunRecord, *, feature_cache: bool = False) -> Predictor:
        from dprad.local_models import load_tokenizer

        del feature_cache  # the encoder is the trained model: no frozen features to reuse
        from dprad.nn.model import ReportClassifier
        from dprad.run.files import CENTER_WEIGHTS, HEAD_WEIGHTS, read_weights

        run_dir, model_dir, schema, cfg = record.path, Path(record.model_dir), record.schema, record.config
        prior = bool(cfg.train.rule_prior)
        # an export's weights are safetensors (model/center.safetensors), a run's torch files (center.pt)
        saved_center = read_weights(record.model_path, CENTER_WEIGHTS)
        center = None if saved_center is None else saved_center[CENTER_WEIGHTS].numpy()
        head_state = read_weights(record.model_path, HEAD_WEIGHTS)
        if head_state is None:
            raise DpradError(f"{record.path}: no model/head.safetensors or model/head.pt")
        model = ReportClassifier(
            cls.load_encoder(run_dir, model_dir),
            len(schema),
            pooling=str(cfg.model.pooling),
            prior_dim=4 * len(schema) if prior else 0,
            center=center,
        )
        model.head.load_state_dict(head_state)
        return encoder_predictor(
            model,
            tokenizer=load_tokenizer(str(model_dir)),
            schema=schema,
            max_length=int(cfg.model.max_length),
            max_tokens=int(cfg.train.max_tokens),
            policy=UncertainPolicy(cfg.data.uncertain_policy),
            mode=cls.name,
            prior=prior,
        )


def encoder_predictor(
    model: nn.Module,
    *,
    tokenizer: Any,
    schema: LabelSchema,
    max_length: int,
    max_tokens: int,
    policy: UncertainPolicy,
    mode: str,
    prior: bool = False,
) -> Predictor:
    """Reports -> length-sorted micro-batches -> the whole classifier (+ rule readings) -> logits."""
    from dprad.modes.predictor import Predictor

    def logits(reports: Sequence[Report]) -> tuple[np.ndarray, Any]:
        enc = encode(reports, tokenizer, schema, max_length=max_length, policy=policy)
        out = np.zeros((len(reports), len(schema)), dtype=np.float32)  # (N, L)
        readings = None
        if prior:
            from dprad.priors import prior_block

            readings = torch.from_numpy(prior_block([r.text for r in reports], schema))  # (N, 4L)
        device = next(model.parameters()).device
        model.eval()
        with torch.inference_mode():
            budget = scoring_tokens(max_tokens, device)
            for idx in inference_batches(np.arange(len(enc)), enc.lengths, max_tokens=budget):
                input_ids, attention, _, _ = collate(enc, idx)
                p = None if readings is None else readings[idx].to(device)
                with autocast(device):
                    logits = model(input_ids.to(device), attention.to(device), p)  # (B, L)
                out[idx] = logits.float().cpu().numpy()
        return out, enc

    return Predictor(logits, schema=schema, mode=mode, tokenizer=tokenizer)
