"""Label noise x DP: students trained on each teacher's labels, evaluated on gold.

    python bench/label_noise.py [--corpus iu|ct|both] [--eps 1,10,inf] [--seeds 0,1,2] [--out study.json]

For each split seed the training and validation reports get a teacher's labels; the test split keeps its
gold labels. Teachers:
- ``gold``: the corpus's own labels (IU: MeSH indexing; CT-RATE: manual);
- ``rules``: dprad's rule teacher (what a hospital without annotators trains on);
- ``sym10``: gold, each label's binary value flipped with probability 0.10 (symmetric noise);
- ``missed30``: gold, each positive or uncertain mention dropped (read as not mentioned) with probability
  0.30: the teacher misses findings;
- ``negation20``: gold, each stated positive read as negative and each stated negative as positive with
  probability 0.20: the teacher gets negation wrong.
- ``llm``: the LLM teacher's answers (`--llm-url`, `--llm-model`; answers cached in `--llm-cache`, so a
  rerun asks only for what is missing). Start the server as in bench/llm_teacher.py. With SmolLM2-135M
  here an answer takes 4-20 s, so label a corpus once in the background and rerun the study from the cache.
Students are the product's default (`--mode head`: rule prior, public warm start, DP thresholds) at each
eps. Per label: test sensitivity, mean over split seeds with a 95% interval (each seed's test split
bootstrapped by patient, the replicates averaged over seeds), marked rare (fewer than 20 test positives
on average) and critical. The realised noise of each teacher on the training labels is printed (binary,
uncertain as positive): its false-negative rate among gold positives and false-positive rate among gold
negatives. A report the LLM teacher could not answer stops the study with the count (rerun to retry it):
a failure is never turned into a reading.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = {
    "iu": (DATA / "iu-xray" / "indiana_reports.csv", "iu-xray"),
    "ct": (DATA / "ct-rate-manual" / "train.csv", "ct-rate-manual"),
}
RARE = 20
N_BOOT = 1000

Labels = dict[str, int]


def symmetric(p: float) -> Callable[[Labels, list[str], np.random.Generator], Labels]:
    def noisy(gold: Labels, labels: list[str], rng: np.random.Generator) -> Labels:
        out: Labels = {}
        for lab in labels:
            positive = gold.get(lab) in (1, -1)
            if rng.random() < p:
                positive = not positive
            out[lab] = 1 if positive else 0
        return out

    return noisy


def missed(p: float) -> Callable[[Labels, list[str], np.random.Generator], Labels]:
    def noisy(gold: Labels, labels: list[str], rng: np.random.Generator) -> Labels:
        return {k: v for k, v in gold.items() if not (v in (1, -1) and rng.random() < p)}

    return noisy


def negation(p: float) -> Callable[[Labels, list[str], np.random.Generator], Labels]:
    def noisy(gold: Labels, labels: list[str], rng: np.random.Generator) -> Labels:
        return {k: (1 - v if v in (0, 1) and rng.random() < p else v) for k, v in gold.items()}

    return noisy


NOISE = {"sym10": symmetric(0.10), "missed30": missed(0.30), "negation20": negation(0.20)}


def relabel(
    report: Any,
    teacher: str,
    names: list[str],
    rules: Any,
    rng: np.random.Generator,
    llm: dict[str, Labels] | None = None,
) -> Any:
    """The report with ``teacher``'s labels in place of its gold ones."""
    from dprad.labeling.rules import label_text

    if teacher == "gold":
        return report
    if teacher == "rules":
        return replace(report, labels=label_text(report.text, rules))
    if teacher == "llm":
        assert llm is not None
        return replace(report, labels=llm[report.id])
    return replace(report, labels=NOISE[teacher](dict(report.labels or {}), names, rng))


def llm_answers(reports: list[Any], schema: Any, args: argparse.Namespace) -> dict[str, Labels]:
    """The LLM teacher's reading of each report (from its cache where answered before), by report id."""
    from dprad.labeling.llm import LLMConfig, LLMTeacher

    teacher = LLMTeacher(
        LLMConfig(
            url=args.llm_url,
            model=args.llm_model,
            cache_dir=args.llm_cache,
            concurrency=1,
            timeout_s=args.llm_timeout,
        ),
        schema,
    )
    answers = teacher.label(reports)
    failed = [r.id for r, a in zip(reports, answers, strict=True) if a is None]
    if failed:
        raise SystemExit(
            f"the LLM teacher left {len(failed)} of {len(reports)} reports unanswered (first: {failed[0]}: "
            f"{teacher.summary.failed.get(failed[0], '')}); rerun to retry them"
        )
    return {r.id: dict(a or {}) for r, a in zip(reports, answers, strict=True)}


def binary(labels: Labels | None, names: list[str]) -> np.ndarray:
    return np.array([1 if (labels or {}).get(n) in (1, -1) else 0 for n in names])


def recall_draws(tp: int, support: int, seed: int) -> np.ndarray:
    """(B,) bootstrap replicates of recall on one test split (one report per patient in both corpora)."""
    from dprad.metrics.bootstrap import patient_weights, weighted_label_metrics

    if support == 0:
        return np.full(N_BOOT, np.nan)
    y = np.ones((support, 1), dtype=np.float32)
    pred = np.r_[np.ones(tp), np.zeros(support - tp)].astype(np.float32)[:, None]
    w = patient_weights([str(i) for i in range(support)], N_BOOT, random_state=seed)
    return weighted_label_metrics(y, pred, pred, w)["recall"][:, 0]


def main() -> None:
    from dprad.config import DataConfig, PrivacyConfig, RunConfig, TrainConfig
    from dprad.labeling.rules import rules_for
    from dprad.metrics.bootstrap import interval
    from dprad.stages.plan import prepare
    from dprad.stages.train import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="both", choices=["iu", "ct", "both"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eps", default="1,10,inf")
    ap.add_argument("--teachers", default="gold,rules,sym10,missed30,negation20")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="")
    ap.add_argument("--out", default="", help="write every number as JSON here")
    ap.add_argument("--llm-url", default="", help="the LLM teacher's OpenAI-compatible server (teacher llm)")
    ap.add_argument("--llm-model", default="smollm2")
    ap.add_argument("--llm-cache", default=str(Path(tempfile.gettempdir()) / "dprad-llm-teacher-cache"))
    ap.add_argument(
        "--llm-timeout", type=float, default=600.0, help="seconds per request (a busy CPU is slow)"
    )
    args = ap.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="dprad-label-noise-"))
    cache = args.cache or str(runs / "cache")
    corpora = ["iu", "ct"] if args.corpus == "both" else [args.corpus]
    teachers = args.teachers.split(",")
    if "llm" in teachers and not args.llm_url:
        raise SystemExit("--teachers llm needs --llm-url (cached answers are read without asking the server)")
    seeds = [int(s) for s in args.seeds.split(",")]
    study: dict[str, Any] = {"corpora": {}, "rare_below": RARE, "resamples": N_BOOT}
    print(f"runs in {runs}")
    for corpus in corpora:
        path, fmt = CORPORA[corpus]
        if not path.exists():
            print(f"{path} is absent: skipped")
            continue
        out_c: dict[str, Any] = study["corpora"].setdefault(corpus, {"teachers": {}})
        for teacher in teachers:
            for eps in [float(e) for e in args.eps.split(",")]:
                private = bool(np.isfinite(eps))
                per_seed: list[dict[str, Any]] = []
                noise_rates: list[tuple[float, float]] = []
                for seed in seeds:
                    cfg = RunConfig(
                        data=DataConfig(path=str(path), format=fmt, split_seed=seed),
                        privacy=PrivacyConfig(epsilon=eps if private else None),
                        train=TrainConfig(mode="head", feature_cache=cache, threads=args.threads),
                    )
                    schema, splits, _ = prepare(cfg)
                    names = list(schema.labels)
                    rules = rules_for(schema)
                    rng = np.random.default_rng([seed, 0x7E, teachers.index(teacher)])
                    llm = (
                        llm_answers([*splits.train, *splits.val], schema, args) if teacher == "llm" else None
                    )
                    taught = {
                        name: [relabel(r, teacher, names, rules, rng, llm) for r in reps]
                        for name, reps in (("train", splits.train), ("val", splits.val))
                    }
                    g = np.array([binary(r.labels, names) for r in [*splits.train, *splits.val]])
                    t = np.array([binary(r.labels, names) for r in [*taught["train"], *taught["val"]]])
                    noise_rates.append(
                        (
                            float(((g == 1) & (t == 0)).sum() / max(1, (g == 1).sum())),
                            float(((g == 0) & (t == 1)).sum() / max(1, (g == 0).sum())),
                        )
                    )
                    reports = [
                        replace(r, attrs={**r.attrs, "split": name})
                        for name, reps in (
                            ("train", taught["train"]),
                            ("val", taught["val"]),
                            ("test", splits.test),
                        )
                        for r in reps
                    ]
                    cfg = cfg.with_(data=replace(cfg.data, schema=schema.name, teacher=teacher))
                    tick = time.perf_counter()
                    res = train(
                        cfg, runs / f"{corpus}-{teacher}-{eps}-{seed}", reports=reports, overwrite=True
                    )
                    test = res.metrics["test"]["threshold_val"]
                    per_seed.append(test)
                    print(
                        f"{corpus} {teacher:>10} eps {eps:>4g} seed {seed}: test wF1 {test['weighted_f1']:.3f} "
                        f"({time.perf_counter() - tick:.0f} s)",
                        flush=True,
                    )
                rows = []
                for j, lab in enumerate(names):
                    supports = [s["per_label"][j]["support"] for s in per_seed]
                    recalls = [s["per_label"][j]["recall"] for s in per_seed]
                    draws = np.nanmean(
                        [
                            recall_draws(round(r * n), n, seed)
                            for r, n, seed in zip(recalls, supports, seeds, strict=True)
                        ],
                        axis=0,
                    )
                    ci = interval(float(np.mean(recalls)), draws).to_dict()
                    rows.append(
                        {
                            "label": lab,
                            "test_positives": float(np.mean(supports)),
                            "rare": bool(np.mean(supports) < RARE),
                            "critical": lab in schema.critical,
                            "sensitivity": ci,
                        }
                    )
                wf1 = [s["weighted_f1"] for s in per_seed]
                fnr, fpr = np.mean(noise_rates, axis=0)
                out_c["teachers"].setdefault(teacher, {})[str(eps)] = {
                    "weighted_f1": {
                        "mean": float(np.mean(wf1)),
                        "min": float(np.min(wf1)),
                        "max": float(np.max(wf1)),
                    },
                    "training_label_noise": {
                        "false_negative_rate": float(fnr),
                        "false_positive_rate": float(fpr),
                    },
                    "per_label": rows,
                }
                print(
                    f"{corpus} {teacher:>10} eps {eps:>4g}: wF1 {np.mean(wf1):.3f} ({np.min(wf1):.3f}..{np.max(wf1):.3f}); "
                    f"training labels: FNR {fnr:.3f}, FPR {fpr:.3f}",
                    flush=True,
                )
        # per label, the sensitivity of every teacher at every eps, side by side
        eps_keys = [str(float(e)) for e in args.eps.split(",")]
        print(f"\n{corpus}: test sensitivity per label, mean over split seeds [95% CI]; R rare, C critical")
        first = out_c["teachers"][teachers[0]][eps_keys[0]]["per_label"]
        for j, row in enumerate(first):
            tag = ("R" if row["rare"] else " ") + ("C" if row["critical"] else " ")
            print(f"  {row['label']:<28} {tag} positives {row['test_positives']:>5.1f}")
            for teacher in teachers:
                cells = []
                for e in eps_keys:
                    s = out_c["teachers"][teacher][e]["per_label"][j]["sensitivity"]
                    cells.append(
                        f"eps {float(e):>4g} {s['estimate']:.2f} [{s['ci_low']:.2f},{s['ci_high']:.2f}]"
                    )
                print(f"      {teacher:>10}: " + "   ".join(cells))
    if args.out:
        Path(args.out).write_text(json.dumps(study, indent=1))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
