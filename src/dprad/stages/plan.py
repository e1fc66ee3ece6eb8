"""Stage 1, planning: read and split the data, resolve every default, plan the steps and calibrate the
noise, once. The result is a frozen :class:`RunPlan`; ``config.json`` is ``plan.to_dict()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dprad.config import MODE_ALIASES, EncoderRuntime, Mode, RunConfig, Unit, flag_message
from dprad.data.provenance import teacher_of
from dprad.data.read import read_data
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema, builtin_schema, load_schema
from dprad.data.splits import Splits, split_by_patient
from dprad.errors import DpradError, ParameterError, PrivacyInvariantError
from dprad.local_models import resolve_model_dir
from dprad.privacy import calibrate_noise, default_delta, dpsgd_event, epsilon_of
from dprad.privacy.accounting import gaussian_noise_multiplier, with_releases
from dprad.run.plan import RunPlan, threshold_releases

# `auto` is the private head at every size: bench/lpft.py's curve (docs/how-to/choosing.md, "Mode") found DP-LP-FT
# (`--mode lora`) never ahead of the head by more than the spread over split seeds, at any measured
# training-set size (IU X-ray subsampled to 500, 1,000 and 2,000 reports and all 2,614; CT-RATE manual,
# 551) and eps (1, 10, non-private), while it costs minutes where the head costs seconds. Above the
# largest measured size the choice is unmeasured, and a run says so in its notes.
AUTO_MEASURED_UP_TO = 2_614


@contextmanager
def _in_flags() -> Iterator[None]:
    """A privacy mechanism's :class:`ParameterError` ("epsilon 0 must be ...") raised as the user reads it,
    with the flag that sets the parameter ("--epsilon 0 must be ...")."""
    try:
        yield
    except ParameterError as err:
        raise DpradError(flag_message(err)) from err


def prepare(
    cfg: RunConfig, reports: Sequence[Report] | None = None, *, require_positives: bool = True
) -> tuple[LabelSchema, Splits, list[str]]:
    """Read, split by patient, and keep only labelled reports for training; notes say what was dropped.
    ``require_positives``: refuse a label without a positive training report (a federation's site may
    lack one: the others bring its positives, so the site only notes it)."""
    notes: list[str] = []
    schema = load_schema(cfg.data.schema) if cfg.data.schema else None
    if reports is None:
        result, schema, _ = read_data(cfg.data)
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
    for name in ("val", "test"):
        if not getattr(splits, name):
            notes.append(
                f"the {name} split is empty: "
                + (
                    "thresholds stay at 0.5 (no data to fit them on)"
                    if name == "val"
                    else "no test metrics (evaluate on other data with dprad evaluate)"
                )
            )
    y = np.array(
        [[1 if (r.labels or {}).get(lab) in (1, -1) else 0 for lab in schema.labels] for r in splits.train]
    )
    empty = [lab for lab, c in zip(schema.labels, y.sum(0), strict=True) if c == 0]
    if empty and not require_positives:
        notes.append(f"no positive training report for {', '.join(repr(x) for x in empty)} at this site")
    elif empty:
        raise DpradError(
            f"label(s) {', '.join(repr(x) for x in empty)} of schema '{schema.name}' have no positive report in the "
            f"training split ({len(splits.train)} reports): drop them from the schema or add data"
        )
    return schema, splits, notes


def resolve(cfg: RunConfig, *, n_train: int, schema: LabelSchema | None = None) -> RunConfig:
    """Replace every 'let dprad choose' by the value chosen; check the privacy arguments."""
    from dprad.modes import get_mode

    t, p = cfg.train, cfg.privacy
    wants_dp = cfg.private
    mode: Mode = t.mode
    if mode in MODE_ALIASES:
        if not wants_dp:
            raise DpradError(f"--mode {mode} needs exactly one of --epsilon and --noise-multiplier")
        mode = MODE_ALIASES[mode]
    if mode == "auto":
        mode = "head"  # AUTO_MEASURED_UP_TO: what the measured curve supports, at every size measured
    mode_cls = get_mode(mode)
    if wants_dp:
        if p.epsilon is not None and p.noise_multiplier is not None:
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
    d = mode_cls.defaults(private=wants_dp, epsilon=p.epsilon)
    t = replace(
        t,
        mode=mode,
        epochs=t.epochs if t.epochs is not None else d.epochs,
        lr=t.lr if t.lr is not None else d.lr,
        batch_size=min(t.batch_size if t.batch_size is not None else d.batch_size, n_train),
    )
    if wants_dp:
        p = replace(p, max_grad_norm=p.max_grad_norm if p.max_grad_norm is not None else d.max_grad_norm)
        if not p.max_grad_norm or p.max_grad_norm <= 0:
            raise DpradError(f"--max-grad-norm {p.max_grad_norm} must be > 0")
    assert t.epochs is not None and t.lr is not None and t.batch_size is not None
    if t.epochs <= 0 or t.lr <= 0 or t.batch_size < 1:
        raise DpradError("--epochs, --lr and --batch-size must be positive")
    cfg = cfg.with_(train=t, privacy=p, model=replace(cfg.model, encoder_runtime=encoder_runtime(cfg, mode)))
    return mode_cls.resolve(cfg, schema=schema)


def encoder_runtime(cfg: RunConfig, mode: str) -> EncoderRuntime:
    """``--encoder-runtime auto``: ONNX Runtime int8 for a head's frozen encoder on the CPU (the fastest
    path within 0.003 test weighted F1 of torch fp32 on every cell measured, bench/encoder_paths.py), torch
    on a GPU and for the modes that train the encoder; a runtime the user named is kept (the modes check it)."""
    from dprad.nn.device import resolve_device

    if cfg.model.encoder_runtime != "auto":
        return cfg.model.encoder_runtime
    if mode != "head" or resolve_device(cfg.train.device).type != "cpu":
        return "torch"
    return cfg.model.AUTO_CPU_RUNTIME


def privacy_unit(cfg: RunConfig, train: Sequence[Report]) -> tuple[Unit, str]:
    """(unit, why): the person is the unit whenever the data say which reports share a patient."""
    wanted = cfg.privacy.unit  # one of config.UNITS: the config refused any other word when built
    if not cfg.private:
        return "report", ""
    patients = len({r.patient_id for r in train})
    repeats = patients < len(train)
    if wanted == "auto":
        if repeats:
            return "patient", (
                f"privacy unit: patient ({len(train)} training reports from {patients} patients; a patient's "
                "reports are sampled, summed and clipped together)"
            )
        return "report", "privacy unit: report (no patient has more than one training report)"
    return wanted, ""


def resolve_thresholds(cfg: RunConfig, *, has_val: bool) -> RunConfig:
    p = cfg.privacy
    rule = p.thresholds  # one of config.THRESHOLD_RULES: the config refused any other word when built
    if rule == "auto":
        rule = ("dp" if cfg.private else "val") if has_val else "0.5"
    if rule in ("dp", "val") and not has_val:
        raise DpradError(f"--thresholds {rule} needs a validation split (see --split)")
    if rule == "dp" and not cfg.private:
        rule = "val"  # a non-private run has no budget to account them in; nothing is protected anyway
    if rule == "dp" and not 0 < p.threshold_share < 1:
        raise DpradError(f"--threshold-share {p.threshold_share} must be in (0, 1)")
    return cfg.with_(privacy=replace(p, thresholds=rule))


def planned_steps(cfg: RunConfig, n_train: int) -> tuple[float, int]:
    """(sample rate q, steps). Poisson: q = batch / n and an epoch is 1/q steps."""
    assert cfg.train.batch_size is not None and cfg.train.epochs is not None
    q = cfg.train.batch_size / n_train
    return q, max(1, round(cfg.train.epochs / q))


def _whole_rounds(cfg: RunConfig, n: int, *, q: float, steps: int, rounds: int) -> tuple[RunConfig, int]:
    """A federated site's steps: ``rounds`` times a whole number of steps per round (at least one), its
    epochs restated to match when the rounding moved them."""
    assert cfg.train.epochs is not None
    per_round = max(1, round(cfg.train.epochs / rounds / q))
    if steps == rounds * per_round:
        return cfg, steps
    cfg = cfg.with_(train=replace(cfg.train, epochs=rounds * per_round * q))
    _, steps = planned_steps(cfg, n)
    if steps != rounds * per_round:
        raise PrivacyInvariantError(f"a site's plan has {steps} steps, not {rounds} x {per_round}")
    return cfg, steps


# (train reports, schema, rng) -> (the training split to use, the canary set): the audit's hook
CanaryHook = Callable[[list[Report], LabelSchema], tuple[list[Report], Any]]


def plan_run(
    cfg: RunConfig,
    reports: Sequence[Report] | None = None,
    *,
    canaries: CanaryHook | None = None,
    require_positives: bool = True,
    rounds: int | None = None,
) -> RunPlan:
    """Prepare + resolve + step planning + noise calibration + pooling, once. ``rounds``: a federated
    site's schedule, ``rounds`` rounds of the same whole number of DP-SGD steps (its ``epochs`` spread
    over them), so that the noise is calibrated once for exactly the steps the site will take."""
    from dprad.nn.model import encoder_type, resolve_pooling

    model_dir = resolve_model_dir(cfg.model.name)  # fail fast on a bad model before reading data
    kind = encoder_type(model_dir)
    schema, splits, notes = prepare(cfg, reports, require_positives=require_positives)
    canary_set = None
    if canaries is None and cfg.train.audit_canaries:
        from dprad.audit.canaries import canary_hook

        canaries = canary_hook(
            m=cfg.train.audit_canaries,
            rng=np.random.default_rng([cfg.train.seed, 0xCA9A]),  # fixed by the config: runs reproduce
            rare_tokens=cfg.train.audit_rare_tokens,
        )
    if canaries is not None:  # the audit swaps canaries into the training split before n is counted
        train, canary_set = canaries(list(splits.train), schema)
        splits = replace(splits, train=train)
    unit, why = privacy_unit(cfg, splits.train)
    if why:
        notes.append(why)
    n = len({r.patient_id for r in splits.train}) if unit == "patient" else len(splits.train)
    cfg = cfg.with_(privacy=replace(cfg.privacy, unit=unit if cfg.private else cfg.privacy.unit))
    if cfg.train.mode == "auto" and n > AUTO_MEASURED_UP_TO:
        notes.append(
            f"mode auto chose the linear head on {n:,} training units; LP-FT (--mode lora) was measured "
            f"against it only up to {AUTO_MEASURED_UP_TO:,} (docs/how-to/choosing.md, Mode): at this size try both"
        )
    cfg = resolve_thresholds(resolve(cfg, n_train=n, schema=schema), has_val=bool(splits.val))
    cfg = cfg.with_(model=replace(cfg.model, pooling=resolve_pooling(cfg.model.pooling, model_dir)))
    if cfg.data.teacher is None:  # reports read by a sweep come from data.path too
        cfg = cfg.with_(data=replace(cfg.data, teacher=teacher_of(cfg.data.path, cfg.data.labels_path)))
    q, steps = planned_steps(cfg, n)
    if rounds is not None:
        cfg, steps = _whole_rounds(cfg, n, q=q, steps=steps, rounds=rounds)
    probe_cfg = probe_config(cfg, n) if cfg.train.probe else None
    q1, steps1 = planned_steps(probe_cfg, n) if probe_cfg is not None else (0.0, 0)
    cal = Calibration()  # not private: no noise
    if cfg.private:
        with _in_flags():
            cal = _calibrate(
                cfg,
                probe_cfg,
                schedule=(q, steps),
                probe_schedule=(q1, steps1),
                n_val=len(splits.val),
                n_labels=len(schema),
                notes=notes,
            )
        measured = probe_cfg is not None and cfg.train.mode == "lora" and n <= AUTO_MEASURED_UP_TO
        if measured:  # LP-FT's LoRA was measured against the head up to this size (full was not)
            notes.append(
                f"LP-FT on {n:,} training units: phase 2 takes {steps} DP-SGD steps after the probe. At sizes up "
                f"to {AUTO_MEASURED_UP_TO:,} it was never ahead of the private head by more than the spread over "
                "split seeds, and behind at eps 1 (docs/how-to/choosing.md, Mode): --mode head gives the probe the whole "
                "training budget"
            )
    plan = RunPlan(
        cfg=cfg,
        schema=schema,
        splits=splits,
        model_dir=str(model_dir),
        model_type=kind,
        n=n,
        sample_rate=q,
        steps=steps,
        noise_multiplier=cal.noise_multiplier,
        notes=tuple(notes),
        canaries=canary_set,
        threshold_epsilon=cal.threshold_epsilon,
        threshold_sigma=cal.threshold_sigma,
        unit=unit,
    )
    if probe_cfg is None:
        return plan
    probe = replace(
        plan,
        cfg=probe_cfg,
        sample_rate=q1,
        steps=steps1,
        noise_multiplier=cal.probe_noise_multiplier,
        notes=(),
        threshold_epsilon=None,
        threshold_sigma=None,
    )
    return replace(plan, probe=probe)


@dataclass(frozen=True)
class Calibration:
    """A run's noise, calibrated once (None: not private, or no such release). The plan keeps each number,
    and its ledger parts are computed from them (:attr:`RunPlan.ledger_parts`), not calibrated again."""

    noise_multiplier: float | None = None  # training (LP-FT: phase 2)
    threshold_epsilon: float | None = None  # the DP thresholds' share of epsilon, and their noise
    threshold_sigma: float | None = None
    probe_noise_multiplier: float | None = None  # LP-FT's phase 1


def _calibrate(
    cfg: RunConfig,
    probe_cfg: RunConfig | None,
    *,
    schedule: tuple[float, int],
    probe_schedule: tuple[float, int],
    n_val: int,
    n_labels: int,
    notes: list[str],
) -> Calibration:
    """A private run's noise: training sigma, thresholds' epsilon and sigma, probe sigma, so that probe,
    fine-tuning and thresholds together spend exactly the target (PLD composes them)."""
    p = cfg.privacy
    (q, steps), (q1, steps1) = schedule, probe_schedule
    th_eps, th_sigma, probe_sigma = None, None, None
    assert p.delta is not None

    def probe_events(sigma1: float | None) -> tuple[Any, ...]:
        """Phase 1's DP-SGD event (none without a probe)."""
        if probe_cfg is None or sigma1 is None:
            return ()
        return (dpsgd_event(noise_multiplier=sigma1, sample_rate=q1, steps=steps1),)

    if p.thresholds == "dp":  # a share of the budget goes to the thresholds; training gets the rest
        if p.epsilon is not None:
            th_eps = p.threshold_share * p.epsilon
        else:
            assert p.noise_multiplier is not None
            sigma = p.noise_multiplier  # both phases train at it
            tuning = dpsgd_event(noise_multiplier=sigma, sample_rate=q, steps=steps)
            train_eps = epsilon_of(with_releases(tuning, probe_events(sigma)), delta=p.delta)
            th_eps = p.threshold_share / (1 - p.threshold_share) * train_eps
        th_sigma = gaussian_noise_multiplier(epsilon=th_eps, delta=p.delta)
        notes.append(threshold_note(th_sigma, n_val=n_val, n_labels=n_labels, default=p.threshold_default))
    if probe_cfg is not None:
        # phase 1 is calibrated alone to its share of the training budget; phase 2 then to whatever
        # makes probe + fine-tuning + thresholds spend exactly the target (PLD composes them)
        probe_sigma = p.noise_multiplier or calibrate_noise(
            target_epsilon=probe_cfg.train.probe_share * ((p.epsilon or 0.0) - (th_eps or 0.0)),
            sample_rate=q1,
            steps=steps1,
            delta=p.delta,
            accountant=p.accountant if p.accountant != "prv" else "pld",
        )
    noise = p.noise_multiplier or calibrate_noise(
        target_epsilon=p.epsilon or 0.0,
        sample_rate=q,
        steps=steps,
        delta=p.delta,
        accountant=p.accountant,
        releases=(*probe_events(probe_sigma), *threshold_releases(th_sigma)),
    )
    return Calibration(noise, th_eps, th_sigma, probe_sigma)


def threshold_note(sigma: float, *, n_val: int, n_labels: int, default: float) -> str:
    """What the DP thresholds' noise lets them see: the noisy positive count a label needs (95%) before its
    threshold may leave ``default``, against the size of the validation split."""
    from scipy.stats import norm

    from dprad.privacy.thresholds import DEFAULT_GRID

    need = float(norm.ppf(0.95)) * sigma * math.sqrt(n_labels) * math.sqrt(len(DEFAULT_GRID) + 1)
    note = (
        f"DP thresholds: the noise (multiplier {sigma:.3g} on {n_labels} labels' score histograms) lets a label "
        f"leave the default {default:g} only with more than {need:.0f} validation positives"
    )
    if need > 0.1 * n_val:
        note += (
            f", over a tenth of the {n_val} validation reports: most labels will keep {default:g} (a larger "
            "validation split or --threshold-share would help; --thresholds 0.5 gives the budget to training "
            "instead)"
        )
    return note


def probe_config(cfg: RunConfig, n: int) -> RunConfig:
    """Phase 1 of LP-FT: the head mode on the same data and units, with the head's own defaults (the
    settings the runbook chose for it).

    A private probe draws from its own seed stream: the composition of two phases assumes each draws its
    own Poisson samples and noise, so the seeds matter for privacy, not only for taste. A non-private probe
    has no noise to keep apart and takes the run's seed, so it is exactly ``--mode head`` at that seed and
    epoch selection's epoch 0 is that head run (the comparison LP-FT vs head is then paired, not a
    difference of training seeds)."""
    from dprad.modes.head import HeadMode

    d = HeadMode.defaults(private=cfg.private, epsilon=cfg.privacy.epsilon)
    seed = (
        int(np.random.SeedSequence([cfg.train.seed, PROBE_STREAM]).generate_state(1)[0])
        if cfg.private
        else cfg.train.seed
    )
    t = replace(
        cfg.train,
        mode="head",
        probe=False,
        select_epoch=False,
        epochs=d.epochs,
        lr=d.lr,
        batch_size=min(d.batch_size, n),
        seed=seed,
    )
    p = replace(cfg.privacy, max_grad_norm=d.max_grad_norm) if cfg.private else cfg.privacy
    return cfg.with_(train=t, privacy=p)


PROBE_STREAM = 0x9B0BE  # the probe phase's seed stream, apart from the fine-tuning phase's


__all__ = ["RunPlan", "builtin_schema", "plan_run", "planned_steps", "prepare", "resolve"]
