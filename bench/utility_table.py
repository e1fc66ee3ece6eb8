"""The runbook's utility table, from the product itself: `dprad train` defaults on the real corpora at
eps in {1, 10, inf}, split seeds 0, 1, 2, with the rule teacher scored on the same test split.

    python bench/utility_table.py [--corpus iu|ct|both] [--cache DIR]

Weighted F1 at the shipped thresholds (DP thresholds for private runs, validation-fitted for non-private
ones) and at 0.5; mean and spread over the split seeds. Encoder features are cached in --cache (they are
derived from the reports: keep the folder private), so after the first pass each run takes seconds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = {
    "iu": (DATA / "iu-xray" / "indiana_reports.csv", "iu-xray"),
    "ct": (DATA / "ct-rate-manual" / "train.csv", "ct-rate-manual"),
}


def teacher_f1(run: Path) -> float:
    """The rule teacher's weighted F1 on the run's own test split (its readings as decisions)."""
    from dprad.data.reports import label_matrix
    from dprad.data.schemas import LabelSchema
    from dprad.metrics.scores import f1_scores
    from dprad.priors import report_prior_features, rule_predictions
    from dprad.run import RunRecord

    reports, _ = RunRecord.open(run).split_reports("test")
    schema = LabelSchema.from_dict(json.loads((run / "schema.json").read_text()), source=str(run))
    y, m = label_matrix(reports, schema)
    pred = rule_predictions(report_prior_features(reports, schema)).astype(float)
    return f1_scores(y, pred, mask=m)["weighted"]


def main() -> None:
    from dprad.config import DataConfig, PrivacyConfig, RunConfig, TrainConfig
    from dprad.stages.train import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="both", choices=["iu", "ct", "both"])
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dprad-feature-cache"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eps", default="1,10,inf")
    args = ap.parse_args()
    corpora = ["iu", "ct"] if args.corpus == "both" else [args.corpus]
    seeds = [int(s) for s in args.seeds.split(",")]
    epsilons = [float(e) for e in args.eps.split(",")]
    out = Path(tempfile.mkdtemp(prefix="dprad-utility-"))
    for corpus in corpora:
        path, fmt = CORPORA[corpus]
        if not path.exists():
            print(f"{path} is absent: skipped")
            continue
        print(f"\n{corpus}: {path.name}")
        print(
            f"{'eps':>5} {'seed':>4} {'wF1 shipped':>11} {'wF1 @0.5':>9} {'AUROC':>6} {'rules':>6} {'eps spent':>9}  zero-recall labels (>=20 pos)  s"
        )
        for eps in epsilons:
            shipped, half, rules = [], [], []
            for seed in seeds:
                tick = time.perf_counter()
                private = np.isfinite(eps)
                cfg = RunConfig(
                    data=DataConfig(path=str(path), format=fmt, split_seed=seed),
                    privacy=PrivacyConfig(epsilon=eps if private else None),
                    train=TrainConfig(feature_cache=args.cache),
                )
                run = out / f"{corpus}-{eps}-{seed}"
                res = train(cfg, run)
                test = res.metrics["test"]
                at_th, at_half = test["threshold_val"], test["threshold_0.5"]
                zero = [r["label"] for r in at_th["per_label"] if r["support"] >= 20 and r["recall"] == 0]
                t_f1 = teacher_f1(run)
                shipped.append(at_th["weighted_f1"])
                half.append(at_half["weighted_f1"])
                rules.append(t_f1)
                spent = f"{res.ledger.epsilon:.3f}" if res.ledger.epsilon is not None else "-"
                print(
                    f"{eps:>5g} {seed:>4} {at_th['weighted_f1']:>11.3f} {at_half['weighted_f1']:>9.3f} "
                    f"{at_th['macro_auroc']:>6.3f} {t_f1:>6.3f} {spent:>9}  {','.join(zero) or '-':<28} "
                    f"{time.perf_counter() - tick:.0f}",
                    flush=True,
                )
            print(
                f"{eps:>5g} mean {np.mean(shipped):>11.3f} {np.mean(half):>9.3f} {'':>6} {np.mean(rules):>6.3f}"
                f"   spread (min..max) shipped {min(shipped):.3f}..{max(shipped):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
