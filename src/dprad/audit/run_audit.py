"""Audit a finished run: membership inference (loss, confidence, LiRA, RMIA) -> RUN/audit.json.

Members are the run's training reports, non-members its test reports (other patients), and RMIA's
population its validation reports. Reference models are trained on random halves of all three with the
run's own recipe (:mod:`dprad.audit.reference`). An existing "canary" section of audit.json (written by
training with canaries) is kept; canary ids in splits.json are left to that section.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dprad import io
from dprad.audit.canaries import CANARY_PREFIX
from dprad.audit.lira import lira_scores, true_label_logit
from dprad.audit.mia import confidence_scores, evaluate_attack, loss_scores, slices
from dprad.audit.reference import (
    HeadRecipe,
    ReferenceModels,
    head_reference_models,
    probs_to_logits,
    run_is_private,
    run_reference_models,
)
from dprad.audit.rmia import DEFAULT_GAMMA, fit_offline_a, rmia_scores
from dprad.config import MODE_ALIASES
from dprad.data.reports import Report, label_matrix
from dprad.data.schemas import LabelSchema, UncertainPolicy
from dprad.errors import DpradError
from dprad.features import loss_per_example

ATTACKS = ("loss", "lira", "rmia")  # "loss" runs the loss and the confidence attack
HEAD_MODES = ("head",)
WHAT_IT_CHECKS = (
    "Membership inference measures what an attacker holding the released model (and, for LiRA / RMIA, the "
    "ability to train look-alike models on similar data) learns about whether a report was in training. "
    "AUC near 0.5 and TPR near the FPR mean the attacks tried here learn little; it does not prove that no "
    "attack can do better, and it says nothing about patients with several reports beyond each report."
)


def _read_json(path: Path, *, required: bool) -> Any:
    if not path.is_file():
        if required:
            raise DpradError(f"{path}: missing (is {path.parent} a finished dprad run directory?)")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DpradError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None


def parse_attacks(attacks: Sequence[str] | str) -> tuple[str, ...]:
    items = [a.strip() for a in (attacks.split(",") if isinstance(attacks, str) else attacks) if a.strip()]
    bad = [a for a in items if a not in ATTACKS]
    if bad or not items:
        raise DpradError(f"--attack {','.join(items) or '(none)'}: each must be one of {', '.join(ATTACKS)}")
    return tuple(dict.fromkeys(items))


def _run_reports(config: dict[str, Any], reports: Sequence[Report] | None) -> dict[str, Report]:
    if reports is None:
        from dprad.config import RunConfig
        from dprad.data.read import read_data

        data = config.get("data") or {}
        if not data.get("path"):
            raise DpradError(
                "the run was trained on reports passed directly: pass the same reports to audit it"
            )
        result, _, _ = read_data(RunConfig.from_dict({"data": data}).data)
        reports = result.reports
    return {r.id: r for r in reports}


def _pick(by_id: dict[str, Report], ids: Sequence[str], split: str, run_dir: Path) -> list[Report]:
    ids = [i for i in ids if not str(i).startswith(CANARY_PREFIX)]
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DpradError(
            f"{run_dir / 'splits.json'}: {len(missing)} '{split}' report id(s) (first '{missing[0]}') are not in "
            "the data: audit with the data the run was trained on"
        )
    return [by_id[i] for i in ids]


def _head_logits(
    run_dir: Path, config: dict[str, Any], reports: Sequence[Report], schema: LabelSchema, *, public: bool
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """Head inputs (N, H) of every report (features computed once), the run's logits (N, L), and the public
    corpus (x, y, mask) when the run warm-started on it."""
    from dprad.data.dataset import encode
    from dprad.features import encoder_features, head_inputs, public_corpus
    from dprad.local_models import load_tokenizer
    from dprad.model import FeatureHead, load_encoder

    model_dir = Path(config["derived"]["model_dir"])
    pooling, max_length = config["model"]["pooling"], int(config["model"]["max_length"])
    max_tokens = int(config["train"]["max_tokens"])
    tokenizer = load_tokenizer(str(model_dir))
    encoder = load_encoder(model_dir)
    state = torch.load(run_dir / "model" / "head.pt", weights_only=True)
    center = state["center"].numpy()  # (H,) the public feature centre the run used
    head = FeatureHead(int(state["head.weight"].shape[1]), len(schema))
    head.center = state["center"]
    head.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
    head.eval()
    prior = bool(config["train"].get("rule_prior"))

    def inputs(raw: np.ndarray, texts: list[str]) -> np.ndarray:
        """The head's input rows exactly as the run built them (features, plus the rule prior if used)."""
        if prior:
            from dprad.modes.head import head_x

            return head_x(raw, center, texts, schema, prior=True)
        return head_inputs(raw, center)

    enc = encode(reports, tokenizer, schema, max_length=max_length)
    raw = encoder_features(encoder, enc, pooling=pooling, max_tokens=max_tokens)
    x = inputs(raw, [r.text for r in reports])
    with torch.inference_mode():
        logits = head(torch.from_numpy(x)).numpy()
    pub = None
    if public:
        corpus = public_corpus(
            encoder, tokenizer, pooling=pooling, max_length=max_length, max_tokens=max_tokens
        )
        if schema.name not in corpus.labelled:
            raise DpradError(
                f"the run warm-started on a public corpus dprad has no match for ('{schema.name}')"
            )
        xp, yp, mp = corpus.labelled[schema.name]
        texts = getattr(corpus, "texts", {}).get(schema.name, [])
        pub = (inputs(xp, texts), yp, mp)
    return x, logits, pub


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
) -> dict[str, Any]:
    """Attack the run's model and write RUN/audit.json (keeping any "canary" section); returns the dict."""
    run_dir = Path(run_dir)
    attacks = parse_attacks(attacks)
    if n_boot < 1:
        raise DpradError(f"--bootstrap {n_boot} must be at least 1")
    needs_refs = "lira" in attacks or "rmia" in attacks
    if needs_refs and reference_models < 4:
        raise DpradError(
            f"--reference-models {reference_models}: LiRA / RMIA need at least 4 (16 or more is better)"
        )
    say = on_progress or (lambda _msg: None)
    config = _read_json(run_dir / "config.json", required=True)
    splits = _read_json(run_dir / "splits.json", required=True)
    schema_raw = _read_json(run_dir / "schema.json", required=True)
    ledger = _read_json(run_dir / "privacy.json", required=False)
    schema = LabelSchema.from_dict(schema_raw, source=str(run_dir / "schema.json"))
    mode = MODE_ALIASES.get(config["train"]["mode"], config["train"]["mode"])
    private = run_is_private(config, ledger)
    led = ledger or {}

    by_id = _run_reports(config, reports)
    members = _pick(by_id, splits.get("train", []), "train", run_dir)
    nonmembers = _pick(by_id, splits.get("test", []), "test", run_dir)
    population = _pick(by_id, splits.get("val", []), "val", run_dir)
    if not members or not nonmembers:
        raise DpradError(f"{run_dir}: membership inference needs training and test reports")
    if "rmia" in attacks and not population:  # before any reference model is trained
        raise DpradError(f"{run_dir}: RMIA needs population reports and the run's validation split is empty")
    pool = [*members, *nonmembers, *population]
    n_in, n_out = len(members), len(nonmembers)
    policy = UncertainPolicy(config["data"].get("uncertain_policy", "ones"))
    y, mask = label_matrix(pool, schema, policy=policy)  # (N, L)

    say(f"scoring {len(pool)} reports with the run's model")
    public = bool(config["train"].get("public_warm_start")) and needs_refs and mode in HEAD_MODES
    x = pub = None
    if mode in HEAD_MODES:
        x, logits, pub = _head_logits(run_dir, config, pool, schema, public=public)
    else:
        from dprad.modes import load_run

        logits = probs_to_logits(load_run(run_dir).predict(pool).probs)
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
    extra: dict[str, Any] = {}
    if "loss" in attacks:
        say("loss and confidence attacks")
        results["loss"] = evaluate(loss_scores(loss))
        results["confidence"] = evaluate(confidence_scores(probs))
    if needs_refs:
        refs: ReferenceModels
        if mode in HEAD_MODES:
            assert x is not None
            recipe = HeadRecipe.from_run(config, ledger)
            say(f"training {reference_models} reference heads on random halves of {len(pool)} reports")
            refs = head_reference_models(
                x,
                y,
                mask,
                recipe,
                k=reference_models,
                rng=rng,
                public=pub,
                on_model=lambda j: say(f"reference {j}"),
            )
        else:
            wd = Path(work_dir) if work_dir is not None else run_dir / "audit-reference"
            say(f"training {reference_models} reference runs under {wd}")
            refs = run_reference_models(
                config,
                ledger,
                pool,
                k=reference_models,
                rng=rng,
                work_dir=wd,
                schema_path=run_dir / "schema.json",
                on_model=lambda j: say(f"reference {j}"),
            )
        extra["reference_models"] = reference_models
        if private and led.get("privacy_unit", "report") != "report":
            extra["reference_note"] = (
                f"the run protects each {led['privacy_unit']}; its reference models sample reports (Poisson, "
                "same rate and noise), so they are a close stand-in, not an exact copy, of its training"
            )
        keep, ref_logits = refs.keep[:, tgt], refs.logits[:, tgt]
        if "lira" in attacks:
            say("LiRA")
            phi_t = true_label_logit(logits[tgt], y[tgt], mask[tgt])
            phi_r = true_label_logit(ref_logits, y[tgt], mask[tgt])
            results["lira_online"] = evaluate(_pad(lira_scores(phi_t, phi_r, keep, online=True), len(pool)))
            results["lira_offline"] = evaluate(_pad(lira_scores(phi_t, phi_r, keep, online=False), len(pool)))
        if "rmia" in attacks:
            say("RMIA")
            pop = slice(n_in + n_out, len(pool))
            a = fit_offline_a(ref_logits, keep, y[tgt], mask[tgt])
            extra["rmia"] = {"gamma": gamma, "offline_a": a, "population": len(population)}
            for name, offline in (("rmia", False), ("rmia_offline", True)):
                scores = rmia_scores(
                    logits[tgt],
                    ref_logits,
                    keep,
                    y[tgt],
                    mask[tgt],
                    population_logits=logits[pop],
                    population_ref_logits=refs.logits[:, pop],
                    population_keep=refs.keep[:, pop],
                    population_targets=y[pop],
                    population_mask=mask[pop],
                    gamma=gamma,
                    offline=offline,
                    a=a,
                )
                results[name] = evaluate(_pad(scores, len(pool)))

    section = {
        "members": n_in,
        "nonmembers": n_out,
        "n_boot": n_boot,
        **extra,
        "attacks": results,
        "what_it_checks": WHAT_IT_CHECKS,
    }
    previous = _read_json(run_dir / "audit.json", required=False) or {}
    audit = {
        **previous,
        "run": str(run_dir),
        "theory": {
            "private": private,
            "mode": mode,
            "epsilon": led.get("epsilon"),
            "delta": led.get("delta"),
        },
        "mia": section,
    }
    io.write_json(run_dir / "audit.json", audit)
    return dict(audit)


def _pad(scores: np.ndarray, n: int) -> np.ndarray:
    """Scores over the targets (members then non-members), padded with NaN to the whole pool."""
    out = np.full(n, np.nan)
    out[: len(scores)] = scores
    return out


__all__ = ["ATTACKS", "audit_run", "parse_attacks"]
