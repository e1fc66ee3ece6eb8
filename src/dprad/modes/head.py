"""Head mode: a linear head on frozen encoder features (mean-pooled, centred on the public corpus's mean,
L2-normalised). One feature pass, then every step is a (B, D) x (D, L) product: seconds per run.

The frozen encoder is a fixed per-report map that never saw the training reports, so DP-SGD on the head
protects the reports exactly as DP-SGD on the whole model would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dprad.config import RunConfig
from dprad.data.dataset import encode
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema, UncertainPolicy
from dprad.errors import DpradError
from dprad.features import (
    cached_features,
    encoder_features,
    feature_key,
    head_inputs,
    loss_per_example,
    public_corpus,
    warm_start,
)
from dprad.modes.base import Mode, ModeDefaults

if TYPE_CHECKING:
    from dprad.predict import Predictor

SMALL_EPSILON = 4.0  # below it: fewer, noisier-per-step epochs and the public warm start (runbook)


class HeadMode(Mode):
    name = "head"
    private_defaults = ModeDefaults(epochs=100.0, lr=5.0, batch_size=1024)
    plain_defaults = ModeDefaults(epochs=100.0, lr=10.0, batch_size=1024)
    small_eps_defaults = ModeDefaults(epochs=40.0, lr=2.0, batch_size=1024)

    @classmethod
    def defaults(cls, *, private: bool, epsilon: float | None) -> ModeDefaults:
        if private and epsilon is not None and epsilon < SMALL_EPSILON:
            return cls.small_eps_defaults
        return super().defaults(private=private, epsilon=epsilon)

    @classmethod
    def resolve(cls, cfg: RunConfig, *, schema: LabelSchema | None) -> RunConfig:
        from dataclasses import replace

        from dprad.stages.plan import builtin_schema

        t, p = cfg.train, cfg.privacy
        builtin = schema is not None and builtin_schema(schema)
        warm = t.public_warm_start
        if warm is None:
            warm = bool(cfg.private and p.epsilon is not None and p.epsilon < SMALL_EPSILON and builtin)
        elif warm and not builtin:
            raise DpradError(
                f"--public-warm-start needs a built-in schema (chexpert14, ctrate18), not '{schema.name if schema else '?'}'"
            )
        return cfg.with_(train=replace(t, public_warm_start=warm, rule_prior=bool(t.rule_prior)))

    def build(self) -> nn.Module:
        from dprad.local_models import load_tokenizer
        from dprad.model import FeatureHead, load_encoder

        plan, cfg = self.plan, self.plan.cfg
        self.tokenizer = load_tokenizer(plan.model_dir)
        self.encoder = load_encoder(Path(plan.model_dir)).eval()
        policy = UncertainPolicy(cfg.data.uncertain_policy)
        self.enc = {
            name: encode(reps, self.tokenizer, plan.schema, max_length=cfg.model.max_length, policy=policy)
            for name, reps in plan.splits.as_dict().items()
        }
        public = public_corpus(
            self.encoder,
            self.tokenizer,
            pooling=cfg.model.pooling,
            max_length=cfg.model.max_length,
            max_tokens=cfg.train.max_tokens,
        )
        self.center = public.center
        self.x = {}  # split -> (N, D) head inputs
        for name, reps in plan.splits.as_dict().items():
            key = feature_key(
                model_dir=plan.model_dir,
                pooling=cfg.model.pooling,
                max_length=cfg.model.max_length,
                texts=[r.text for r in reps],
            )
            raw = cached_features(
                self.encoder,
                self.enc[name],
                pooling=cfg.model.pooling,
                max_tokens=cfg.train.max_tokens,
                cache_dir=cfg.train.feature_cache,
                key=key,
            )
            self.x[name] = head_inputs(raw, self.center)
        self.head = FeatureHead(self.x["train"].shape[1], len(plan.schema), center=self.center)
        if cfg.train.public_warm_start:
            x_pub, y_pub, m_pub = public.labelled[plan.schema.name]
            warm_start(self.head, head_inputs(x_pub, self.center), y_pub, m_pub)
            self.notes.append(f"head initialised on {len(x_pub)} public synthetic reports (no privacy cost)")
        return self.head

    @property
    def trainable(self) -> nn.Module:
        return self.head

    def optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        # a linear head on fixed features: SGD with momentum (measured better than Adam under DP noise)
        t = self.plan.cfg.train
        assert t.lr is not None
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)

    def loss_fn(self, module: nn.Module) -> Any:
        x, enc = self.x["train"], self.enc["train"]

        def loss(idx: np.ndarray) -> torch.Tensor:
            logits = module(torch.from_numpy(x[idx]))  # (B, L)
            return loss_per_example(logits, enc.targets[idx], enc.mask[idx])  # (B,)

        return loss

    def batches(self, idx: np.ndarray) -> list[np.ndarray]:
        return [idx] if len(idx) else []

    def probs(self, split: str) -> np.ndarray:
        self.head.eval()
        with torch.inference_mode():
            return torch.sigmoid(self.head(torch.from_numpy(self.x[split]))).numpy()

    def score(self, reports: Sequence[Report]) -> np.ndarray:
        return self._predictor().predict(reports).probs

    def _predictor(self) -> Predictor:
        cfg = self.plan.cfg
        return head_predictor(
            self.head,
            self.encoder,
            tokenizer=self.tokenizer,
            schema=self.plan.schema,
            pooling=cfg.model.pooling,
            max_length=cfg.model.max_length,
            max_tokens=cfg.train.max_tokens,
            policy=UncertainPolicy(cfg.data.uncertain_policy),
        )

    def save(self, model_dir: Path) -> None:
        from dprad import io

        state = dict(self.head.state_dict())  # the head, plus the public feature centre (a buffer)
        io.write_with(model_dir / "head.pt", lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, run_dir: Path, config: dict[str, Any], schema: LabelSchema) -> Predictor:
        from dprad.local_models import load_tokenizer
        from dprad.model import FeatureHead, load_encoder

        model_dir = Path(config["derived"]["model_dir"])
        encoder = load_encoder(model_dir).eval()
        state = torch.load(run_dir / "model" / "head.pt", weights_only=True)
        in_dim = int(state["head.weight"].shape[1])
        head = FeatureHead(in_dim, len(schema))
        head.load_state_dict(state)
        return head_predictor(
            head,
            encoder,
            tokenizer=load_tokenizer(str(model_dir)),
            schema=schema,
            pooling=config["model"]["pooling"],
            max_length=int(config["model"]["max_length"]),
            max_tokens=int(config["train"]["max_tokens"]),
            policy=UncertainPolicy(config["data"]["uncertain_policy"]),
        )


def head_predictor(
    head: nn.Module,
    encoder: nn.Module,
    *,
    tokenizer: Any,
    schema: LabelSchema,
    pooling: str,
    max_length: int,
    max_tokens: int,
    policy: UncertainPolicy,
) -> Predictor:
    """Reports -> frozen features -> the head's inputs -> logits."""
    from dprad.predict import Predictor

    center = head.center.numpy()  # type: ignore[operator]

    def logits(reports: Sequence[Report]) -> tuple[np.ndarray, Any]:
        enc = encode(reports, tokenizer, schema, max_length=max_length, policy=policy)
        feats = encoder_features(encoder, enc, pooling=pooling, max_tokens=max_tokens)  # (N, H)
        head.eval()
        with torch.inference_mode():
            out = head(torch.from_numpy(head_inputs(feats, center))).numpy()  # (N, L)
        return out, enc

    return Predictor(logits, schema=schema, mode="head", tokenizer=tokenizer)
