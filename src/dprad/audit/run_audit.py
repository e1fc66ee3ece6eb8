"""Audit a finished run: membership inference (loss, confidence, LiRA, RMIA) -> RUN/audit.json.

Members are the run's training reports, non-members its test reports (other patients), and RMIA's
population its validation reports. Reference models are trained on random halves of all three with the
run's own recipe (:mod:`dprad.audit.reference`). An existing "canary" section of audit.json (written by
training with canaries) is kept; canary ids in splits.json are left to that section.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dprad.audit.canaries import CANARY_PREFIX
from dprad.audit.lira import lira_scores, true_label_logit
from dprad.audit.mia import confidence_scores, evaluate_attack, loss_scores, slices
from dprad.audit.rmia import DEFAULT_GAMMA, fit_offline_a, rmia_scores
from dprad.audit.sections import write_sections
from dprad.data.reports import Report, label_matrix
from dprad.data.schemas import UncertainPolicy
from dprad.errors import DpradError
from dprad.modes import get_mode
from dprad.modes.reference import ReferenceModels, TrainFn
from dprad.nn.loss import loss_per_example
from dprad.run import RunRecord, files

ATTACKS = ("loss", "lira", "rmia")  # "loss" runs the loss and the confidence attack
WHAT_IT_CHECKS = (
    "Membership inference measures what an attacker holding the released model (and, for LiRA / RMIA, the "
    "ability to train look-alike models on similar data) learns about whether a report was in training. "
    "AUC near 0.5 and TPR near the FPR mean the attacks tried here learn little; it does not prove that no "
    "attack can do better, and it says nothing about patients with several reports beyond each report."
)
# Reports scored on each side (members, non-members, RMIA's population) at most: a uniform random subset
# beyond it. 20,000 a side puts a membership AUC's 95% CI within about +-0.01 and keeps an audit of a
# MIMIC-CXR-sized run (about 160,000 members) from re-encoding the whole archive (bench/scale.py).
MAX_SCORED = 20_000


def parse_attacks(attacks: Sequence[str] | str, *, known: Sequence[str] = ATTACKS) -> tuple[str, ...]:
    """``--attack``: comma-separated names, each one of ``known`` (the membership attacks by default)."""
    items = [a.strip() for a in (attacks.split(",") if isinstance(attacks, str) else attacks) if a.strip()]
    bad = [a for a in items if a not in known]
    if bad or not items:
        raise DpradError(f"--attack {','.join(items) or '(none)'}: each must be one of {', '.join(known)}")
    return tuple(dict.fromkeys(items))


def run_reports(run: RunRecord, reports: Sequence[Report] | None) -> dict[str, Report]:
    if reports is None:
        from dprad.data.read import read_data

        if not run.data_path:
            raise DpradError(
                "the run was trained on reports passed directly: pass the same reports to audit it"
            )
        result, _, _ = read_data(run.config.data)
        reports = result.reports
    return {r.id: r for r in reports}


def _pick(by_id: dict[str, Report], ids: Sequence[str], split: str, run_dir: Path) -> list[Report]:
    ids = [i for i in ids if not str(i).startswith(CANARY_PREFIX)]
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DpradError(
            f"{run_dir / files.SPLITS}: {len(missing)} '{split}' report id(s) (first '{missing[0]}') are not in "
            "the data: audit with the data the run was trained on"
        )
    return [by_id[i] for i in ids]


def _split_pool(
    run: RunRecord, reports: Sequence[Report] | None, *, rmia: bool
) -> tuple[list[Report], list[Report], list[Report]]:
    """Members (training split), non-members (test split) and RMIA's population (validation split)."""
    by_id = run_reports(run, reports)
    members = _pick(by_id, run.splits.get("train", ()), "train", run.path)
    nonmembers = _pick(by_id, run.splits.get("test", ()), "test", run.path)
    population = _pick(by_id, run.splits.get("val", ()), "val", run.path)
    if not members or not nonmembers:
        raise DpradError(f"{run.path}: membership inference needs training and test reports")
    if rmia and not population:  # before any reference model is trained
        raise DpradError(f"{run.path}: RMIA needs population reports and the run's validation split is empty")
    return members, nonmembers, population


def audit_run(
    run_dir: str | Path,
    *,
    attacks: Sequence[str] | str = ATTACKS,
    reference_models: int = 16,
    rng: np.random.Generator,
    reports: Sequence[Report] | None = None,
    n_boot: int = 1000,
    gamma: float = DEFAULT_GAMMA,
    work_dir: str | Path | None = None,
    on_progress: Callable[[str], None] | None = None,
    train_fn: TrainFn | None = None,
    max_scored: int = MAX_SCORED,
) -> dict[str, Any]:
    """Attack the run's model and write RUN/audit.json (keeping any "canary" section); returns the dict.

    ``train_fn`` (``dprad.stages.train.train``) makes the reference runs of LoRA / full modes; a head's
    reference models need none. A side of more than ``max_scored`` reports: a subset (``_at_most``)."""
    run_dir = Path(run_dir)
    attacks = parse_attacks(attacks)
    if n_boot < 1:
        raise DpradError(f"--bootstrap {n_boot} must be at least 1")
    _at_most([], max_scored, rng)  # refuses a max_scored below 1 before any work
    needs_refs = "lira" in attacks or "rmia" in attacks
    if needs_refs and reference_models < 4:
        raise DpradError(
            f"--reference-models {reference_models}: LiRA / RMIA need at least 4 (16 or more is better)"
        )
    say = on_progress or (lambda _msg: None)
    run = RunRecord.open(run_dir)
    schema, mode, led = run.schema, get_mode(run.mode), run.ledger
    private = led.private

    members, nonmembers, population = _split_pool(run, reports, rmia="rmia" in attacks)
    extra: dict[str, Any] = _sampled(
        {"members": len(members), "nonmembers": len(nonmembers), "population": len(population)}, max_scored
    )
    members, nonmembers, population = (
        _at_most(side, max_scored, rng) for side in (members, nonmembers, population)
    )
    pool = [*members, *nonmembers, *population]
    n_in, n_out = len(members), len(nonmembers)
    policy = UncertainPolicy(run.config.data.uncertain_policy)
    y, mask = label_matrix(pool, schema, policy=policy)  # (N, L)

    say(f"scoring {len(pool)} reports with the run's model")
    work = Path(work_dir) if work_dir is not None else None
    view = mode.audit_view(run, pool, train_fn=train_fn, work_dir=work)
    logits = view.logits  # (N, L)
    loss = loss_per_example(torch.from_numpy(logits.astype(np.float32)), y, mask).numpy()  # (N,)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    tgt = slice(0, n_in + n_out)
    is_in = np.r_[np.ones(n_in, bool), np.zeros(n_out, bool)]
    masks = slices(
        members,
        nonmembers,
        schema.labels,
        member_targets=y[:n_in] * mask[:n_in],
        nonmember_targets=y[n_in : n_in + n_out] * mask[n_in : n_in + n_out],
    )

    def evaluate(scores: np.ndarray) -> dict[str, Any]:
        s = scores[tgt]
        return evaluate_attack(s[is_in], s[~is_in], rng=rng, n_boot=n_boot, slice_masks=masks)

    results: dict[str, Any] = {}
    if "loss" in attacks:
        say("loss and confidence attacks")
        results["loss"] = evaluate(loss_scores(loss))
        results["confidence"] = evaluate(confidence_scores(probs))
    if needs_refs:
        say(f"training {reference_models} reference models on random halves of {len(pool)} reports")
        refs = view.references(
            k=reference_models, rng=rng, y=y, mask=mask, on_model=lambda j: say(f"reference {j}")
        )
        extra["reference_models"] = reference_models
        if private and led.privacy_unit != "report":
            extra["reference_note"] = (
                f"the run protects each {led.privacy_unit}; its reference models sample reports (Poisson, "
                "same rate and noise), so they are a close stand-in, not an exact copy, of its training"
            )
        targets = _Targets(logits, y, mask, n_in + n_out)
        if "lira" in attacks:
            say("LiRA")
            results |= {k: evaluate(v) for k, v in _lira(targets, refs).items()}
        if "rmia" in attacks:
            say("RMIA")
            scores, extra["rmia"] = _rmia(targets, refs, gamma=gamma)
            results |= {k: evaluate(v) for k, v in scores.items()}

    section = {
        "members": n_in,
        "nonmembers": n_out,
        "n_boot": n_boot,
        **extra,
        "attacks": results,
        "what_it_checks": WHAT_IT_CHECKS,
    }
    audit = write_sections(run, mia=section)  # a "canary" section written by training stays
    return dict(audit)


def _sampled(available: dict[str, int], max_scored: int) -> dict[str, Any]:
    """audit.json's record of the sides attacked on a subset (none: an empty dict)."""
    sampled = {k: v for k, v in available.items() if v > max_scored}
    if not sampled:
        return {}
    listed = ", ".join(f"{k}: {v:,} available" for k, v in sampled.items())
    return {
        "sampled": {
            "max_scored": max_scored,
            "available": sampled,
            "note": f"sides with more than {max_scored:,} reports were attacked on a uniform random subset of "
            f"{max_scored:,} ({listed})",
        }
    }


def _at_most(reports: list[Report], k: int, rng: np.random.Generator) -> list[Report]:
    """``reports`` itself when it has at most ``k``; else ``k`` of them, uniformly, in their order."""
    if k < 1:
        raise DpradError(f"--max-scored {k} must be at least 1")
    if len(reports) <= k:
        return reports
    keep = np.sort(rng.choice(len(reports), size=k, replace=False))
    return [reports[i] for i in keep]


@dataclass(frozen=True, eq=False)
class _Targets:
    """The pool as the reference attacks see it: the first ``n_targets`` rows (members, then non-members)
    are attacked; the rest (validation reports) are RMIA's population."""

    logits: np.ndarray  # (N, L) the run's logits
    y: np.ndarray  # (N, L)
    mask: np.ndarray  # (N, L)
    n_targets: int

    @property
    def tgt(self) -> slice:
        return slice(0, self.n_targets)

    @property
    def pop(self) -> slice:
        return slice(self.n_targets, len(self.logits))


def _lira(t: _Targets, refs: ReferenceModels) -> dict[str, np.ndarray]:
    """LiRA scores (online and offline) over the whole pool (NaN outside the targets)."""
    keep, ref_logits = refs.keep[:, t.tgt], refs.logits[:, t.tgt]  # (K, T), (K, T, L)
    phi_t = true_label_logit(t.logits[t.tgt], t.y[t.tgt], t.mask[t.tgt])
    phi_r = true_label_logit(ref_logits, t.y[t.tgt], t.mask[t.tgt])
    n = len(t.logits)
    return {
        "lira_online": _pad(lira_scores(phi_t, phi_r, keep, online=True), n),
        "lira_offline": _pad(lira_scores(phi_t, phi_r, keep, online=False), n),
    }


def _rmia(
    t: _Targets, refs: ReferenceModels, *, gamma: float
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """RMIA scores (online and offline) over the whole pool, and the settings it used."""
    tgt, pop = t.tgt, t.pop
    keep, ref_logits = refs.keep[:, tgt], refs.logits[:, tgt]
    a = fit_offline_a(ref_logits, keep, t.y[tgt], t.mask[tgt])
    scores = {}
    for name, offline in (("rmia", False), ("rmia_offline", True)):
        s = rmia_scores(
            t.logits[tgt],
            ref_logits,
            keep,
            t.y[tgt],
            t.mask[tgt],
            population_logits=t.logits[pop],
            population_ref_logits=refs.logits[:, pop],
            population_keep=refs.keep[:, pop],
            population_targets=t.y[pop],
            population_mask=t.mask[pop],
            gamma=gamma,
            offline=offline,
            a=a,
        )
        scores[name] = _pad(s, len(t.logits))
    return scores, {"gamma": gamma, "offline_a": a, "population": len(t.logits) - t.n_targets}


def _pad(scores: np.ndarray, n: int) -> np.ndarray:
    """Scores over the targets (members then non-members), padded with NaN to the whole pool."""
    out = np.full(n, np.nan)
    out[: len(scores)] = scores
    return out


__all__ = ["ATTACKS", "audit_run", "parse_attacks"]
