"""Rule-teacher speed: label 10,000 synthetic chest X-ray reports and print reports/s.

python bench/label_speed.py [--reports 10000]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    from dprad import CHEXPERT14, SynthConfig, generate_reports
    from dprad.labeling.agreement import agreement
    from dprad.labeling.rules import CHEXPERT_RULES, label_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", type=int, default=10_000)
    args = ap.parse_args()
    reports = generate_reports(SynthConfig(n_patients=int(args.reports / 1.6) + 50, seed=0))[: args.reports]
    tick = time.perf_counter()
    labels = [label_text(r.text, CHEXPERT_RULES) for r in reports]
    elapsed = time.perf_counter() - tick
    rep = agreement(labels, [r.labels for r in reports], CHEXPERT14)
    print(
        f"{len(reports)} synthetic reports labelled by the rule teacher in {elapsed:.2f} s "
        f"({len(reports) / elapsed:.0f} reports/s); weighted F1 against the synthetic labels {rep['weighted_f1']:.3f}"
    )


if __name__ == "__main__":
    main()
