"""The training loop, private and non-private alike, and the run directory it writes.

Reads top to bottom: prepare data -> resolve defaults -> plan steps and noise -> build the model ->
loop (sample, micro-batch, step, checkpoint) -> save adapter/head, ledger, history, metrics.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dprad import io
from dprad.config import MODES, PRIVATE_MODES, RunConfig
from dprad.data.dataset import Encoded, PoissonSampler, ShuffleSampler, collate, encode, micro_batches
from dprad.data.read import read_reports
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema, UncertainPolicy, load_schema
from dprad.data.splits import Splits, split_by_patient
from dprad.dp_step import plain_step, private_step
from dprad.errors import DpradError
from dprad.features import encoder_features, head_inputs, loss_per_example, public_corpus, warm_start
from dprad.local_models import load_tokenizer, resolve_model_dir
from dprad.model import (
    FeatureHead,
    ReportClassifier,
    attach_lora,
    encoder_type,
    freeze_for_dp_full,
    hidden_size,
    load_encoder,
    resolve_pooling,
    trainable_parameters,
)
from dprad.privacy import (
    PrivacyLedger,
    calibrate_noise,
    compute_epsilon,
    default_delta,
    guarantee_statement,
    library_versions,
)

# Defaults per mode, chosen by measurement on IU X-ray (see the README's runbook):
# (epochs, lr, expected logical batch size, max_grad_norm)
MODE_DEFAULTS: dict[str, tuple[float, float, int, float]] = {
    "dp-head": (100.0, 5.0, 1024, 1.0),  # eps < 4: 40 epochs at lr 2 (fewer steps, less noise per step)
    "head": (100.0, 10.0, 1024, 1.0),
    "dp-lora": (6.0, 3e-3, 512, 1.0),
    "lora": (5.0, 1e-3, 32, 1.0),
    "dp-full": (4.0, 5e-4, 512, 1.0),
    "full": (4.0, 5e-5, 32, 1.0),
}
HEAD_MODES = ("dp-head", "head")
CRITICAL_SENSITIVITY = 0.9  # validation sensitivity targeted by the thresholds of a schema's critical labels
RUN_FILES = ("privacy.json", "metrics.json", "history.json", "schema.json", "splits.json", "notes.json")


@dataclass(frozen=True)
class StepInfo:
    step: int
    steps: int
    epoch: float
    loss: float
    epsilon: float | None
    examples_per_s: float


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    ledger: PrivacyLedger
    metrics: dict[str, Any]


def prepare(cfg: RunConfig, reports: Sequence[Report] | None = None) -> tuple[LabelSchema, Splits, list[str]]:
    """Read, split by patient, and keep only labelled reports for training; notes say what was dropped."""
    notes: list[str] = []
    schema = load_schema(cfg.data.schema) if cfg.data.schema else None
    if reports is None:
        result, schema, _ = read_reports(
            cfg.data.path,
            format=cfg.data.format,
            schema=schema,
            text_col=cfg.data.text_col,
            id_col=cfg.data.id_col,
            patient_col=cfg.data.patient_col,
            split_col=cfg.data.split_col,
            labels_path=cfg.data.labels_path,
        )
        reports = result.reports
        notes += result.notes
        if result.skipped:
            notes.append(f"{len(result.skipped)} reports skipped by the reader (see dprad data inspect)")
    if schema is None:
        raise DpradError("--schema is required when passing reports directly")
    unlabelled = [r for r in reports if r.labels is None]
    if unlabelled:
        notes.append(f"{len(unlabelled)} reports without labels are left out of training and evaluation")
    labelled = [r for r in reports if r.labels is not None]
    splits = split_by_patient(labelled, schema, fractions=cfg.data.fractions, seed=cfg.data.split_seed)
    if not splits.train:
        raise DpradError(f"{cfg.data.path or 'reports'}: the training split is empty")
    y = np.array(
        [[1 if (r.labels or {}).get(lab) in (1, -1) else 0 for lab in schema.labels] for r in splits.train]
    )
    empty = [lab for lab, c in zip(schema.labels, y.sum(0), strict=True) if c == 0]
    if empty:
        raise DpradError(
            f"label(s) {', '.join(repr(x) for x in empty)} of schema '{schema.name}' have no positive report in the "
            f"training split ({len(splits.train)} reports): drop them from the schema or add data"
        )
    return schema, splits, notes


def _builtin_labels(name: str) -> tuple[str, ...]:
    from dprad.data.schemas import BUILTIN_SCHEMAS

    return BUILTIN_SCHEMAS[name].labels if name in BUILTIN_SCHEMAS else ()


def resolve(cfg: RunConfig, *, n_train: int, schema: LabelSchema | None = None) -> RunConfig:
    """Replace every 'let dprad choose' by the value chosen; check the privacy arguments."""
    t, p = cfg.train, cfg.privacy
    wants_dp = p.epsilon is not None or p.noise_multiplier is not None
    mode = t.mode
    if mode not in MODES:
        raise DpradError(f"--mode '{mode}' is not one of {', '.join(MODES)}")
    if mode == "auto":
        # A few thousand reports: a private linear head on frozen features beats private LoRA (runbook).
        mode = ("dp-head" if n_train < 20_000 else "dp-lora") if wants_dp else "lora"
    private = mode in PRIVATE_MODES
    if private:
        if (p.epsilon is None) == (p.noise_multiplier is None):
            raise DpradError(f"--mode {mode} needs exactly one of --epsilon and --noise-multiplier")
        if p.epsilon is not None and not (p.epsilon > 0 and math.isfinite(p.epsilon)):
            raise DpradError(f"--epsilon {p.epsilon} must be a positive number")
        if p.noise_multiplier is not None and not p.noise_multiplier > 0:
            raise DpradError(f"--noise-multiplier {p.noise_multiplier} must be > 0")
        delta = p.delta if p.delta is not None else default_delta(n_train)
        if not 0 < delta < 1:
            raise DpradError(f"--delta {delta} must be in (0, 1)")
        if delta >= 1 / n_train and not p.force_delta:
            raise DpradError(
                f"--delta {delta:g} is >= 1/n = 1/{n_train}: such a delta allows leaking whole reports; "
                "choose a smaller one or pass --force-delta"
            )
        p = replace(p, delta=delta)
    elif wants_dp:
        raise DpradError(f"--mode {mode} is non-private: --epsilon / --noise-multiplier need a dp-* mode")
    epochs, lr, batch, clip = MODE_DEFAULTS[mode]
    small_eps = mode == "dp-head" and p.epsilon is not None and p.epsilon < 4
    if small_eps:
        epochs, lr = 40.0, 2.0
    warm = t.public_warm_start
    if warm is None:
        warm = bool(small_eps and schema is not None and tuple(schema.labels) == _builtin_labels(schema.name))
    elif warm and mode not in HEAD_MODES:
        raise DpradError(f"--public-warm-start applies to head modes, not --mode {mode}")
    t = replace(
        t,
        mode=mode,
        public_warm_start=warm,
        epochs=t.epochs if t.epochs is not None else epochs,
        lr=t.lr if t.lr is not None else lr,
        batch_size=min(t.batch_size if t.batch_size is not None else batch, n_train),
    )
    if private:
        p = replace(p, max_grad_norm=p.max_grad_norm if p.max_grad_norm is not None else clip)
        if not p.max_grad_norm or p.max_grad_norm <= 0:
            raise DpradError(f"--max-grad-norm {p.max_grad_norm} must be > 0")
    assert t.epochs is not None and t.lr is not None and t.batch_size is not None
    if t.epochs <= 0 or t.lr <= 0 or t.batch_size < 1:
        raise DpradError("--epochs, --lr and --batch-size must be positive")
    return cfg.with_(train=t, privacy=p)


def planned_steps(cfg: RunConfig, n_train: int) -> tuple[float, int]:
    """(sample rate q, steps). Poisson: q = batch / n and an epoch is 1/q steps."""
    assert cfg.train.batch_size is not None and cfg.train.epochs is not None
    q = cfg.train.batch_size / n_train
    return q, max(1, round(cfg.train.epochs / q))


def check_sampler(sampler: object, *, private: bool) -> None:
    """The accountant assumes Poisson sampling: a private run with any other sampler is refused."""
    if private and not isinstance(sampler, PoissonSampler):
        raise DpradError(
            f"a private run must use Poisson sampling (the accountant assumes it), not '{getattr(sampler, 'name', sampler)}'"
        )


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    reports: Sequence[Report] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train one run into ``out``; resumes from ``out/checkpoint.pt`` when it holds the same config."""
    out = Path(out)
    model_dir = resolve_model_dir(cfg.model.name)  # fail fast on a bad model before reading data
    kind = encoder_type(model_dir)
    schema, splits, notes = prepare(cfg, reports)
    n = len(splits.train)
    cfg = resolve(cfg, n_train=n, schema=schema)
    t, p = cfg.train, cfg.privacy
    assert t.lr is not None and t.batch_size is not None and t.epochs is not None
    private = cfg.private
    q, steps = planned_steps(cfg, n)
    noise, target_eps = None, None
    if private:
        assert p.delta is not None
        target_eps = p.epsilon
        noise = p.noise_multiplier or calibrate_noise(
            target_epsilon=p.epsilon or 0.0,
            sample_rate=q,
            steps=steps,
            delta=p.delta,
            accountant=p.accountant,
        )
    pooling = resolve_pooling(cfg.model.pooling, model_dir)
    cfg = cfg.with_(model=replace(cfg.model, pooling=pooling))
    resolved = {
        **cfg.to_dict(),
        "derived": {
            "model_dir": str(model_dir),
            "model_type": kind,
            "schema": schema.name,
            "train_size": n,
            "sample_rate": q,
            "steps": steps,
            "noise_multiplier": noise,
        },
    }
    ckpt_path = out / "checkpoint.pt"
    if out.exists() and (out / "config.json").exists():
        previous = json.loads((out / "config.json").read_text())
        finished = (out / "privacy.json").exists() and not ckpt_path.exists()
        if overwrite:
            ckpt_path.unlink(missing_ok=True)
        elif finished:
            raise DpradError(f"{out}: already holds a finished run (pass --overwrite to replace it)")
        elif previous != json.loads(json.dumps(resolved)):
            raise DpradError(
                f"{out}: holds a checkpoint of a different config (pass --overwrite or another --out)"
            )
    out.mkdir(parents=True, exist_ok=True)
    if overwrite or not ckpt_path.exists():  # a fresh start: no file of an earlier run may outlive it
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "model", ignore_errors=True)
    io.write_json(out / "config.json", resolved)

    threads = t.threads
    if threads:
        torch.set_num_threads(threads)
    with torch.random.fork_rng():
        torch.manual_seed(t.seed)
        tokenizer = load_tokenizer(str(model_dir))
        policy = UncertainPolicy(cfg.data.uncertain_policy)
        enc = {
            name: encode(reps, tokenizer, schema, max_length=cfg.model.max_length, policy=policy)
            for name, reps in splits.as_dict().items()
        }
        encoder = load_encoder(model_dir)
        head_only = t.mode in HEAD_MODES
        if head_only:
            encoder.eval()
            public = public_corpus(
                encoder, tokenizer, pooling=pooling, max_length=cfg.model.max_length, max_tokens=t.max_tokens
            )
            center = public.center
            feats = {
                name: head_inputs(
                    encoder_features(encoder, e, pooling=pooling, max_tokens=t.max_tokens), center
                )
                for name, e in enc.items()
            }
            trainable: nn.Module = FeatureHead(hidden_size(encoder), len(schema), center=center)
            if t.public_warm_start:
                if schema.name not in public.labelled or tuple(schema.labels) != _builtin_labels(schema.name):
                    raise DpradError(
                        f"--public-warm-start needs a built-in schema (chexpert14, ctrate18), not '{schema.name}'"
                    )
                x_pub, y_pub, m_pub = public.labelled[schema.name]
                warm_start(trainable, head_inputs(x_pub, center), y_pub, m_pub)
                notes.append(f"head initialised on {len(x_pub)} public synthetic reports (no privacy cost)")
        else:
            if t.mode in ("dp-lora", "lora"):
                encoder = attach_lora(
                    encoder,
                    kind=kind,
                    r=cfg.lora.r,
                    alpha=cfg.lora.alpha,
                    dropout=cfg.lora.dropout,
                    target_modules=cfg.lora.target_modules,
                )
            elif t.mode == "dp-full":
                freeze_for_dp_full(encoder)
            trainable = ReportClassifier(encoder, len(schema), pooling=pooling)
            trainable.train()
        module: nn.Module = trainable
        if private:
            from opacus import GradSampleModule

            module = GradSampleModule(trainable, batch_first=True, loss_reduction="sum")
        params = [x for x in module.parameters() if x.requires_grad]
        # A linear head on fixed features: SGD with momentum (measured better than Adam under DP noise);
        # encoders: AdamW.
        optimizer: torch.optim.Optimizer = (
            torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
            if head_only
            else torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        )
        rng = np.random.default_rng(t.seed)
        sampler: PoissonSampler | ShuffleSampler = (
            PoissonSampler(n, q, rng) if private else ShuffleSampler(n, t.batch_size, rng)
        )
        check_sampler(sampler, private=private)
        noise_gen = torch.Generator().manual_seed(t.seed + 1)
        train_enc = enc["train"]

        def loss_fn(idx: np.ndarray) -> torch.Tensor:
            if head_only:
                x = torch.from_numpy(feats["train"][idx])  # (B, H)
                logits = module(x)
            else:
                input_ids, attention, _, _ = collate(train_enc, idx)
                logits = module(input_ids, attention)  # (B, L)
            return loss_per_example(logits, train_enc.targets[idx], train_enc.mask[idx])

        def split(idx: np.ndarray) -> list[np.ndarray]:
            if head_only:
                return [idx] if len(idx) else []
            return micro_batches(idx, train_enc.lengths, max_tokens=t.max_tokens)

        start = 0
        # batch_size: the realised logical batch of every step, so the sampler can be checked against the ledger
        history: dict[str, list[Any]] = {"step_loss": [], "batch_size": [], "epsilon_per_epoch": []}
        if ckpt_path.exists() and not overwrite:
            start, history = _load_checkpoint(ckpt_path, trainable, optimizer, sampler, noise_gen)
        steps_per_epoch = 1 / q
        tick = time.perf_counter()
        for step in range(start, steps):
            idx = sampler.sample()
            batches = split(idx)
            if private:
                assert noise is not None and p.max_grad_norm is not None
                loss = private_step(
                    params,
                    optimizer,
                    batches,
                    loss_fn,
                    max_grad_norm=p.max_grad_norm,
                    noise_multiplier=noise,
                    expected_batch_size=q * n,
                    generator=noise_gen,
                )
            else:
                loss = plain_step(params, optimizer, batches, loss_fn, batch_size=len(idx))
            history["step_loss"].append(round(loss / max(len(idx), 1), 6))
            history["batch_size"].append(len(idx))
            done = step + 1
            eps_now = None
            if private and (
                math.floor(done / steps_per_epoch) > math.floor(step / steps_per_epoch) or done == steps
            ):
                assert noise is not None and p.delta is not None
                eps_now = compute_epsilon(
                    noise_multiplier=noise, sample_rate=q, steps=done, delta=p.delta, accountant=p.accountant
                ).epsilon
                history["epsilon_per_epoch"].append(
                    {"epoch": round(done / steps_per_epoch, 3), "step": done, "epsilon": eps_now}
                )
            if done % t.checkpoint_every == 0 and done < steps:
                _save_checkpoint(ckpt_path, done, trainable, optimizer, sampler, noise_gen, history)
            if on_step is not None:
                elapsed = time.perf_counter() - tick
                on_step(
                    StepInfo(
                        done,
                        steps,
                        done / steps_per_epoch,
                        history["step_loss"][-1],
                        eps_now,
                        (done - start) * q * n / max(elapsed, 1e-9),
                    )
                )

        # ---- the run is trained: account, save, evaluate ----
        accounting = None
        if private:
            assert noise is not None and p.delta is not None
            accounting = compute_epsilon(
                noise_multiplier=noise, sample_rate=q, steps=steps, delta=p.delta, accountant=p.accountant
            )
        ledger = _ledger(
            cfg,
            n=n,
            q=q,
            steps=steps,
            noise=noise,
            target_eps=target_eps,
            accounting=accounting,
            sampler=sampler.name,
            params=trainable_parameters(trainable),
            model_name=str(model_dir),
            val_size=len(splits.val),
        )
        if head_only:  # the features are already computed: score them directly

            def probs_for(name: str) -> np.ndarray:
                trainable.eval()
                with torch.inference_mode():
                    return torch.sigmoid(trainable(torch.from_numpy(feats[name]))).numpy()

        else:
            from dprad.predict import Predictor

            predictor = Predictor(
                trainable,
                tokenizer=tokenizer,
                schema=schema,
                pooling=pooling,
                mode=t.mode,
                max_length=cfg.model.max_length,
                max_tokens=t.max_tokens,
            )

            def probs_for(name: str) -> np.ndarray:
                return predictor.predict(splits.as_dict()[name]).probs

        metrics = _evaluate_splits(probs_for, schema, splits, enc)
        _save_run(out, trainable, encoder, t.mode, schema, ledger, history, metrics, splits, notes)
    ckpt_path.unlink(missing_ok=True)
    return TrainResult(out, ledger, metrics)


def _ledger(
    cfg: RunConfig,
    *,
    n: int,
    q: float,
    steps: int,
    noise: float | None,
    target_eps: float | None,
    accounting: Any,
    sampler: str,
    params: int,
    model_name: str,
    val_size: int,
) -> PrivacyLedger:
    t, p = cfg.train, cfg.privacy
    assert t.epochs is not None and t.batch_size is not None
    private = cfg.private
    protected = ["the training split's reports (each report is the unit of privacy)"] if private else []
    not_protected = [
        f"the base model {model_name} and its pre-training data",
        f"the {val_size} validation reports: used without DP to pick thresholds",
        "history.json: per-step training losses computed without noise (keep inside the institution)",
        "splits.json: which report ids were in which split",
    ]
    ledger = PrivacyLedger(
        private=private,
        privacy_unit="report",
        dataset_size=n,
        target_epsilon=target_eps,
        epsilon=accounting.epsilon if accounting else None,
        delta=p.delta if private else None,
        noise_multiplier=noise,
        max_grad_norm=p.max_grad_norm if private else None,
        sample_rate=q if private else None,
        expected_batch_size=q * n if private else None,
        logical_batch_size=(f"Poisson, expected {q * n:.1f}" if private else f"fixed {t.batch_size}"),
        steps=steps,
        epochs=round(steps * q, 4),
        sampler=sampler,
        accountant=accounting.accountant if accounting else None,
        accountant_note=accounting.note if accounting else "",
        mode=t.mode,
        trainable_parameters=params,
        protected=protected,
        not_protected=not_protected,
        library_versions=library_versions(),
    )
    return replace(ledger, statement=guarantee_statement(ledger, model_name=model_name, val_size=val_size))


def _evaluate_splits(
    probs_for: Callable[[str], np.ndarray], schema: LabelSchema, splits: Splits, enc: dict[str, Encoded]
) -> dict[str, Any]:
    """Validation-fitted thresholds, and val / test metrics at 0.5 and at those thresholds."""
    from dprad.metrics import fit_thresholds, summary

    out: dict[str, Any] = {}
    preds = {name: probs_for(name) for name, reps in splits.as_dict().items() if reps and name != "train"}
    thresholds = None
    if "val" in preds:
        critical = {schema.labels.index(c): CRITICAL_SENSITIVITY for c in schema.critical}
        thresholds = fit_thresholds(
            enc["val"].targets, preds["val"], mask=enc["val"].mask, target_recall=critical
        )
        out["thresholds"] = {
            "fitted_on": "val",
            "rule": f"max F1 per label; sensitivity >= {CRITICAL_SENSITIVITY} for critical labels",
            "critical": list(schema.critical),
            "values": thresholds.tolist(),
        }
    for name, probs in preds.items():
        e = enc[name]
        out[name] = {"threshold_0.5": summary(e.targets, probs, mask=e.mask, labels=schema.labels)}
        if thresholds is not None:
            out[name]["threshold_val"] = summary(
                e.targets, probs, mask=e.mask, labels=schema.labels, thresholds=thresholds
            )
    return out


def _save_run(
    out: Path,
    trainable: nn.Module,
    encoder: nn.Module,
    mode: str,
    schema: LabelSchema,
    ledger: PrivacyLedger,
    history: dict[str, Any],
    metrics: dict[str, Any],
    splits: Splits,
    notes: list[str],
) -> None:
    model_dir = out / "model"
    model_dir.mkdir(exist_ok=True)
    # the head, plus the public feature centre for head-only runs (FeatureHead keeps it as a buffer)
    head: nn.Module = trainable if isinstance(trainable, FeatureHead) else trainable.head  # type: ignore[assignment]
    state = head.state_dict()
    io.write_with(model_dir / "head.pt", lambda tmp: torch.save(dict(state), tmp))
    if mode in ("dp-lora", "lora"):
        encoder.save_pretrained(str(model_dir / "adapter"))  # type: ignore[operator]  # peft adapter + config
    elif mode in ("dp-full", "full"):
        encoder.save_pretrained(str(model_dir / "encoder"))  # type: ignore[operator]
    io.write_json(out / "schema.json", schema.to_dict())
    io.write_json(out / "history.json", history)
    io.write_json(out / "metrics.json", metrics)
    io.write_json(out / "splits.json", {k: [r.id for r in v] for k, v in splits.as_dict().items()})
    io.write_json(out / "notes.json", notes)
    io.write_json(out / "privacy.json", ledger.to_dict())


def _save_checkpoint(
    path: Path,
    step: int,
    trainable: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: PoissonSampler | ShuffleSampler,
    noise_gen: torch.Generator,
    history: dict[str, Any],
) -> None:
    state = {
        "step": step,
        "trainable": {k: v for k, v in trainable.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "sampler_rng": sampler.rng.bit_generator.state,
        "sampler_perm": getattr(sampler, "_perm", None),
        "noise_rng": noise_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }
    io.write_with(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(
    path: Path,
    trainable: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: PoissonSampler | ShuffleSampler,
    noise_gen: torch.Generator,
) -> tuple[int, dict[str, Any]]:
    state = torch.load(path, weights_only=False)
    trainable.load_state_dict(state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    sampler.rng.bit_generator.state = state["sampler_rng"]
    if state["sampler_perm"] is not None:
        sampler._perm = state["sampler_perm"]  # type: ignore[union-attr]
    noise_gen.set_state(state["noise_rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), state["history"]


__all__ = ["MODE_DEFAULTS", "StepInfo", "TrainResult", "check_sampler", "prepare", "resolve", "train"]
