"""How many reports does a hospital need? The privacy cost against the number of training patients.

    python bench/privacy_cost_n.py [--corpus iu|ct|both] [--seeds 0,1,2] [--cache DIR] [--out DIR]
    python bench/privacy_cost_n.py --out DIR --fit-only      # reprint table and fits from DIR/results.jsonl

Privacy cost = non-private weighted F1 - private weighted F1, on the test split, at the shipped thresholds
(validation-fitted for the non-private run, the product's DP thresholds inside the epsilon for the private
one), both runs trained on the same training patients. Every run is `dprad train` with the product's
defaults (`--mode auto`, i.e. the private or plain linear head with the rule prior and the public warm start;
delta from the product's rule, `default_delta(n)`: the largest power of ten at most 1/(10 n), n the number
of training units, so delta moves with n: 1e-4 up to 1,000 units, 1e-5 from 1,001 to 10,000). Sizes: IU
X-ray at 250, 500, 1,000, 2,000 and all training patients, CT-RATE (manual) at 150, 300 and all; eps 1 and
10; split seeds 0, 1, 2 (mean, sd over the seeds with ddof 1, and min / max).

Subsampling. The patient-level 70/10/20 split is the product's (`split_by_patient` at the split seed), and
the validation and test splits are kept whole, so at one split seed the test set is the same at every n.
Only TRAINING patients are subsampled, nested: going down the sizes, the n-patient set is drawn without
replacement from the next larger set (starting from the whole training split) by a generator seeded with
(split seed, n), so the 250 set lies inside the 500 set, which lies inside the 1,000 set, and so on, and
the curve moves by adding patients rather than by redrawing them. The product refuses a label with no
positive training report, so a draw is conditioned on every label having at least one: a draw that misses
one is redrawn from the same generator (the count of redraws is printed; at the full size nothing is
drawn, and the run reads the corpus exactly as `dprad train` does, so those cells are the README's utility
table's). The DP noise is the product's default, a fresh secret key per run, so the private cells also
carry the noise's own spread.

The law. cost(n) = c * n^(-a) is fitted by least squares in log-log on the per-n mean costs (points whose
mean cost is <= 0 cannot enter a log and are left out, and the bench says which), with the fit's standard
errors and a 95% interval for the extrapolated n at which the cost falls under 0.01 (from the fit's
parameter covariance, Student t, by simulation); the per-seed fits give a second, empirical spread. The
IU law is then checked on CT-RATE (its prediction at CT-RATE's n against the measured mean and spread),
and CT-RATE's own law is fitted too. Encoder features are cached in --cache (derived from the reports:
keep the folder private), so after the first pass over a corpus each run takes seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = {
    "iu": (DATA / "iu-xray" / "indiana_reports.csv", "iu-xray", "IU X-ray"),
    "ct": (DATA / "ct-rate-manual" / "train.csv", "ct-rate-manual", "CT-RATE"),
}
SIZES = {"iu": (250, 500, 1000, 2000), "ct": (150, 300)}  # plus all training patients
TARGET = 0.01  # the cost the extrapolation asks for, at eps 1


def has_every_label(reports: Sequence[Any], labels: Sequence[str]) -> bool:
    """What the product checks before training (stages.plan.prepare): a positive report for every label."""
    return all(any((r.labels or {}).get(lab) in (1, -1) for r in reports) for lab in labels)


def nested_subsamples(
    train: Sequence[Any], labels: Sequence[str], sizes: Sequence[int], split_seed: int
) -> dict[int, tuple[list[Any], int]]:
    """n -> (training reports of n patients, redraws). Largest first, each drawn from the one above it by
    a generator seeded with (split seed, n); a draw without a positive for some label is redrawn."""
    by_patient: dict[str, list[int]] = {}
    for i, r in enumerate(train):
        by_patient.setdefault(r.patient_id, []).append(i)
    current = sorted(by_patient)
    out: dict[int, tuple[list[Any], int]] = {}
    for n in sorted(sizes, reverse=True):
        if n >= len(current):
            continue
        rng = np.random.default_rng([split_seed, n])
        redraws = -1
        while True:
            redraws += 1
            if redraws == 1000:
                raise SystemExit(f"no draw of {n} patients has a positive for every label")
            pick = sorted(current[i] for i in rng.choice(len(current), size=n, replace=False))
            if has_every_label([train[i] for p in pick for i in by_patient[p]], labels):
                break
        order = sorted(i for p in pick for i in by_patient[p])  # the split's own order
        out[n] = ([train[i] for i in order], redraws)
        current = pick
    return out


def run_cell(
    corpus: str,
    seed: int,
    cache: str,
    out: Path,
    done: set[tuple[str, int, int, float, bool]],
    log: Path,
    variants: Sequence[tuple[float, bool]],
) -> None:
    """Every (n, eps) run of one corpus at one split seed; each result is appended to ``log``."""
    from dprad.config import DataConfig, PrivacyConfig, RunConfig, TrainConfig
    from dprad.stages.plan import prepare
    from dprad.stages.train import train

    path, fmt, _ = CORPORA[corpus]
    base = RunConfig(
        data=DataConfig(path=str(path), format=fmt, split_seed=seed), train=TrainConfig(feature_cache=cache)
    )
    schema, splits, _ = prepare(base)
    total = len({r.patient_id for r in splits.train})
    subs = nested_subsamples(splits.train, schema.labels, SIZES[corpus], seed)
    for n in sorted([*subs, total], reverse=True):
        train_reports, redraws = subs[n] if n in subs else (list(splits.train), 0)
        reports = None
        cfg0 = base
        if n in subs:  # the product's split, then fewer training patients; val and test whole
            reports = [
                replace(r, attrs={**r.attrs, "split": name})
                for name, reps in (("train", train_reports), ("val", splits.val), ("test", splits.test))
                for r in reps
            ]
            cfg0 = base.with_(data=replace(base.data, schema=schema.name))
        for eps, warm in variants:
            if (corpus, seed, n, eps, warm) in done:
                continue
            tick = time.perf_counter()
            private = math.isfinite(eps)
            cfg = cfg0.with_(privacy=PrivacyConfig(epsilon=eps if private else None))
            if warm:  # not the default for a non-private run: the side baseline of --plain-warm-start
                cfg = cfg.with_(train=replace(cfg.train, public_warm_start=True))
            run = out / f"{corpus}-{seed}-{n}-{eps:g}{'-warm' if warm else ''}"
            res = train(cfg, run, reports=reports, overwrite=True)
            test = res.metrics["test"]["threshold_val"]
            rec = {
                "corpus": corpus,
                "seed": seed,
                "n": n,
                "all": n == total,
                "reports": len(train_reports),
                "redraws": redraws,
                "eps": eps if private else None,
                "warm": warm,
                "wf1": test["weighted_f1"],
                "wf1_05": res.metrics["test"]["threshold_0.5"]["weighted_f1"],
                "delta": res.ledger.delta,
                "sigma": res.ledger.noise_multiplier,
                "eps_spent": res.ledger.epsilon,
                "n_test": len(splits.test),
                "s": round(time.perf_counter() - tick, 1),
            }
            with log.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(
                f"{corpus:>3} seed {seed} n {n:>5} eps {eps:>4g}{' warm' if warm else ''}: wF1 {rec['wf1']:.3f} (@0.5 {rec['wf1_05']:.3f})"
                f" delta {rec['delta'] or '-'} sigma {rec['sigma'] or 0:.2f} redraws {redraws} {rec['s']:.0f} s",
                flush=True,
            )


def fit_law(n: np.ndarray, cost: np.ndarray) -> dict[str, Any]:
    """log cost = log c - a log n by least squares; a, c, their standard errors and covariance."""
    x, y = np.log(n), np.log(cost)
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = len(x) - 2
    resid = y - design @ coef
    s2 = float(resid @ resid / dof) if dof > 0 else float("nan")
    cov = s2 * np.linalg.inv(design.T @ design)
    return {"logc": float(coef[0]), "a": float(-coef[1]), "cov": cov, "dof": dof, "points": len(x)}


def n_at(fit: dict[str, Any], target: float = TARGET) -> float:
    """n at which c n^-a = target (inf when the law does not fall)."""
    if fit["a"] <= 0:
        return math.inf
    return math.exp((fit["logc"] - math.log(target)) / fit["a"])


def simulate(fit: dict[str, Any], draws: int = 20000) -> np.ndarray:
    """(draws, 2) samples of (log c, -a) from the fit's covariance, Student t with the fit's dof."""
    if fit["dof"] < 1 or not np.all(np.isfinite(fit["cov"])):
        return np.zeros((0, 2))
    rng = np.random.default_rng(0)  # a bench's interval: a stated seed is fine
    z = rng.multivariate_normal(np.zeros(2), fit["cov"], size=draws)
    t: np.ndarray = z / np.sqrt(rng.chisquare(fit["dof"], size=draws) / fit["dof"])[:, None]
    out: np.ndarray = np.array([fit["logc"], -fit["a"]], dtype=float) + t
    return out


def fmt_n(v: float) -> str:
    return "never (the law does not fall)" if not math.isfinite(v) else f"{v:,.0f}"


def summarize(rows: list[dict[str, Any]]) -> None:
    """The table, the laws and the extrapolation, from the results records."""
    cells: dict[tuple[str, int, float | None], dict[int, float]] = {}
    meta: dict[tuple[str, int], dict[str, Any]] = {}
    warm: dict[tuple[str, int], dict[int, float]] = {}  # the side baseline: non-private, public warm start
    for r in rows:
        if r.get("warm"):
            warm.setdefault((r["corpus"], r["n"]), {})[r["seed"]] = r["wf1"]
            continue
        cells.setdefault((r["corpus"], r["n"], r["eps"]), {})[r["seed"]] = r["wf1"]
        m = meta.setdefault(
            (r["corpus"], r["n"]), {"reports": set(), "all": r["all"], "redraws": 0, "delta": {}}
        )
        m["reports"].add(r["reports"])
        m["redraws"] = max(m["redraws"], r["redraws"])
        if r["eps"] is not None:
            m["delta"][r["eps"]] = r["delta"]
    costs: dict[tuple[str, float], dict[int, dict[int, float]]] = {}  # (corpus, eps) -> n -> seed -> cost

    def ms(v: Sequence[float]) -> str:
        sd = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
        return f"{np.mean(v):.3f}±{sd:.3f}"

    print(
        "\n| corpus | n patients | n reports | eps | delta | non-private wF1 | private wF1 | cost mean±sd [min, max] | seeds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for corpus in ("iu", "ct"):
        for n in sorted({k[1] for k in cells if k[0] == corpus}):
            m = meta[(corpus, n)]
            for eps in (1.0, 10.0):
                plain, priv = cells.get((corpus, n, None), {}), cells.get((corpus, n, eps), {})
                seeds = sorted(set(plain) & set(priv))
                if not seeds:
                    continue
                cost = {s: plain[s] - priv[s] for s in seeds}
                costs.setdefault((corpus, eps), {})[n] = cost
                c = list(cost.values())
                reps = "/".join(str(x) for x in sorted(m["reports"]))
                label = f"{n:,} (all)" if m["all"] else f"{n:,}"
                print(
                    f"| {CORPORA[corpus][2]} | {label} | {reps} | {eps:g} | {m['delta'].get(eps, '-'):g} | "
                    f"{ms([plain[s] for s in seeds])} | {ms([priv[s] for s in seeds])} | "
                    f"{ms(c)} [{min(c):+.3f}, {max(c):+.3f}] | {','.join(map(str, seeds))} |"
                )
    if warm:
        print(
            "\nSide baseline (not the product's default): the non-private head with --public-warm-start, "
            "and the cost against it\n"
        )
        print(
            "| corpus | n patients | eps | non-private wF1, warm start | cost against it mean±sd [min, max] |"
        )
        print("| --- | --- | --- | --- | --- |")
        for corpus in ("iu", "ct"):
            for n in sorted(n for c, n in warm if c == corpus):
                base_w = warm[(corpus, n)]
                for eps in (1.0, 10.0):
                    priv = cells.get((corpus, n, eps), {})
                    seeds = sorted(set(base_w) & set(priv))
                    if not seeds:
                        continue
                    c = [base_w[s] - priv[s] for s in seeds]
                    print(
                        f"| {CORPORA[corpus][2]} | {n:,} | {eps:g} | {ms([base_w[s] for s in seeds])} | "
                        f"{ms(c)} [{min(c):+.3f}, {max(c):+.3f}] |"
                    )
    redrawn = {k: v["redraws"] for k, v in meta.items() if v["redraws"]}
    print(
        "\nredraws (a draw lacking a positive for some label), most at any seed: "
        + (", ".join(f"{CORPORA[c][2]} n {n}: {v}" for (c, n), v in sorted(redrawn.items())) or "none")
    )

    laws: dict[tuple[str, float], dict[str, Any]] = {}
    for corpus in ("iu", "ct"):
        for eps in (1.0, 10.0):
            by_n = costs.get((corpus, eps))
            if not by_n:
                continue
            ns = sorted(by_n)
            means = {n: float(np.mean(list(by_n[n].values()))) for n in ns}
            used = [n for n in ns if means[n] > 0]
            left = [n for n in ns if means[n] <= 0]
            name = f"{CORPORA[corpus][2]} eps {eps:g}"
            print(
                f"\nlaw cost(n) = c n^-a, {name}: per-n mean costs "
                + ", ".join(f"{n}: {means[n]:+.4f}" for n in ns)
            )
            if left:
                print(f"  left out (mean cost <= 0, no log): n = {', '.join(map(str, left))}")
            if len(used) < 2:
                print("  fewer than 2 usable points: no fit")
                continue
            fit = fit_law(np.array(used, float), np.array([means[n] for n in used]))
            laws[(corpus, eps)] = fit
            se_a = math.sqrt(fit["cov"][1, 1]) if fit["dof"] > 0 else float("nan")
            se_lc = math.sqrt(fit["cov"][0, 0]) if fit["dof"] > 0 else float("nan")
            tq = _t975(fit["dof"])
            print(
                f"  on mean costs at n = {', '.join(map(str, used))}: a = {fit['a']:.3f} ± {se_a:.3f} (se; 95% "
                f"{fit['a'] - tq * se_a:.3f}..{fit['a'] + tq * se_a:.3f}, t with {fit['dof']} dof), "
                f"c = {math.exp(fit['logc']):.4g} (log c {fit['logc']:.3f} ± {se_lc:.3f})"
            )
            law_at = {n: math.exp(fit["logc"]) * n ** -fit["a"] for n in used}
            print(
                "  the law at the measured n vs the mean cost: "
                + ", ".join(f"{n}: {law_at[n]:.4f} vs {means[n]:+.4f}" for n in used)
            )
            below = [n for i, n in enumerate(ns) if all(means[m] < TARGET for m in ns[i:])]
            if eps == 1.0:
                print(
                    f"  measured: mean cost < {TARGET} at n = "
                    + (", ".join(f"{n:,}" for n in ns if means[n] < TARGET) or "none")
                    + "; "
                    + (
                        f"below it at every measured n from {below[0]:,} up"
                        if below
                        else "it does not stay below it up to the largest measured n"
                    )
                )
            per_seed = []
            for s in sorted({s for v in by_n.values() for s in v}):
                pts = [(n, by_n[n][s]) for n in ns if s in by_n[n] and by_n[n][s] > 0]
                dropped = [n for n in ns if s in by_n[n] and by_n[n][s] <= 0]
                if len(pts) < 2:
                    print(f"  seed {s}: fewer than 2 positive costs, no fit")
                    continue
                f = fit_law(np.array([p[0] for p in pts], float), np.array([p[1] for p in pts]))
                per_seed.append(f)
                print(
                    f"  seed {s}: a = {f['a']:.3f}, c = {math.exp(f['logc']):.4g}"
                    + (f" (cost <= 0 left out at n = {', '.join(map(str, dropped))})" if dropped else "")
                    + (f", n(cost < {TARGET}) = {fmt_n(n_at(f))}" if eps == 1.0 else "")
                )
            if len(per_seed) > 1:
                a_s = [f["a"] for f in per_seed]
                print(
                    f"  per-seed fits: a = {np.mean(a_s):.3f} ± {np.std(a_s, ddof=1):.3f} (mean ± sd over seeds)"
                )
            if eps == 1.0:
                est = n_at(fit)
                sims = simulate(fit)
                line = f"  extrapolation: cost < {TARGET} at eps 1 from n = {fmt_n(est)} (point estimate of the mean-cost law)"
                if len(sims):
                    a_sim = -sims[:, 1]
                    with np.errstate(over="ignore"):
                        nstar = np.where(
                            a_sim > 0,
                            np.exp((sims[:, 0] - math.log(TARGET)) / np.maximum(a_sim, 1e-12)),
                            np.inf,
                        )
                    lo, hi = np.percentile(np.minimum(nstar, 1e300), [2.5, 97.5])  # inf: never
                    lo, hi = (math.inf if v >= 1e300 else v for v in (lo, hi))
                    line += (
                        f"; 95% interval {fmt_n(float(lo))} .. {fmt_n(float(hi))} (the fit's parameter "
                        f"uncertainty; {np.mean(a_sim <= 0):.1%} of draws do not fall at all)"
                    )
                if per_seed:
                    seeds_n = [n_at(f) for f in per_seed]
                    line += f"; per-seed fits {', '.join(fmt_n(v) for v in seeds_n)}"
                print(line)
                measured = max(ns)
                if est > measured:
                    print(
                        f"  (an extrapolation beyond the largest measured n, {measured:,}: the law's form is "
                        "assumed, not measured, there)"
                    )

    for eps in (1.0, 10.0):
        iu, ct = laws.get(("iu", eps)), costs.get(("ct", eps))
        if iu is None or not ct:
            continue
        sims = simulate(iu)
        print(f"\nIU's law at eps {eps:g} checked on CT-RATE (prediction with its 95% interval vs measured):")
        if iu["dof"] < 1 or iu["a"] <= 0:
            print(
                f"  (IU's law here rests on {iu['points']} points with {iu['dof']} dof"
                + (", and rises with n" if iu["a"] <= 0 else "")
                + ": shown for completeness, not a law)"
            )
        for n in sorted(ct):
            pred = math.exp(iu["logc"]) * n ** -iu["a"]
            band = ""
            c = list(ct[n].values())
            if len(sims):
                lo, hi = np.percentile(np.exp(sims[:, 0] + sims[:, 1] * math.log(n)), [2.5, 97.5])
                inside = "inside" if lo <= np.mean(c) <= hi else "outside"
                band = f" (95% {lo:.3f}..{hi:.3f}; the measured mean is {inside})"
            print(f"  n {n:>4}: predicted {pred:.3f}{band}, measured {ms(c)} [{min(c):+.3f}, {max(c):+.3f}]")


def _t975(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, dof)) if dof > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="both", choices=["iu", "ct", "both"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dprad-feature-cache"))
    ap.add_argument("--out", default="", help="run directories and results.jsonl (resumed when present)")
    ap.add_argument("--fit-only", action="store_true", help="no training: the table and fits from --out")
    ap.add_argument(
        "--plain-warm-start",
        action="store_true",
        help="also train the non-private runs with --public-warm-start (not their default) and print the "
        "cost against that baseline beside the table",
    )
    args = ap.parse_args()
    tick = time.perf_counter()
    out = Path(args.out or tempfile.mkdtemp(prefix="dprad-privacy-cost-n-"))
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    print(f"commit {commit}{' (with uncommitted changes in the tree)' if dirty.stdout.strip() else ''}")
    loadavg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores (load average at start {loadavg}); "
        f"python {platform.python_version()}"
    )
    print(f"command: python {' '.join(sys.argv)}")
    print(f"results in {log}")

    def load() -> list[dict[str, Any]]:
        return [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []

    if not args.fit_only:
        done = {(r["corpus"], r["seed"], r["n"], r["eps"] or math.inf, bool(r.get("warm"))) for r in load()}
        variants = [(math.inf, False), (10.0, False), (1.0, False)]
        variants += [(math.inf, True)] if args.plain_warm_start else []
        for corpus in ["iu", "ct"] if args.corpus == "both" else [args.corpus]:
            if not CORPORA[corpus][0].exists():
                print(f"{CORPORA[corpus][0]} is absent: skipped")
                continue
            for seed in [int(s) for s in args.seeds.split(",")]:
                run_cell(corpus, seed, args.cache, out / "runs", done, log, variants)
    summarize(load())
    print(f"\nwall time {time.perf_counter() - tick:.0f} s")


if __name__ == "__main__":
    main()
