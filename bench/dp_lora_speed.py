"""DP-LoRA end to end on IU X-ray: dprad's pipeline vs the opacus-tutorial way, side by side in one run.

    python bench/dp_lora_speed.py [--train 512] [--test 256] [--batch 256] [--epochs 2] [--k 2]
                                  [--baseline-lora all|top]

Same encoder (MiniLM-L6, LoRA r=8 on query/value, mean pooling, linear head), same data, same
(sigma, C, q, steps), same initial weights, both Poisson-sampled:

(a) dprad: LoRA in the top k layers; logical batch of ``--batch`` (Poisson, q = 1 / ceil(n / batch), as
    opacus's loader), length-sorted micro-batches under ``--max-tokens`` with dynamic padding, the frozen
    bottom (embeddings + first N - k layers) run once per report and cached (``dprad.nn.prefix_cache``),
    ``dprad.privacy.dp_step.private_step`` over the top k layers. Its time includes the cache pass.
(b) the opacus tutorial: every report padded to 256 tokens in a TensorDataset, a DataLoader with
    batch size = the same expected batch, ``PrivacyEngine().make_private(module, optimizer, data_loader)``
    (Poisson sampling by default) and ``BatchMemoryManager`` for physical batches of ``--physical``.
    LoRA in all layers (peft's default: DP-LoRA as a user writes it, and dprad's dp-lora before
    ``--lora-layers``), or with ``--baseline-lora top`` the same top-k model as (a), which isolates what
    the pipeline alone (no padding, cached prefix) buys.

Prints reports/s for both (training reports processed / wall time, and / CPU time: on a shared machine
the CPU time is the steadier measure), the ratios, and the weighted F1 at threshold 0.5 and macro AUROC
of both models on a held-out patient-level test subset, evaluated the same way.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/iu-xray/indiana_reports.csv"
PAD = 256


def load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from dprad import CHEXPERT14, read_reports
    from dprad.data.dataset import encode
    from dprad.data.splits import split_by_patient
    from dprad.local_models import load_tokenizer

    reports = [r for r in read_reports(str(args.data), format="iu-xray")[0].reports if r.labels is not None]
    splits = split_by_patient(reports, CHEXPERT14, seed=0)
    rng = np.random.default_rng(0)
    train = [splits.train[i] for i in sorted(rng.choice(len(splits.train), args.train, replace=False))]
    test = [splits.test[i] for i in sorted(rng.choice(len(splits.test), args.test, replace=False))]
    tok = load_tokenizer("minilm")
    return (
        encode(train, tok, CHEXPERT14, max_length=PAD),
        encode(test, tok, CHEXPERT14, max_length=PAD),
        CHEXPERT14,
    )


def build(args: argparse.Namespace, num_labels: int, *, top_only: bool) -> tuple[torch.nn.Module, Any]:
    """The peft encoder (LoRA r=8 on query/value, in the top k layers or in all) and the head's initial state."""
    from dprad.local_models import resolve_model_dir
    from dprad.nn.model import attach_lora, hidden_size, load_encoder
    from dprad.nn.prefix_cache import attach_top_lora

    torch.manual_seed(0)
    base = load_encoder(resolve_model_dir("minilm"))
    encoder = (
        attach_top_lora(base, k=args.k, r=8, alpha=16, dropout=0.0)
        if top_only
        else attach_lora(base, kind="bert", r=8, alpha=16, dropout=0.0, target_modules=None)
    )
    head = torch.nn.Linear(hidden_size(encoder), num_labels)
    return encoder, head.state_dict()


def evaluate(model: torch.nn.Module, enc: Any, max_tokens: int) -> tuple[float, float]:
    """(weighted F1 at 0.5, macro AUROC) over the test subset, dynamic padding, no gradients."""
    from dprad.data.dataset import collate, micro_batches
    from dprad.metrics.scores import f1_scores, macro_auroc

    model.eval()
    probs = np.zeros(enc.targets.shape, dtype=np.float32)
    with torch.inference_mode():
        for idx in micro_batches(np.arange(len(enc)), enc.lengths, max_tokens=max_tokens):
            ids, att, _, _ = collate(enc, idx)
            probs[idx] = torch.sigmoid(model(ids, att)).numpy()
    return f1_scores(enc.targets, probs, mask=enc.mask)["weighted"], macro_auroc(
        enc.targets, probs, mask=enc.mask
    )[0]


def run_dprad(
    args: argparse.Namespace, enc: Any, test: Any, schema: Any, sigma: float, steps: int
) -> dict[str, float]:
    from opacus import GradSampleModule

    from dprad.data.dataset import PoissonSampler, micro_batches
    from dprad.nn.loss import loss_per_example
    from dprad.nn.prefix_cache import PrefixLoraClassifier, cache_hidden_states, split_encoder
    from dprad.privacy.dp_step import private_step
    from dprad.privacy.noise import NoiseSource

    encoder, head_state = build(args, len(schema), top_only=True)
    n, q = len(enc), 1 / -(-len(enc) // args.batch)  # the sample rate opacus's DataLoader gets
    tick, cpu_tick = time.perf_counter(), time.process_time()
    bottom, top = split_encoder(encoder, args.k)
    cache = cache_hidden_states(bottom, enc, max_tokens=args.max_tokens)
    cached, cpu_cached = time.perf_counter(), time.process_time()
    model = PrefixLoraClassifier(top, len(schema), pooling="mean")
    model.head.load_state_dict(head_state)
    model.train()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    params = [p for p in gsm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    sampler = PoissonSampler(n, q, np.random.default_rng(args.seed))
    noise = NoiseSource.from_seed(args.seed).stream("gradient")  # a benchmark: a stated seed is fine

    def loss_fn(idx: np.ndarray) -> torch.Tensor:
        hidden, att = cache.batch(idx)  # (B, T, H), (B, T)
        return loss_per_example(gsm(hidden, att), enc.targets[idx], enc.mask[idx])  # (B,)

    seen = 0
    for _ in range(steps):
        idx = sampler.sample()
        seen += len(idx)
        private_step(
            params,
            optimizer,
            micro_batches(idx, cache.lengths, max_tokens=args.max_tokens),
            loss_fn,
            max_grad_norm=args.clip,
            noise_multiplier=sigma,
            expected_batch_size=q * n,
            noise=noise,
        )
    done, cpu_done = time.perf_counter(), time.process_time()
    f1, auroc = evaluate(model.full_classifier(encoder), test, args.max_tokens)
    return {
        "reports": seen,
        "seconds": done - tick,
        "cpu_seconds": cpu_done - cpu_tick,
        "cache_s": cached - tick,
        "cache_cpu_s": cpu_cached - cpu_tick,
        "weighted_f1": f1,
        "macro_auroc": auroc,
    }


def run_opacus(
    args: argparse.Namespace, enc: Any, test: Any, schema: Any, sigma: float, steps: int
) -> dict[str, float]:
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from torch.utils.data import DataLoader, TensorDataset

    from dprad.nn.loss import loss_per_example
    from dprad.nn.model import ReportClassifier

    encoder, head_state = build(args, len(schema), top_only=args.baseline_lora == "top")
    model = ReportClassifier(encoder, len(schema), pooling="mean")
    model.head.load_state_dict(head_state)
    model.train()
    tick, cpu_tick = time.perf_counter(), time.process_time()
    ids = torch.full((len(enc), PAD), enc.pad_id, dtype=torch.long)  # (N, 256): every report padded to 256
    att = torch.zeros((len(enc), PAD), dtype=torch.long)
    for i, x in enumerate(enc.ids):
        ids[i, : len(x)] = torch.from_numpy(x)
        att[i, : len(x)] = 1
    data = TensorDataset(ids, att, torch.from_numpy(enc.targets), torch.from_numpy(enc.mask))
    loader = DataLoader(data, batch_size=args.batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    engine = PrivacyEngine()
    private_model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=args.clip,
        noise_generator=torch.Generator().manual_seed(args.seed + 1),
    )
    seen = 0
    with BatchMemoryManager(
        data_loader=loader, max_physical_batch_size=args.physical, optimizer=optimizer
    ) as memory_safe_loader:
        for _ in range(args.epochs):  # each epoch: len(loader) logical (Poisson) batches
            for input_ids, attention, targets, mask in memory_safe_loader:
                optimizer.zero_grad()
                logits = private_model(input_ids, attention)  # (B, L)
                loss = loss_per_example(logits, targets.numpy(), mask.numpy()).mean()
                loss.backward()
                optimizer.step()  # a real (noised) step only at the end of each logical batch
                seen += len(input_ids)
    # the steps opacus's accountant recorded, to check that both pipelines ran the same mechanism
    recorded = sum(n for _, _, n in engine.accountant.history)
    if recorded != steps:
        raise SystemExit(f"(b) ran {recorded} noisy steps, (a) {steps}: the comparison would be unfair")
    done, cpu_done = time.perf_counter(), time.process_time()
    f1, auroc = evaluate(model, test, args.max_tokens)
    return {
        "reports": seen,
        "seconds": done - tick,
        "cpu_seconds": cpu_done - cpu_tick,
        "weighted_f1": f1,
        "macro_auroc": auroc,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument(
        "--train", type=int, default=512, help="training reports (a random subset of the train split)"
    )
    ap.add_argument("--test", type=int, default=256, help="test reports (a random subset of the test split)")
    ap.add_argument("--batch", type=int, default=256, help="expected logical batch (q = batch / train)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--k", type=int, default=2, help="LoRA layers at the top (and the uncached top)")
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--max-tokens", type=int, default=8192, help="(a): tokens per physical micro-batch")
    ap.add_argument("--physical", type=int, default=32, help="(b): BatchMemoryManager physical batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--baseline-lora",
        choices=("all", "top"),
        default="all",
        help="(b)'s LoRA: in all layers (peft's default, what an opacus user writes) or the same top k as (a)",
    )
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data}: the IU X-ray reports file is absent")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

    from dprad.privacy import calibrate_noise

    enc, test, schema = load(args)
    per_epoch = -(-len(enc) // args.batch)  # opacus's DataLoader: ceil(n / batch) batches, q = 1 / that
    q, steps = 1 / per_epoch, args.epochs * per_epoch
    delta = 10.0 ** np.floor(np.log10(1 / (10 * len(enc))))
    sigma = calibrate_noise(target_epsilon=args.epsilon, sample_rate=q, steps=steps, delta=delta)
    print(
        f"IU X-ray: {len(enc)} training reports (mean {enc.lengths.mean():.0f} tokens, max {enc.lengths.max()}), "
        f"{len(test)} test reports; MiniLM-L6, LoRA r=8 in the top {args.k} of 6 layers for (a), in {args.baseline_lora} for (b); q={q:.3f}, "
        f"{steps} steps, sigma={sigma:.3f} (eps={args.epsilon}, delta={delta:g}), C={args.clip}; "
        f"torch threads: {torch.get_num_threads()}"
    )
    a = run_dprad(args, enc, test, schema, sigma, steps)
    b = run_opacus(args, enc, test, schema, sigma, steps)
    print(
        f"{'pipeline':<60}{'reports':>8}{'wall s':>8}{'CPU s':>8}{'reports/s':>11}"
        f"{'reports/CPU-s':>15}{'weighted F1':>13}{'macro AUROC':>13}"
    )
    rows = (
        (f"(a) dprad: Poisson, sorted micro-batches, prefix cache K={args.k}", a),
        (f"(b) opacus make_private, pad 256, LoRA in {args.baseline_lora} layers", b),
    )
    for name, r in rows:
        print(
            f"{name:<60}{r['reports']:>8.0f}{r['seconds']:>8.1f}{r['cpu_seconds']:>8.1f}"
            f"{r['reports'] / r['seconds']:>11.2f}{r['reports'] / r['cpu_seconds']:>15.2f}{r['weighted_f1']:>13.3f}{r['macro_auroc']:>13.3f}"
        )
    print(
        f"(a) includes its one-off prefix cache pass: {a['cache_s']:.1f} s wall, {a['cache_cpu_s']:.1f} s CPU"
    )
    wall = (a["reports"] / a["seconds"]) / (b["reports"] / b["seconds"])
    cpu = (a["reports"] / a["cpu_seconds"]) / (b["reports"] / b["cpu_seconds"])
    print(f"speed-up (a) / (b), reports/s end to end: {wall:.2f}x wall-clock, {cpu:.2f}x per CPU-second")


if __name__ == "__main__":
    main()
