"""Reference models for LiRA and RMIA: the run's own recipe, retrained on random halves of its data.

Head modes: the frozen features are computed once; each reference head is trained on a random half with
the run's hyper-parameters (lr, epochs, batch size, weight decay, public warm start) and, for a private
run, its noise multiplier, clipping norm, sample rate and number of steps (Poisson sampling, DP-SGD via
:func:`dprad.privacy.dp_step.private_step`). A reference head costs seconds on a CPU.

LoRA / full modes: each reference model is a whole training run on its half (fixed ``split`` attributes),
made by the training function the caller passes in (``dprad.stages.train.train``: the modes sit below the
stages and never import them), then scored with :func:`dprad.modes.load_run`; use a tiny model on a CPU.

A mode hands the audit an :class:`AuditView`: its logits on the audit's pool and a way to train
look-alike reference models; the audit never branches on the mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from dprad.data.dataset import PoissonSampler, ShuffleSampler
from dprad.data.reports import Report
from dprad.errors import DpradError
from dprad.nn.loss import loss_per_example
from dprad.nn.model import FeatureHead
from dprad.nn.public import warm_start
from dprad.privacy.dp_step import plain_step, private_step
from dprad.privacy.noise import NoiseSource
from dprad.run import files

if TYPE_CHECKING:
    from dprad.run import RunRecord

PROB_CLIP = 1e-7  # probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] before taking logits


@dataclass(frozen=True)
class HeadRecipe:
    """How the run trained its head, read from config.json and privacy.json."""

    private: bool
    lr: float
    epochs: float
    batch_size: int
    weight_decay: float
    warm_start: bool
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    sample_rate: float | None = None
    steps: int | None = None

    @classmethod
    def from_run(cls, record: RunRecord) -> HeadRecipe:
        t, led = record.config.train, record.ledger
        if led.private and led.noise_multiplier is None:
            raise DpradError(
                f"{record.path / files.PRIVACY}: a private run's reference models need its noise multiplier"
            )
        assert t.lr is not None and t.epochs is not None and t.batch_size is not None
        return cls(
            private=led.private,
            lr=float(t.lr),
            epochs=float(t.epochs),
            batch_size=int(t.batch_size),
            weight_decay=float(t.weight_decay or 0.0),
            warm_start=bool(t.public_warm_start),
            noise_multiplier=led.noise_multiplier if led.private else None,
            max_grad_norm=led.max_grad_norm if led.private else None,
            sample_rate=led.sample_rate if led.private else None,
            steps=int(led.steps) if led.private else None,
        )


@dataclass(frozen=True, eq=False)
class ReferenceModels:
    logits: np.ndarray  # (K, N, L) every reference model's logits on every pool example
    keep: np.ndarray  # (K, N) True where the example was in that model's training half


class TrainFn(Protocol):
    """The training function (``dprad.stages.train.train``), passed down to whoever needs whole runs."""

    def __call__(
        self, cfg: Any, out: str | Path, *, reports: Sequence[Report] | None = None, overwrite: bool = False
    ) -> Any: ...


class References(Protocol):
    """Train k look-alike models on random halves of the audit's pool (targets y / mask (N, L))."""

    def __call__(
        self,
        *,
        k: int,
        rng: np.random.Generator,
        y: np.ndarray,
        mask: np.ndarray,
        on_model: Callable[[int], None] | None = None,
    ) -> ReferenceModels: ...


@dataclass(frozen=True, eq=False)
class AuditView:
    """What the membership audit needs from a run's mode."""

    logits: np.ndarray  # (N, L) the run's own logits on the audit's pool
    references: References  # look-alike models trained with the run's own recipe


def random_halves(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(K, N) membership: for even k every example is in exactly k / 2 models (Carlini et al.), so each
    model trains on about half the examples; odd k: independent coin flips."""
    if k < 1:
        raise DpradError(f"--reference-models {k} must be at least 1")
    if k % 2:
        return rng.random((k, n)) < 0.5
    base = np.repeat(np.array([True, False]), k // 2)[:, None]  # (K, 1)
    return rng.permuted(np.broadcast_to(base, (k, n)).copy(), axis=0)


def _init_head(hidden: int, num_labels: int, generator: torch.Generator) -> FeatureHead:
    """nn.Linear's default initialisation, drawn from an explicit generator."""
    head = FeatureHead(hidden, num_labels)
    bound = 1 / math.sqrt(hidden)
    with torch.no_grad():
        torch.nn.init.uniform_(head.head.weight, -bound, bound, generator=generator)
        torch.nn.init.uniform_(head.head.bias, -bound, bound, generator=generator)
    return head


def train_head(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    recipe: HeadRecipe,
    *,
    rng: np.random.Generator,
    public: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> FeatureHead:
    """Train one head on head inputs x (N, H) with targets / mask (N, L), as the run trained its own.

    ``public``: (x, y, mask) of the public synthetic corpus, for runs that warm-started on it.
    """
    n, hidden = x.shape
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    head = _init_head(hidden, y.shape[1], gen)
    if recipe.warm_start:
        if public is None:
            raise DpradError("the run warm-started its head on the public corpus: pass its features")
        warm_start(head, *public)
    module: torch.nn.Module = head
    if recipe.private:
        from opacus import GradSampleModule

        module = GradSampleModule(head, batch_first=True, loss_reduction="sum")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay)
    xt = torch.from_numpy(np.ascontiguousarray(x))

    def loss_fn(idx: np.ndarray) -> torch.Tensor:
        return loss_per_example(module(xt[idx]), y[idx], mask[idx])  # (B,)

    if recipe.private:
        assert recipe.sample_rate and recipe.steps and recipe.noise_multiplier is not None
        assert recipe.max_grad_norm is not None
        sampler = PoissonSampler(n, recipe.sample_rate, rng)
        # the auditor's simulated run: its noise need not be secret (it is never shipped), only independent
        noise = NoiseSource.from_seed(int(rng.integers(2**62))).stream("reference")
        for _ in range(recipe.steps):
            idx = sampler.sample()
            private_step(
                params,
                optimizer,
                [idx] if len(idx) else [],
                loss_fn,
                max_grad_norm=recipe.max_grad_norm,
                noise_multiplier=recipe.noise_multiplier,
                expected_batch_size=recipe.sample_rate * n,
                noise=noise,
            )
    else:
        batch = min(recipe.batch_size, n)
        shuffle = ShuffleSampler(n, batch, rng)
        for _ in range(max(1, round(recipe.epochs * n / batch))):
            idx = shuffle.sample()
            plain_step(params, optimizer, [idx], loss_fn, batch_size=len(idx))
    head.eval()
    return head


def head_reference_models(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    recipe: HeadRecipe,
    *,
    k: int,
    rng: np.random.Generator,
    public: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    on_model: Callable[[int], None] | None = None,
) -> ReferenceModels:
    """k heads, each trained on a random half of the pool (x (N, H), y, mask (N, L)), scored on all of it."""
    keep = random_halves(len(x), k, rng)  # (K, N)
    logits = np.zeros((k, *y.shape), dtype=np.float32)  # (K, N, L)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    for j in range(k):
        idx = np.flatnonzero(keep[j])
        head = train_head(x[idx], y[idx], mask[idx], recipe, rng=rng, public=public)
        with torch.inference_mode():
            logits[j] = head(xt).numpy()
        if on_model is not None:
            on_model(j + 1)
    return ReferenceModels(logits=logits, keep=keep)


def probs_to_logits(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, np.float64), PROB_CLIP, 1 - PROB_CLIP)
    return np.log(p) - np.log1p(-p)


def run_reference_models(
    record: RunRecord,
    pool: Sequence[Report],
    *,
    k: int,
    rng: np.random.Generator,
    work_dir: str | Path,
    train_fn: TrainFn,
    on_model: Callable[[int], None] | None = None,
) -> ReferenceModels:
    """LoRA / full modes: k whole training runs (the run's config; a private run keeps its noise multiplier),
    each on a random half of ``pool``, made by ``train_fn`` under ``work_dir`` and scored on the whole pool."""
    from dprad.config import PrivacyConfig
    from dprad.modes import load_run

    cfg = record.config
    cfg = cfg.with_(data=replace(cfg.data, schema=str(record.path / files.SCHEMA)))
    if record.ledger.private:
        if record.ledger.noise_multiplier is None:
            raise DpradError(
                f"{record.path / files.PRIVACY}: a private run's reference models need its noise multiplier"
            )
        cfg = cfg.with_(
            privacy=PrivacyConfig(
                noise_multiplier=float(record.ledger.noise_multiplier),
                max_grad_norm=cfg.privacy.max_grad_norm,
                accountant=cfg.privacy.accountant,
                force_delta=True,
            )
        )
    keep = random_halves(len(pool), k, rng)
    logits: list[np.ndarray] = []
    for j in range(k):
        half = [
            replace(r, attrs={**r.attrs, "split": "train"})
            for r, inside in zip(pool, keep[j], strict=True)
            if inside
        ]
        seed = int(rng.integers(2**31))
        out = Path(work_dir) / f"ref-{j:03d}"
        run_cfg = cfg.with_(
            train=replace(cfg.train, seed=seed, batch_size=min(cfg.train.batch_size or 1, len(half)))
        )
        train_fn(run_cfg, out, reports=half, overwrite=True)
        logits.append(probs_to_logits(load_run(out).predict(list(pool)).probs).astype(np.float32))
        if on_model is not None:
            on_model(j + 1)
    return ReferenceModels(logits=np.stack(logits), keep=keep)  # (K, N, L)


__all__ = [
    "AuditView",
    "HeadRecipe",
    "ReferenceModels",
    "TrainFn",
    "head_reference_models",
    "probs_to_logits",
    "random_halves",
    "run_reference_models",
    "train_head",
]
