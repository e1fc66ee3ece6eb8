"""An encoder adapted on public text, for the private head to read: MiniLM fully fine-tuned without
privacy on dprad's public synthetic corpus of one modality (the reports `features.public_reports` makes,
from their own seed stream, so they share nothing with a user's corpus), saved as a local Hugging Face
directory that `--model DIR` and `bench/encoders.py --variant pub:name=DIR` read.

    python bench/public_adapt.py --modality cxr|ct --out DIR [--epochs 3] [--lr 5e-5] [--threads 1]

The fine-tuning is `dprad train` on those reports with `--mode full --no-rule-prior --no-select-epoch`:
without the rule prior, because the rules read the synthetic templates almost perfectly and the encoder
would then learn nothing. It costs no privacy (no private report is read). It prints the adapted model's
weighted F1 on its own synthetic test split, and the comparison command. The runbook (docs/how-to/choosing.md, item 1)
has what it measured: nothing on IU X-ray, less than the spread on CT-RATE at eps 1, so it is not a
default.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def main() -> None:
    from dprad.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from dprad.data.schemas import CHEXPERT14, CTRATE18
    from dprad.data.table import reports_frame, write_table
    from dprad.errors import DpradError
    from dprad.local_models import DEFAULT_ENCODER, resolve_model_dir
    from dprad.nn.public import public_reports
    from dprad.stages.train import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--modality", required=True, choices=["cxr", "ct"])
    ap.add_argument("--out", required=True, help="the adapted encoder's directory (must not exist)")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"--out {out}: already exists")
    schema = CHEXPERT14 if args.modality == "cxr" else CTRATE18
    base = resolve_model_dir(DEFAULT_ENCODER)
    try:  # the settings are checked before anything is generated or trained
        train_cfg = TrainConfig(
            mode="full",
            probe=True,
            rule_prior=False,
            select_epoch=False,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            threads=args.threads,
        )
    except DpradError as err:
        raise SystemExit(f"public_adapt.py: {err}") from None
    with tempfile.TemporaryDirectory(prefix="dprad-public-adapt-") as tmp:
        data = Path(tmp) / f"public-{args.modality}.csv"
        reports = public_reports(args.modality)
        write_table(reports_frame(reports, schema), data)
        cfg = RunConfig(
            data=DataConfig(path=str(data), schema=schema.name),
            model=ModelConfig(name=DEFAULT_ENCODER),
            train=train_cfg,
        )
        res = train(cfg, Path(tmp) / "run")
        staged = Path(tmp) / "encoder"
        shutil.copytree(res.run_dir / "model" / "encoder", staged)
        for name in TOKENIZER_FILES:  # the run saves the encoder's weights; the tokenizer is MiniLM's own
            shutil.copy2(base / name, staged / name)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), out)  # whole, or not at all
    f1 = res.metrics["test"]["threshold_0.5"]["weighted_f1"]
    print(
        f"{len(reports)} public {args.modality} reports; weighted F1 on their own test split {f1:.3f} (at 0.5)"
    )
    print(f"adapted encoder: {out}")
    corpus = "iu" if args.modality == "cxr" else "ct"
    print(
        f"compare: python bench/encoders.py --corpus {corpus} --eps 10,1 "
        f"--variant mean-256:name=minilm,pooling=mean,max_length=256 --variant pub:name={out},pooling=mean,max_length=256"
    )


if __name__ == "__main__":
    main()
