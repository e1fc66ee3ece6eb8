"""The runbook's dp-head measurements: one feature pass, then DP-SGD on the head for several settings.

    python bench/dp_head_sweep.py [--data ../shared/data/iu-xray/indiana_reports.csv]

Prints, per (eps, batch, epochs, lr, clip): the calibrated sigma, steps, and test weighted F1 / macro
AUROC at threshold 0.5 — all measured in this one run on the same patient-level split and features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

SETTINGS = [  # (eps, batch, epochs, lr, clip, warm start on the public synthetic corpus); eps None = non-private
    (None, 1024, 100, 10.0, 1.0, False),
    (10.0, 1024, 100, 5.0, 1.0, False),
    (10.0, 1024, 100, 5.0, 1.0, True),
    (10.0, 1024, 40, 2.0, 1.0, False),
    (10.0, 1024, 40, 10.0, 0.5, False),
    (1.0, 1024, 40, 2.0, 1.0, False),
    (1.0, 1024, 40, 2.0, 1.0, True),
    (1.0, 1024, 20, 5.0, 1.0, False),
    (1.0, 2048, 100, 5.0, 1.0, False),
    (1.0, 512, 20, 2.0, 1.0, False),
    (0.3, 1024, 40, 2.0, 1.0, False),
    (0.3, 1024, 40, 2.0, 1.0, True),
]


def main() -> None:
    from opacus import GradSampleModule

    from dprad.config import DataConfig, RunConfig
    from dprad.data.dataset import PoissonSampler, encode
    from dprad.local_models import load_tokenizer, resolve_model_dir
    from dprad.metrics.scores import f1_scores, macro_auroc
    from dprad.nn.features import encoder_features
    from dprad.nn.inputs import head_inputs
    from dprad.nn.loss import loss_per_example
    from dprad.nn.model import FeatureHead, load_encoder
    from dprad.nn.public import public_corpus, warm_start
    from dprad.privacy import calibrate_noise, default_delta
    from dprad.privacy.dp_step import plain_step, private_step
    from dprad.privacy.noise import NoiseSource
    from dprad.stages.train import prepare

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/iu-xray/indiana_reports.csv")
    )
    args = ap.parse_args()
    schema, splits, _ = prepare(RunConfig(data=DataConfig(path=args.data)))
    tok, encoder = load_tokenizer("minilm"), load_encoder(resolve_model_dir("minilm"))
    public = public_corpus(encoder, tok, pooling="mean", max_length=256, max_tokens=8192)
    center = public.center
    x_pub, y_pub, m_pub = public.labelled[schema.name]
    enc = {
        k: encode(v, tok, schema, max_length=256) for k, v in (("train", splits.train), ("test", splits.test))
    }
    x = {
        k: head_inputs(encoder_features(encoder, e, pooling="mean", max_tokens=8192), center)
        for k, e in enc.items()
    }
    n, hidden = x["train"].shape
    delta = default_delta(n)
    print(f"{args.data}: train {n}, test {len(enc['test'])}, delta {delta:g}")
    print(
        f"{'eps':>5} {'batch':>6} {'epochs':>6} {'lr':>5} {'clip':>5} {'warm':>5} {'sigma':>7} {'steps':>6} {'wF1':>6} {'AUROC':>6}"
    )
    for eps, batch, epochs, lr, clip, warm in SETTINGS:
        batch = min(batch, n)
        q = batch / n
        steps = max(1, round(epochs / q))
        sigma = calibrate_noise(target_epsilon=eps, sample_rate=q, steps=steps, delta=delta) if eps else 0.0
        torch.manual_seed(0)
        head = FeatureHead(hidden, len(schema))
        if warm:
            warm_start(head, head_inputs(x_pub, center), y_pub, m_pub)
        module = GradSampleModule(head, loss_reduction="sum") if eps else head
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        sampler = PoissonSampler(n, q, np.random.default_rng(0))
        gen = NoiseSource.from_seed(1).stream("gradient")  # a benchmark: a stated seed is fine

        def loss_fn(idx: np.ndarray, module: torch.nn.Module = module) -> torch.Tensor:
            return loss_per_example(
                module(torch.from_numpy(x["train"][idx])), enc["train"].targets[idx], enc["train"].mask[idx]
            )

        for _ in range(steps):
            idx = sampler.sample()
            batches = [idx] if len(idx) else []
            if eps:
                private_step(
                    params,
                    opt,
                    batches,
                    loss_fn,
                    max_grad_norm=clip,
                    noise_multiplier=sigma,
                    expected_batch_size=q * n,
                    noise=gen,
                )
            else:
                plain_step(params, opt, batches, loss_fn, batch_size=len(idx))
        with torch.no_grad():
            probs = torch.sigmoid(head(torch.from_numpy(x["test"]))).numpy()
        te = enc["test"]
        wf1 = f1_scores(te.targets, probs, mask=te.mask)["weighted"]
        auc = macro_auroc(te.targets, probs, mask=te.mask)[0]
        print(
            f"{eps or '-':>5} {batch:>6} {epochs:>6} {lr:>5} {clip:>5} {warm!s:>5} {sigma:>7.2f} {steps:>6} {wf1:>6.3f} {auc:>6.3f}"
        )


if __name__ == "__main__":
    main()
