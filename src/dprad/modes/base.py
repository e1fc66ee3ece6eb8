"""What a training mode is: a strategy that builds the trainable model for a plan, feeds the loop its
losses and micro-batches, scores splits, saves itself and loads back. Privacy is not a mode's business:
the privacy object wraps whatever module the mode builds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from dprad.config import RunConfig
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema
from dprad.errors import DpradError

if TYPE_CHECKING:
    from dprad.modes.predictor import Predictor
    from dprad.modes.reference import AuditView, TrainFn
    from dprad.run import RunRecord
    from dprad.run.plan import RunPlan


@dataclass(frozen=True)
class ModeDefaults:
    """Hyper-parameters a mode uses when the user leaves them to dprad (see the runbook, docs/how-to/choosing.md)."""

    epochs: float
    lr: float
    batch_size: int
    max_grad_norm: float = 1.0


def resolve_rule_prior(cfg: RunConfig, schema: LabelSchema | None) -> RunConfig:
    """--rule-prior: on by default wherever the schema has rule vocabulary (built-in or user terms)."""
    from dataclasses import replace

    from dprad.priors import has_rule_vocabulary

    vocabulary = schema is not None and has_rule_vocabulary(schema)
    prior = cfg.train.rule_prior
    if prior is None:
        prior = vocabulary
    elif prior and not vocabulary:
        raise DpradError(
            f"--rule-prior needs rule vocabulary: schema '{schema.name if schema else '?'}' has no 'terms' for its labels"
        )
    return cfg.with_(train=replace(cfg.train, rule_prior=prior))


def resolve_public_warm_start(cfg: RunConfig, schema: LabelSchema | None) -> RunConfig:
    """--public-warm-start of a head (or an LP-FT probe): on by default for private runs with a built-in
    schema, the only schemas dprad has public labelled data for."""
    from dataclasses import replace

    from dprad.data.schemas import builtin_schema

    builtin = schema is not None and builtin_schema(schema)
    warm = cfg.train.public_warm_start
    if warm is None:
        warm = bool(cfg.private and builtin)
    elif warm and not builtin:
        raise DpradError(
            f"--public-warm-start needs a built-in schema (chexpert14, ctrate18), not '{schema.name if schema else '?'}'"
        )
    return cfg.with_(train=replace(cfg.train, public_warm_start=warm))


class Mode(ABC):
    """One way to train: head on frozen features, LoRA, full fine-tuning."""

    name: ClassVar[str]
    # several processes (torchrun) can share its DP-SGD steps: fine-tuning modes, not a head on features
    distributable: ClassVar[bool] = False
    private_defaults: ClassVar[ModeDefaults]
    plain_defaults: ClassVar[ModeDefaults]

    @classmethod
    def defaults(cls, *, private: bool, epsilon: float | None) -> ModeDefaults:
        del epsilon
        return cls.private_defaults if private else cls.plain_defaults

    @classmethod
    def resolve(cls, cfg: RunConfig, *, schema: LabelSchema | None) -> RunConfig:
        """Resolve the mode's own choices (and refuse settings it cannot honour) while planning."""
        if cfg.train.public_warm_start:
            raise DpradError(
                f"--public-warm-start applies to head modes and LP-FT probes, not --mode {cls.name} --no-probe"
            )
        return resolve_rule_prior(cfg, schema)

    def __init__(self, plan: RunPlan, *, notes: list[str]) -> None:
        from dprad.nn.device import resolve_device

        self.plan = plan
        self.notes = notes  # the run's notes: a mode appends what a reader of the run should know
        self.device = resolve_device(plan.cfg.train.device)
        # where a mode on frozen features keeps them while the run lasts (the run directory sets it), and
        # the feature pass's progress hook (reports done, reports to do)
        self.feature_dir: Path | None = None
        self.on_features: Callable[[int, int], None] | None = None

    def start_from(self, probe_head: Any) -> None:
        """LP-FT: start from a trained probe (a head on this run's features); modes that fine-tune an
        encoder override it."""
        raise DpradError(f"--mode {self.name} does not fine-tune from a probe")

    @abstractmethod
    def build(self) -> nn.Module:
        """Load the encoder, prepare the inputs, and return the module whose trainable parameters train."""

    @abstractmethod
    def optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer: ...

    @abstractmethod
    def loss_fn(self, module: nn.Module) -> Any:
        """idx (indices into the training split) -> per-example loss (B,), through ``module``."""

    @abstractmethod
    def batches(self, idx: np.ndarray) -> list[np.ndarray]:
        """Physical micro-batches of one logical batch (memory only: never changes the step's maths)."""

    @abstractmethod
    def probs(self, split: str) -> np.ndarray:
        """(N, L) probabilities for one of the plan's splits."""

    @abstractmethod
    def score(self, reports: Sequence[Report]) -> np.ndarray:
        """(N, L) probabilities for any reports (e.g. audit canaries)."""

    @abstractmethod
    def save(self, model_dir: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, record: RunRecord, *, feature_cache: bool = False) -> Predictor:
        """Rebuild the trained classifier of a finished run of this mode. ``feature_cache``: a frozen
        encoder's features may come from the run's ``--feature-cache`` when it has one (evaluate and audit
        read back what training encoded); serving and predict leave it False and never touch it."""

    @classmethod
    def audit_view(
        cls,
        record: RunRecord,
        pool: Sequence[Report],
        *,
        train_fn: TrainFn | None = None,
        work_dir: Path | None = None,
    ) -> AuditView:
        """The run's logits on the audit's ``pool`` and its reference models. By default each reference
        model is a whole training run on its half, made by ``train_fn`` under ``work_dir``."""
        from dprad.modes.reference import AuditView, ReferenceModels, probs_to_logits, run_reference_models

        logits = probs_to_logits(cls.load(record).predict(list(pool)).probs)  # (N, L)

        def references(
            *, k: int, rng: np.random.Generator, y: np.ndarray, mask: np.ndarray, on_model: Any = None
        ) -> ReferenceModels:
            del y, mask  # whole runs read their targets from the reports
            if train_fn is None:
                raise DpradError(
                    f"reference models of a --mode {cls.name} run are whole training runs: pass train_fn"
                )
            return run_reference_models(
                record,
                pool,
                k=k,
                rng=rng,
                work_dir=work_dir if work_dir is not None else record.path / "audit-reference",
                train_fn=train_fn,
                on_model=on_model,
            )

        return AuditView(logits=logits, references=references)

    @property
    @abstractmethod
    def trainable(self) -> nn.Module: ...
