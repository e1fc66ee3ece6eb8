"""DP-LoRA vs non-private LoRA on the same model, data and batches, measured side by side in one run.

    python bench/train_overhead.py [--steps 6] [--batch 64] [--data ../shared/data/iu-xray/indiana_reports.csv]

Each configuration runs in its own subprocess (so that peak memory is its own), in alternating order,
and the table prints step time, examples/s and peak RSS for each, and the ratios:
- DP-LoRA (opacus per-sample gradients + clip + noise) / non-private LoRA;
- a DP step padded to 256 tokens / the same DP step with length-sorted micro-batches (dprad's default).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = ("lora", "dp-lora", "dp-lora-pad256")


def one(config: str, steps: int, batch: int, data: str | None, max_tokens: int) -> dict[str, float]:
    import numpy as np
    import torch
    from opacus import GradSampleModule

    from dprad import CHEXPERT14, SynthConfig, generate_reports, read_reports
    from dprad.data.dataset import collate, encode, micro_batches
    from dprad.local_models import load_tokenizer, resolve_model_dir
    from dprad.nn.loss import loss_per_example
    from dprad.nn.model import ReportClassifier, attach_lora, load_encoder
    from dprad.privacy.dp_step import plain_step, private_step
    from dprad.privacy.noise import NoiseSource

    torch.manual_seed(0)
    if data and Path(data).exists():
        reports = [r for r in read_reports(data)[0].reports if r.labels is not None]
    else:
        reports = generate_reports(SynthConfig(n_patients=600, seed=0))
    model_dir = resolve_model_dir("minilm")
    enc = encode(reports, load_tokenizer("minilm"), CHEXPERT14, max_length=256)
    if config.endswith("pad256"):  # every report padded to 256 tokens, as a fixed-length pipeline would
        pad = np.full(len(enc), 256)
        enc = type(enc)(
            [np.concatenate([x, np.full(256 - len(x), enc.pad_id)]) for x in enc.ids],
            pad,
            enc.targets,
            enc.mask,
            enc.pad_id,
        )
    encoder = attach_lora(
        load_encoder(model_dir), kind="bert", r=8, alpha=16, dropout=0.0, target_modules=None
    )
    model = ReportClassifier(encoder, len(CHEXPERT14), pooling="mean")
    model.train()
    private = config.startswith("dp")
    module = GradSampleModule(model, batch_first=True, loss_reduction="sum") if private else model
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(enc), size=batch, replace=False) for _ in range(steps + 1)]

    def loss_fn(idx: np.ndarray) -> torch.Tensor:
        ids, att, _, _ = collate(enc, idx)
        return loss_per_example(module(ids, att), enc.targets[idx], enc.mask[idx])

    gen = NoiseSource.from_seed(0).stream("gradient")  # a benchmark: a stated seed is fine
    times = []
    for i, idx in enumerate(batches):
        mbs = micro_batches(idx, enc.lengths, max_tokens=max_tokens)
        tick = time.perf_counter()
        if private:
            private_step(
                params,
                opt,
                mbs,
                loss_fn,
                max_grad_norm=1.0,
                noise_multiplier=1.0,
                expected_batch_size=batch,
                noise=gen,
            )
        else:
            plain_step(params, opt, mbs, loss_fn, batch_size=batch)
        if i:  # the first step warms up
            times.append(time.perf_counter() - tick)
    step = float(np.median(times))
    return {
        "step_s": step,
        "examples_per_s": batch / step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per configuration")
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/iu-xray/indiana_reports.csv")
    )
    ap.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.batch, args.data, args.max_tokens)))
        return
    results: dict[str, list[dict[str, float]]] = {c: [] for c in CONFIGS}
    for _ in range(args.rounds):
        for c in CONFIGS:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                c,
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--max-tokens",
                str(args.max_tokens),
                "--data",
                args.data,
            ]
            out = (
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            results[c].append(json.loads(out))
    best = {c: min(r, key=lambda x: x["step_s"]) for c, r in results.items()}
    print(
        f"MiniLM-L6 + LoRA r=8, logical batch {args.batch}, {args.steps} timed steps x {args.rounds} rounds, "
        f"data: {args.data if Path(args.data).exists() else 'synthetic'}"
    )
    print(f"{'config':<16}{'step (s)':>10}{'examples/s':>12}{'peak RSS (MB)':>15}")
    for c, r in best.items():
        print(f"{c:<16}{r['step_s']:>10.3f}{r['examples_per_s']:>12.1f}{r['peak_rss_mb']:>15.0f}")
    print(f"ratio DP-LoRA / LoRA step time: {best['dp-lora']['step_s'] / best['lora']['step_s']:.3f}x")
    print(
        f"ratio DP padded-256 / DP length-sorted micro-batches: "
        f"{best['dp-lora-pad256']['step_s'] / best['dp-lora']['step_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
