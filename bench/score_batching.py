"""Scoring micro-batches: training's token-only cut vs ``inference_batches``, and their token budget on CPU.

A server scores a few hundred reports at a time. Split only by ``max_tokens`` (training's cut), such a
batch spans a wide range of lengths in each forward pass and pads a lot; ``inference_batches`` also cuts
where padding would pass ``--max-padding``. And on a CPU, smaller forward passes run faster per token than
the 8,192-token ones training uses for memory. This runs the frozen MiniLM encoder, on one thread, over the
same synthetic reports five ways, side by side: all at once (offline ``dprad predict``) at the training
budget and at the CPU scoring budget, and in chunks of ``--chunk`` (a server's batches) with each cut. It
prints padded / real tokens, reports/s, the speed relative to the first row, and the largest difference
between the pooled features.

python bench/score_batching.py [--reports 2000] [--chunk 256] [--max-tokens 8192] [--max-padding 0.02]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch


def main() -> None:
    from dprad import CHEXPERT14, SynthConfig, generate_reports
    from dprad.data.dataset import collate, encode, inference_batches, micro_batches
    from dprad.local_models import DEFAULT_ENCODER, load_tokenizer, resolve_model_dir
    from dprad.nn.device import CPU_SCORING_TOKENS
    from dprad.nn.model import load_encoder, pool

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=256, help="reports per scoring call (a server batch)")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--max-padding", type=float, default=0.02)
    args = ap.parse_args()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reports = generate_reports(SynthConfig(n_patients=int(args.reports / 1.6) + 50, seed=3))[: args.reports]
    model_dir = resolve_model_dir(DEFAULT_ENCODER)
    tokenizer = load_tokenizer(str(model_dir))
    encoder = load_encoder(model_dir).eval()
    enc = encode(reports, tokenizer, CHEXPERT14, max_length=256)
    lengths = enc.lengths

    def by_tokens(idx: np.ndarray) -> list[np.ndarray]:
        return micro_batches(idx, lengths, max_tokens=args.max_tokens)

    def by_padding(idx: np.ndarray) -> list[np.ndarray]:
        return inference_batches(idx, lengths, max_tokens=args.max_tokens, max_padding=args.max_padding)

    def cpu_budget(idx: np.ndarray) -> list[np.ndarray]:
        budget = min(args.max_tokens, CPU_SCORING_TOKENS)
        return inference_batches(idx, lengths, max_tokens=budget, max_padding=args.max_padding)

    def score(chunk: int, split: Callable[[np.ndarray], list[np.ndarray]]) -> tuple[float, float, np.ndarray]:
        out = np.zeros((len(enc), int(encoder.config.hidden_size)), dtype=np.float32)  # (N, H)
        padded = 0
        tick = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(enc), chunk):
                for idx in split(np.arange(start, min(start + chunk, len(enc)))):
                    ids, attention, _, _ = collate(enc, idx)  # (B, T) each
                    h = encoder(input_ids=ids, attention_mask=attention).last_hidden_state  # (B, T, H)
                    out[idx] = pool(h, attention, "mean").numpy()
                    padded += ids.numel()
        return time.perf_counter() - tick, padded / float(lengths.sum()), out

    with torch.inference_mode():  # warm up
        ids, attention, _, _ = collate(enc, np.arange(8))
        encoder(input_ids=ids, attention_mask=attention)
    cpu = f"padding cut, {min(args.max_tokens, CPU_SCORING_TOKENS)} tokens"
    rows = [
        (f"all at once, padding cut, {args.max_tokens} tokens", len(enc), by_padding),
        (f"all at once, {cpu}", len(enc), cpu_budget),
        (f"chunks of {args.chunk}, token-only cut, {args.max_tokens} tokens", args.chunk, by_tokens),
        (f"chunks of {args.chunk}, padding cut, {args.max_tokens} tokens", args.chunk, by_padding),
        (f"chunks of {args.chunk}, {cpu}", args.chunk, cpu_budget),
    ]
    results = {name: score(chunk, split) for name, chunk, split in rows}
    torch.set_num_threads(threads)
    base = results[rows[0][0]]
    print(f"{len(enc)} synthetic reports, MiniLM-L6 on 1 thread, max_tokens {args.max_tokens}")
    for name, (seconds, pad, feats) in results.items():
        print(
            f"{name:<52} padded/real tokens {pad:.3f}  {len(enc) / seconds:6.1f} reports/s  "
            f"speed vs all at once {base[0] / seconds:.2f}x  max |feature diff| {np.abs(feats - base[2]).max():.1e}"
        )
    old, new = results[rows[2][0]][0], results[rows[4][0]][0]
    print(f"chunks of {args.chunk}: dprad's scoring cut vs training's cut: {old / new:.2f}x")
    old, new = results[rows[0][0]][0], results[rows[1][0]][0]
    print(f"all at once: the CPU scoring budget vs {args.max_tokens} tokens: {old / new:.2f}x")


if __name__ == "__main__":
    main()
