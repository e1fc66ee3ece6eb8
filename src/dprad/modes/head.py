"""Head mode: a linear head on frozen encoder features (mean-pooled, centred on the public corpus's mean,
L2-normalised). One feature pass, then every step is a (B, D) x (D, L) product: seconds per run.

The frozen encoder is a fixed per-report map that never saw the training reports, so DP-SGD on the head
protects the reports exactly as DP-SGD on the whole model would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dprad.config import RunConfig
from dprad.data.dataset import encode
from dprad.data.reports import Report, label_matrix
from dprad.data.schemas import LabelSchema, UncertainPolicy
from dprad.errors import DpradError
from dprad.modes.base import Mode, ModeDefaults, resolve_public_warm_start, resolve_rule_prior
from dprad.modes.distributable import Distributable, SplitInputs
from dprad.nn.feature_cache import FeatureStore, cached_features
from dprad.nn.features import encoder_features
from dprad.nn.inputs import head_inputs
from dprad.nn.loss import loss_per_example
from dprad.nn.public import PublicCorpus, public_corpus, warm_start

if TYPE_CHECKING:
    from dprad.modes.predictor import Predictor
    from dprad.modes.reference import AuditView, TrainFn
    from dprad.nn.model import FeatureHead
    from dprad.run import RunRecord


@dataclass(frozen=True)
class Targets:
    """A split's labels as the head trains on them (no token ids: the feature pass tokenises)."""

    targets: np.ndarray  # (N, L)
    mask: np.ndarray  # (N, L)


class HeadMode(Mode, Distributable):
    name = "head"
    # Private: 40 epochs at lr 2 with the rule prior and the public warm start, chosen on the public
    # synthetic corpus and validation splits of both real corpora (bench/head_trainers.py), not on a test
    # split. Non-private: the head converges, so more epochs at a larger step.
    private_defaults = ModeDefaults(epochs=40.0, lr=2.0, batch_size=1024)
    plain_defaults = ModeDefaults(epochs=100.0, lr=10.0, batch_size=1024)

    @classmethod
    def resolve(cls, cfg: RunConfig, *, schema: LabelSchema | None) -> RunConfig:
        from dataclasses import replace

        if cfg.train.probe:
            raise DpradError("--probe (LP-FT) is for --mode lora or full: the head mode is the probe itself")
        if cfg.train.select_epoch:
            raise DpradError("--select-epoch is for --mode lora or full (a head trains to convergence)")
        cfg = cfg.with_(train=replace(cfg.train, probe=False, select_epoch=False))
        return resolve_rule_prior(resolve_public_warm_start(cfg, schema), schema)

    def build(self) -> nn.Module:
        from dprad.encoder_runtime import frozen_encoder, user_cache_dir
        from dprad.local_models import load_tokenizer

        plan, cfg = self.plan, self.plan.cfg
        self.tokenizer = load_tokenizer(plan.model_dir)
        self.encoder = frozen_encoder(
            plan.model_dir,
            runtime=cfg.model.encoder_runtime,
            device=self.device,
            threads=cfg.train.threads,
            cache_dir=user_cache_dir(),
        )  # features on the device (--encoder-runtime);
        # the head itself is a (D, L) matrix and trains on the CPU
        policy = UncertainPolicy(cfg.data.uncertain_policy)
        # split -> targets and mask; no token ids are kept: the feature pass tokenises chunk by chunk
        self.enc = {
            name: Targets(*label_matrix(reps, plan.schema, policy=policy))
            for name, reps in plan.splits.as_dict().items()
        }
        # features go to a store as they are computed, chunk by chunk: --feature-cache (kept, shared by
        # runs), else the run directory's own (deleted when the run finishes); a killed run resumes it
        root = cfg.train.feature_cache or self.feature_dir
        public = public_corpus(
            self.encoder,
            self.tokenizer,
            pooling=cfg.model.pooling,
            max_length=cfg.model.max_length,
            max_tokens=cfg.train.max_tokens,
            model_dir=plan.model_dir,
            cache_dir=root,
        )
        prior = bool(cfg.train.rule_prior)
        self.notes.append(
            f"frozen encoder run on {cfg.model.encoder_runtime} (--encoder-runtime): a fixed public map of each "
            "report that never saw the training reports, so the privacy accounting is the same on every runtime"
        )
        self.center = public.center
        # one feature pass over every report of every split, tokenised chunk by chunk; texts the store
        # holds (other split seeds, sweeps, canaries, reference models, a killed pass) are read back
        everyone = [r for reps in plan.splits.as_dict().values() for r in reps]
        store = None
        if root:
            store = FeatureStore(
                root,
                model_dir=plan.model_dir,
                pooling=cfg.model.pooling,
                max_length=cfg.model.max_length,
                runtime=cfg.model.encoder_runtime,
            )
        raw = cached_features(
            self.encoder,
            self.tokenizer,
            [r.text for r in everyone],
            pooling=cfg.model.pooling,
            max_length=cfg.model.max_length,
            max_tokens=cfg.train.max_tokens,
            store=store,
            progress=self.on_features,
        )  # (N_all, H)
        row = {r.id: i for i, r in enumerate(everyone)}
        self.x = {}  # split -> (N, D) head inputs
        for name, reps in plan.splits.as_dict().items():
            idx = np.array([row[r.id] for r in reps], dtype=np.int64)
            self.x[name] = head_x(raw[idx], self.center, [r.text for r in reps], plan.schema, prior=prior)
        self.head = start_head(cfg, plan.schema, public)
        if self.head.head.in_features != self.x["train"].shape[1]:
            raise RuntimeError("the head's public start does not fit its inputs")
        if prior:
            self.notes.append(
                "rule prior: the rule teacher's reading of each report (a public function of its text, "
                "no privacy cost) is part of the head's input"
            )
        if cfg.train.public_warm_start:
            n_pub = len(public.texts[plan.schema.name])
            self.notes.append(f"head initialised on {n_pub} public synthetic reports (no privacy cost)")
        return self.head

    @property
    def trainable(self) -> nn.Module:
        return self.head

    # a federation (Distributable): the head's state travels, its inputs are stored once at the site

    def get_parameters(self) -> dict[str, np.ndarray]:
        """The head's state: its weights and the public feature centre (a buffer)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.head.state_dict().items()}

    def set_parameters(self, params: Mapping[str, np.ndarray]) -> None:
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
        self.head.load_state_dict(state)

    def split_inputs(self, split: str) -> SplitInputs:
        return SplitInputs(self.enc[split].targets, self.enc[split].mask, features=self.x[split])

    def site_inputs(self) -> dict[str, np.ndarray]:
        """The public centre, and per split the head's input rows, targets and masks: a round then needs
        no encoder."""
        arrays = {"center": np.asarray(self.center)}
        for s in ("train", "val", "test"):
            arrays[f"x_{s}"], arrays[f"y_{s}"], arrays[f"m_{s}"] = (
                self.x[s],
                self.enc[s].targets,
                self.enc[s].mask,
            )
        return arrays

    def build_on(self, stored: Mapping[str, np.ndarray]) -> nn.Module:
        """The head on stored inputs (:meth:`site_inputs`): no encoder is loaded."""
        from dprad.nn.model import FeatureHead

        if not stored:
            return self.build()
        a = stored
        self.x = {s: a[f"x_{s}"] for s in ("train", "val", "test")}  # (N, D) each
        self.enc = {s: Targets(targets=a[f"y_{s}"], mask=a[f"m_{s}"]) for s in ("train", "val", "test")}
        self.center = a["center"]
        self.head = FeatureHead(self.x["train"].shape[1], len(self.plan.schema), center=self.center)
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
            prior=bool(cfg.train.rule_prior),
        )

    def save(self, model_dir: Path) -> None:
        from dprad import io

        state = dict(self.head.state_dict())  # the head, plus the public feature centre (a buffer)
        io.write_with(model_dir / "head.pt", lambda tmp: torch.save(state, tmp))

    @classmethod
    def _restore(cls, record: RunRecord) -> tuple[nn.Module, nn.Module, Any]:
        """The run's head (with its public feature centre), its frozen encoder and tokenizer."""
        from dprad.encoder_runtime import frozen_encoder, user_cache_dir
        from dprad.local_models import load_tokenizer
        from dprad.nn.model import FeatureHead
        from dprad.run.files import HEAD_WEIGHTS, read_weights

        # the runtime the run was trained and evaluated with, so a served score is the evaluated one
        encoder = frozen_encoder(
            record.model_dir, runtime=record.config.model.encoder_runtime, cache_dir=user_cache_dir()
        )
        state = read_weights(record.model_path, HEAD_WEIGHTS)  # head.safetensors (an export) or head.pt
        if state is None:
            raise DpradError(f"{record.path}: no model/head.safetensors or model/head.pt")
        in_dim = int(state["head.weight"].shape[1])
        head = FeatureHead(in_dim, len(record.schema), center=state["center"].numpy())  # inputs may be wider
        head.load_state_dict(state)
        return head.eval(), encoder, load_tokenizer(record.model_dir)

    @classmethod
    def kept_store(cls, record: RunRecord) -> FeatureStore | None:
        """The run's ``--feature-cache`` store when it named one and it is still there, else None (a run's
        own store is deleted when it finishes; an export names none)."""
        cfg = record.config
        root = cfg.train.feature_cache
        if not root or not Path(root).is_dir():
            return None
        return FeatureStore(
            root,
            model_dir=record.model_dir,
            pooling=str(cfg.model.pooling),
            max_length=int(cfg.model.max_length),
            runtime=cfg.model.encoder_runtime,
        )

    @classmethod
    def load(cls, record: RunRecord, *, feature_cache: bool = False) -> Predictor:
        head, encoder, tokenizer = cls._restore(record)
        cfg = record.config
        return head_predictor(
            head,
            encoder,
            tokenizer=tokenizer,
            schema=record.schema,
            pooling=str(cfg.model.pooling),
            max_length=int(cfg.model.max_length),
            max_tokens=int(cfg.train.max_tokens),
            policy=UncertainPolicy(cfg.data.uncertain_policy),
            prior=bool(cfg.train.rule_prior),
            store=cls.kept_store(record) if feature_cache else None,
        )

    @classmethod
    def audit_view(
        cls,
        record: RunRecord,
        pool: Sequence[Report],
        *,
        train_fn: TrainFn | None = None,
        work_dir: Path | None = None,
    ) -> AuditView:
        """Features computed once; each reference head trains on them with the run's own recipe (noise,
        clipping, sampling and public warm start included): seconds per reference model."""
        from dprad.modes.reference import AuditView, HeadRecipe, ReferenceModels, head_reference_models

        del train_fn, work_dir  # a head's reference models need no whole runs
        head, encoder, tokenizer = cls._restore(record)
        cfg, schema = record.config, record.schema
        pooling, max_length, max_tokens = (
            str(cfg.model.pooling),
            int(cfg.model.max_length),
            int(cfg.train.max_tokens),
        )
        prior, center = bool(cfg.train.rule_prior), head.center.numpy()  # type: ignore[operator]
        # the pool's features: read back from the run's --feature-cache where training wrote them
        raw = cached_features(
            encoder,
            tokenizer,
            [r.text for r in pool],
            pooling=pooling,
            max_length=max_length,
            max_tokens=max_tokens,
            store=cls.kept_store(record),
        )  # (N, H)
        x = head_x(raw, center, [r.text for r in pool], schema, prior=prior)  # (N, D)
        with torch.inference_mode():
            logits = head(torch.from_numpy(x)).numpy()  # (N, L)

        def references(
            *, k: int, rng: np.random.Generator, y: np.ndarray, mask: np.ndarray, on_model: Any = None
        ) -> ReferenceModels:
            recipe = HeadRecipe.from_run(record)
            public = None
            if recipe.warm_start:
                corpus = public_corpus(
                    encoder, tokenizer, pooling=pooling, max_length=max_length, max_tokens=max_tokens
                )
                if schema.name not in corpus.labelled:
                    raise DpradError(
                        f"the run warm-started on a public corpus dprad has no match for ('{schema.name}')"
                    )
                xp, yp, mp = corpus.labelled[schema.name]
                texts = getattr(corpus, "texts", {}).get(schema.name, [])
                public = (head_x(xp, center, texts, schema, prior=prior), yp, mp)
            return head_reference_models(x, y, mask, recipe, k=k, rng=rng, public=public, on_model=on_model)

        return AuditView(logits=logits, references=references)


def start_head(cfg: RunConfig, schema: LabelSchema, public: PublicCorpus) -> FeatureHead:
    """The head before any private step: ``nn.Linear``'s initialisation from the torch generator as the
    run seeded it (``train.seed``), then the public warm start. A function of ``config.json``, the schema
    and public data only: what the noise-replay audit starts its replay from."""
    from dprad.nn.model import FeatureHead

    prior = bool(cfg.train.rule_prior)
    dim = head_x(np.zeros((1, len(public.center))), public.center, [""], schema, prior=prior).shape[1]
    head = FeatureHead(dim, len(schema), center=public.center)
    if cfg.train.public_warm_start:
        x_pub, y_pub, m_pub = public.labelled[schema.name]
        x_pub = head_x(x_pub, public.center, public.texts[schema.name], schema, prior=prior)
        warm_start(head, x_pub, y_pub, m_pub)
    return head


def head_x(
    raw: np.ndarray, center: np.ndarray, texts: Sequence[str], schema: LabelSchema, *, prior: bool
) -> np.ndarray:
    """The head's input rows: centred, normalised encoder features (N, H), and with ``prior`` the rule
    teacher's one-hot readings (N, 4L) beside them; rows have norm 1 either way."""
    from dprad.priors import combine_features, rule_prior_features

    x = head_inputs(raw, center)
    return combine_features(x, rule_prior_features(texts, schema)) if prior else x


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
    prior: bool,
    store: FeatureStore | None = None,
) -> Predictor:
    """Reports -> frozen features (+ rule readings) -> the head's inputs -> logits. With ``store``, the
    features of reports it holds are read back (and those it lacks are added to it)."""
    from dprad.modes.predictor import Predictor

    center = head.center.numpy()  # type: ignore[operator]

    def logits(reports: Sequence[Report]) -> tuple[np.ndarray, Any]:
        enc = encode(reports, tokenizer, schema, max_length=max_length, policy=policy)
        if store is None:
            feats = encoder_features(encoder, enc, pooling=pooling, max_tokens=max_tokens)  # (N, H)
        else:
            texts = [r.text for r in reports]
            feats = cached_features(
                encoder,
                tokenizer,
                texts,
                pooling=pooling,
                max_length=max_length,
                max_tokens=max_tokens,
                store=store,
            )  # (N, H)
        head.eval()
        with torch.inference_mode():
            x = head_x(feats, center, [r.text for r in reports], schema, prior=prior)
            out = head(torch.from_numpy(x)).numpy()  # (N, L)
        return out, enc

    return Predictor(logits, schema=schema, mode="head", tokenizer=tokenizer)
