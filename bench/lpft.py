"""DP-LP-FT (`--mode lora`, the product's defaults) next to the private head and the rule teacher, on the
real corpora, split seeds 0, 1, 2.

    python bench/lpft.py [--corpus iu|ct|both] [--eps 1,10,inf] [--seeds 0,1,2] [--subsample N]
                         [--set lr=1e-3 --set epochs=2 ...] [--cache DIR]

Weighted F1 on the test split at the shipped thresholds and at 0.5, and on the validation split (the
split that settings are chosen on: `--set` tries phase-2 settings without touching the test split's
numbers in the choice), the probe's and the fine-tuning's epsilon, and wall time per run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = {
    "iu": (DATA / "iu-xray" / "indiana_reports.csv", "iu-xray"),
    "ct": (DATA / "ct-rate-manual" / "train.csv", "ct-rate-manual"),
}
SECTIONS = {"lr": "train", "epochs": "train", "batch_size": "train", "probe_share": "train", "probe": "train"}
SECTIONS |= {"layers": "lora", "r": "lora", "max_grad_norm": "privacy", "threshold_share": "privacy"}
SECTIONS |= {"max_length": "model"}


def parse_sets(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in SECTIONS:
            raise SystemExit(f"--set {item}: unknown setting (one of {', '.join(SECTIONS)})")
        out[key] = (
            None if value == "none" else (value == "true" if value in ("true", "false") else float(value))
        )
        if key in ("batch_size", "layers", "r", "max_length") and out[key] is not None:
            out[key] = int(out[key])  # type: ignore[call-overload]
    return out


def main() -> None:
    from dprad.config import DataConfig, PrivacyConfig, RunConfig, TrainConfig
    from dprad.stages.train import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="iu", choices=["iu", "ct", "both"])
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dprad-feature-cache"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eps", default="1,10,inf")
    ap.add_argument("--modes", default="head,lora")
    ap.add_argument("--set", action="append", default=[], help="phase-2 setting, e.g. lr=1e-3 (lora runs)")
    ap.add_argument("--subsample", type=int, default=0, help="keep this many training reports (0: all)")
    ap.add_argument("--out", default="")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    args = ap.parse_args()
    sets = parse_sets(args.set)
    corpora = ["iu", "ct"] if args.corpus == "both" else [args.corpus]
    out = Path(args.out or tempfile.mkdtemp(prefix="dprad-lpft-"))
    print(f"runs in {out}; lora settings: {sets or 'product defaults'}")
    for corpus in corpora:
        path, fmt = CORPORA[corpus]
        if not path.exists():
            print(f"{path} is absent: skipped")
            continue
        print(f"\n{corpus}: {path.name}")
        print(
            f"{'mode':>5} {'eps':>5} {'seed':>4} {'test shipped':>12} {'test @0.5':>9} {'val shipped':>11} {'eps probe/ft':>13} {'s':>6}"
        )
        for mode in args.modes.split(","):
            for eps in [float(e) for e in args.eps.split(",")]:
                rows = []
                for seed in [int(s) for s in args.seeds.split(",")]:
                    tick = time.perf_counter()
                    private = bool(np.isfinite(eps))
                    cfg = RunConfig(
                        data=DataConfig(path=str(path), format=fmt, split_seed=seed),
                        privacy=PrivacyConfig(epsilon=eps if private else None),
                        train=TrainConfig(mode=mode, feature_cache=args.cache, threads=args.threads or None),
                    )
                    if mode == "lora":
                        for key, value in sets.items():
                            sec = SECTIONS[key]
                            cfg = cfg.with_(**{sec: replace(getattr(cfg, sec), **{key: value})})
                    reports = None
                    if args.subsample:
                        from dprad.stages.plan import prepare

                        schema, splits, _ = prepare(
                            cfg
                        )  # the same patient-level split, then fewer train reports
                        rng = np.random.default_rng(seed)
                        keep = rng.choice(
                            len(splits.train), size=min(args.subsample, len(splits.train)), replace=False
                        )
                        reports = [
                            replace(r, attrs={**r.attrs, "split": name})
                            for name, reps in (
                                ("train", [splits.train[i] for i in sorted(keep)]),
                                ("val", splits.val),
                                ("test", splits.test),
                            )
                            for r in reps
                        ]
                        cfg = cfg.with_(data=replace(cfg.data, schema=schema.name))
                    run = out / f"{corpus}-{mode}-{eps}-{seed}-{args.subsample or 'all'}"
                    res = train(cfg, run, reports=reports, overwrite=True)
                    test, val = res.metrics["test"], res.metrics["val"]
                    parts = {p["part"].split(" ")[0]: p["epsilon"] for p in res.ledger.parts}
                    eps_txt = (
                        f"{parts.get('linear', 0):.2f}/{parts.get('fine-tuning', parts.get('training', 0)):.2f}"
                        if private
                        else "-"
                    )
                    row = (
                        test["threshold_val"]["weighted_f1"],
                        test["threshold_0.5"]["weighted_f1"],
                        val["threshold_val"]["weighted_f1"],
                    )
                    rows.append(row)
                    print(
                        f"{mode:>5} {eps:>5g} {seed:>4} {row[0]:>12.3f} {row[1]:>9.3f} {row[2]:>11.3f} {eps_txt:>13} {time.perf_counter() - tick:>6.0f}",
                        flush=True,
                    )
                a = np.array(rows)
                print(
                    f"{mode:>5} {eps:>5g} mean {a[:, 0].mean():>12.3f} {a[:, 1].mean():>9.3f} {a[:, 2].mean():>11.3f}"
                    f"   (test shipped {a[:, 0].min():.3f}..{a[:, 0].max():.3f})",
                    flush=True,
                )
    (out / "settings.json").write_text(json.dumps(sets))


if __name__ == "__main__":
    main()
