"""The runbook's federated table: each hospital alone (DP), pooled (DP, as if the reports could be pooled)
and federated (DP), at eps 1, 10 and non-private, on the synthetic corpus's three sites and on IU and
CT-RATE each split into three hospitals of 60 / 25 / 15 % of patients; split seeds 0, 1, 2.

    python bench/federated_table.py [--corpus synth,iu,ct] [--seeds 0,1,2] [--eps 1,10,inf] [--rounds 10]

Every condition runs dprad's own federation code (prepare_site, run_federation) with the in-process
transport, which trains the same model as Flower's deployment engine (tests/federate/test_flower.py).
One patient-level split per seed is shared by every condition: a hospital's test split is the same
reports whether its model was trained alone, pooled or federated. Weighted F1 at the shipped thresholds
(from noisy histograms when private); "alone" overall: each hospital's own model on its own test split,
counts summed over hospitals. Features are cached in --cache (derived from reports: keep it private).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = {
    "iu": (DATA / "iu-xray" / "indiana_reports.csv", "iu-xray"),
    "ct": (DATA / "ct-rate-manual" / "train.csv", "ct-rate-manual"),
}
SHARES = (0.60, 0.25, 0.15)
SYNTH_SEED = 20261130  # the synthetic corpus of the table: not the public corpus's seed (see data/synth.py)


def hospitals(corpus: str, seed: int) -> tuple[list[list[Any]], str]:
    """Three hospitals' labelled reports, each carrying its split (one patient-level split per seed)."""
    from dprad.config import DataConfig
    from dprad.data.read import read_data
    from dprad.data.splits import split_by_patient

    if corpus == "synth":
        from dprad.data.synth import SynthConfig, generate_reports, schema_for

        reports, schema = generate_reports(SynthConfig(n_patients=1500, seed=SYNTH_SEED)), schema_for("cxr")
    else:
        path, fmt = CORPORA[corpus]
        result, schema, _ = read_data(DataConfig(path=str(path), format=fmt))
        reports = result.reports
    reports = [r for r in reports if r.labels is not None]
    splits = split_by_patient(reports, schema, seed=seed)
    reports = [
        replace(r, attrs={**r.attrs, "split": name}) for name, rs in splits.as_dict().items() for r in rs
    ]
    if corpus == "synth":
        sites = sorted({str(r.attrs["site"]) for r in reports})
        return [[r for r in reports if r.attrs["site"] == s] for s in sites], schema.name
    patients = sorted({r.patient_id for r in reports})
    order = np.random.default_rng([seed, 0x5175]).permutation(len(patients))
    cuts = np.cumsum([round(s * len(patients)) for s in SHARES[:-1]])
    where = {patients[i]: int(np.searchsorted(cuts, k, side="right")) for k, i in enumerate(order)}
    return [[r for r in reports if where[r.patient_id] == h] for h in range(3)], schema.name


def federate(
    sites: list[Path], work: Path, *, schema: str, rounds: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A federation of fresh copies of ``sites`` (a federation spends their budgets) -> (federation.json,
    the global head)."""
    import torch

    from dprad.federate.local import LocalTransport
    from dprad.federate.server import FederationConfig, run_federation

    n = len(list(work.glob("fed-*")))
    copies = []
    for s in sites:
        copies.append(work / f"fed-{n}-{s.name}")
        shutil.copytree(s, copies[-1])
    out = work / f"fed-{n}"
    out.mkdir()
    log = run_federation(
        FederationConfig(schema=schema, rounds=rounds, min_clients=1), LocalTransport(copies), out
    )
    model = {k: v.numpy() for k, v in torch.load(out / "model" / "global.pt", weights_only=True).items()}
    return log, model


def wf1(ev: dict[str, Any]) -> float:
    return float(ev["headline"]["weighted_f1"]["estimate"])


def cell(corpus: str, seed: int, eps: float, rounds: int, cache: str, work: Path) -> dict[str, float]:
    """One (corpus, split seed, eps): weighted F1 overall and per hospital for the three conditions."""
    from dprad.config import DataConfig, PrivacyConfig, RunConfig, TrainConfig
    from dprad.federate.site import Site, prepare_site
    from dprad.metrics.counts import count_evaluation

    groups, schema = hospitals(corpus, seed)
    private = bool(np.isfinite(eps))
    cfg = RunConfig(
        data=DataConfig(schema=schema),
        privacy=PrivacyConfig(epsilon=eps if private else None),
        train=TrainConfig(mode="head", feature_cache=cache),
    )
    dirs = []
    for k, reps in enumerate([*groups, [r for g in groups for r in g]]):
        name = f"h{k + 1}" if k < 3 else "pooled"
        dirs.append(work / f"prep-{name}")
        prepare_site(cfg, dirs[-1], name=name, rounds=rounds, local_epochs=None, reports=reps)
    out: dict[str, float] = {}
    fed, _ = federate(dirs[:3], work, schema=schema, rounds=rounds)
    out["federated"] = wf1(fed["evaluation"]["overall"])
    for k in range(3):
        out[f"federated h{k + 1}"] = wf1(fed["evaluation"]["sites"][f"h{k + 1}"])
    pooled, pooled_model = federate(dirs[3:], work, schema=schema, rounds=rounds)
    out["pooled"] = wf1(pooled["evaluation"]["overall"])
    alone_counts, alone_boot = [], []
    for k in range(3):
        site = Site(dirs[k])  # evaluation only: a prepared site's test split, no budget spent
        labels = list(site.info.labels)
        counts, boot = site.evaluate(pooled_model, np.asarray(pooled["thresholds"]["values"]), n_boot=200)
        out[f"pooled h{k + 1}"] = wf1(count_evaluation(counts, boot, labels=labels))
        alone, alone_model = federate(dirs[k : k + 1], work, schema=schema, rounds=rounds)
        out[f"alone h{k + 1}"] = wf1(alone["evaluation"]["sites"][f"h{k + 1}"])
        counts, boot = site.evaluate(alone_model, np.asarray(alone["thresholds"]["values"]), n_boot=200)
        alone_counts.append(counts)
        alone_boot.append(boot)
    out["alone"] = wf1(count_evaluation(np.sum(alone_counts, 0), np.sum(alone_boot, 0), labels=labels))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="synth,iu,ct")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eps", default="1,10,inf")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dprad-feature-cache"))
    args = ap.parse_args()
    columns = [
        "alone",
        "pooled",
        "federated",
        *(f"{c} h{k}" for c in ("alone", "pooled", "federated") for k in (1, 2, 3)),
    ]
    for corpus in args.corpus.split(","):
        if corpus != "synth" and not CORPORA[corpus][0].exists():
            print(f"{CORPORA[corpus][0]} is absent: {corpus} skipped")
            continue
        print(
            f"\n{corpus}: weighted F1 at the shipped thresholds, {args.rounds} rounds; mean [min..max] over split seeds {args.seeds}"
        )
        for eps in [float(e) for e in args.eps.split(",")]:
            rows = []
            for seed in [int(s) for s in args.seeds.split(",")]:
                tick = time.perf_counter()
                work = Path(tempfile.mkdtemp(prefix=f"dprad-fed-{corpus}-"))
                try:
                    rows.append(cell(corpus, seed, eps, args.rounds, args.cache, work))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                r = rows[-1]
                print(
                    f"  eps {eps:g} seed {seed}: "
                    + " ".join(f"{c}={r[c]:.3f}" for c in columns)
                    + f"  ({time.perf_counter() - tick:.0f} s)",
                    flush=True,
                )
            summary = {c: [r[c] for r in rows] for c in columns}
            print(
                f"eps {eps:g} | "
                + " | ".join(
                    f"{c} {np.mean(v):.3f} [{min(v):.3f}..{max(v):.3f}]" for c, v in summary.items()
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
