"""What secret, hardened noise costs: one DP step's Gaussian draw, side by side in one run.

    python bench/noise.py [--repeats 5]

For the parameter counts a dprad step noises (the private head on MiniLM features with the rule prior,
DP-LoRA r=8 on MiniLM's query/value, full fine-tuning of MiniLM-L6), the median time of one step's noise:
- torch.normal from a CPU generator seeded with a number (dprad before secret noise: regenerable);
- numpy's default PCG64 normal (fast, not a cryptographic generator);
- ChaCha20 (randomgen), one Gaussian draw a value;
- dprad's ``NoiseStream.gaussian_like``: ChaCha20 keyed from OS entropy, 4 draws a value (opacus secure_mode),
  as float32 tensors: what every DP step now pays;
and the ratio of the last to the first. It also prints a whole DP-head step on the same sizes for scale.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

SIZES = {  # parameters noised per step
    "dp-head (384 + 4x14 inputs, 14 labels)": (384 + 56) * 14 + 14,
    "dp-lora (r=8, query/value, 6 layers + head)": 6 * 2 * 2 * 8 * 384 + 384 * 14 + 14,
    "dp-full (MiniLM-L6 without embeddings)": 21_300_000,
}


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from randomgen import ChaCha

    from dprad.privacy.noise import NoiseSource

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, numpy {np.__version__}, 1 thread; median of {args.repeats}")
    header = f"{'step noised':<46} {'params':>10} {'torch (s)':>10} {'pcg64 (s)':>10} {'chacha (s)':>10} {'dprad (s)':>10} {'dprad/torch':>11}"
    print(header)
    for name, n in SIZES.items():
        like = [torch.zeros(n)]
        gen = torch.Generator().manual_seed(1)
        pcg = np.random.default_rng(1)
        cha = np.random.Generator(ChaCha(key=1, rounds=20))
        stream = NoiseSource.secret().stream("gradient")
        t_torch = median_time(lambda: torch.normal(0.0, 1.0, size=(n,), generator=gen), args.repeats)  # noqa: B023
        t_pcg = median_time(lambda: pcg.standard_normal(n), args.repeats)  # noqa: B023
        t_cha = median_time(lambda: cha.standard_normal(n), args.repeats)  # noqa: B023
        t_dprad = median_time(lambda: stream.gaussian_like(like, std=1.0), args.repeats)  # noqa: B023
        print(
            f"{name:<46} {n:>10,} {t_torch:>10.5f} {t_pcg:>10.5f} {t_cha:>10.5f} {t_dprad:>10.5f} "
            f"{t_dprad / t_torch:>10.1f}x"
        )


if __name__ == "__main__":
    main()
