"""One-run canary audits on the real IU reports: the empirical epsilon lower bound beside the ledger's.

    python bench/canary_audit.py [--canaries 1000] [--rare-tokens] [--eps inf,1,4,10] [--train-reports N]

Each run is a normal `dprad train` run with --audit-canaries; the bound comes from its audit.json. A
lower bound above the ledger's epsilon would be a privacy bug, and the script says so loudly.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

IU = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu-xray" / "indiana_reports.csv"


def main() -> None:
    from dprad.config import DataConfig, PrivacyConfig, RunConfig, TrainConfig
    from dprad.stages.train import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--canaries", type=int, default=1000)
    ap.add_argument("--rare-tokens", action="store_true")
    ap.add_argument("--eps", default="inf,1,4,10")
    ap.add_argument("--train-reports", type=int, default=0, help="keep only this many reports (0: all)")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dprad-feature-cache"))
    args = ap.parse_args()
    if not IU.exists():
        raise SystemExit(f"{IU} is absent")
    reports = None
    if args.train_reports:
        from dprad.data.read import read_reports

        result, _, _ = read_reports(IU, format="iu-xray")
        reports = [r for r in result.reports if r.labels is not None][: args.train_reports]
    out = Path(tempfile.mkdtemp(prefix="dprad-canary-"))
    print(f"IU, {args.canaries} canaries{' with rare tokens' if args.rare_tokens else ''}")
    print(
        f"{'eps':>6} {'ledger eps':>10} {'n':>5} {'guesses':>7} {'right':>5} {'lower bound':>11} {'ceiling':>7}  verdict"
    )
    for e in args.eps.split(","):
        eps = float(e)
        private = eps != float("inf")
        cfg = RunConfig(
            data=DataConfig(path=str(IU), format="iu-xray", schema="chexpert14" if reports else None),
            privacy=PrivacyConfig(epsilon=eps if private else None),
            train=TrainConfig(
                audit_canaries=args.canaries, audit_rare_tokens=args.rare_tokens, feature_cache=args.cache
            ),
        )
        res = train(cfg, out / f"eps-{e}", reports=reports)
        a = json.loads((res.run_dir / "audit.json").read_text())["canary"]
        led = res.ledger.epsilon
        verdict = "PRIVACY BUG: bound exceeds the ledger" if a["exceeds_ledger"] else "consistent"
        print(
            f"{e:>6} {led if led is not None else float('inf'):>10.3f} {res.ledger.dataset_size:>5} "
            f"{a['guesses']:>7} {a['correct']:>5} {a['epsilon_lower_bound']:>11.3f} {a['ceiling']:>7.3f}  {verdict}",
            flush=True,
        )


if __name__ == "__main__":
    main()
