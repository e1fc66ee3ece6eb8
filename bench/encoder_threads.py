"""How the int8 encoder should use the cores: one report at a time on all of them (ONNX Runtime's
intra-op threads), or one report per core (dprad's ``onnx-int8`` runtime), side by side in one run.

    python bench/encoder_threads.py [--reports 400] [--threads 2] [--repeats 3] [--tree DIR]

The reports: the first ``--reports`` of a synthetic MIMIC-CXR tree (``dprad synth --layout mimic-cxr``,
public; made in a temp folder unless ``--tree`` names one), max_length 256 (the product's default). Each
way scores them through :func:`dprad.nn.features.text_features` (or, for the intra-op way, the same ONNX
session run report by report), interleaved, ``--repeats`` times; the median wall time gives reports per
second. It also checks that one report per core gives the same features at 1 and ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tree", type=Path, default=None, help="a synthetic MIMIC-CXR tree (default: made here)")
    args = ap.parse_args()

    from dprad.encoder_runtime import frozen_encoder, onnx_session, user_cache_dir
    from dprad.local_models import load_tokenizer, resolve_model_dir
    from dprad.nn.features import text_features

    tree = args.tree
    if tree is None:
        tree = Path(tempfile.mkdtemp(prefix="dprad-threads-")) / "mimic"
        subprocess.run(
            [sys.executable, "-m", "dprad", "synth", "--layout", "mimic-cxr", "--patients", "300",
             "--studies", str(args.reports), "--seed", "0", "--out", str(tree)],
            check=True, capture_output=True,
        )  # fmt: skip
    texts = [p.read_text() for p in sorted(tree.glob("files/p*/p*/s*.txt"))[: args.reports]]
    model = resolve_model_dir("minilm")
    tokenizer = load_tokenizer(str(model))
    ids = tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    print(f"{len(texts)} reports, mean {np.mean([len(x) for x in ids]):.0f} tokens; {args.threads} threads")

    # one report at a time, the session's intra-op threads = all the cores (dprad's way before)
    session = onnx_session(model, quantized=True, threads=args.threads, cache_dir=user_cache_dir())

    def intra_op() -> np.ndarray:
        out = []
        for x in ids:
            a = np.asarray([x], dtype=np.int64)
            h = session.run(["last_hidden_state"], {"input_ids": a, "attention_mask": np.ones_like(a)})[0]
            out.append(h[0].mean(0))
        return np.stack(out)

    # dprad's onnx-int8 before b5a2a4f: the same rows, one at a time through the runtime's torch wrapper
    # on that intra-op session (torch's own thread pool idles beside ONNX Runtime's)
    from transformers import AutoConfig

    from dprad.encoder_runtime import RuntimeEncoder

    def run_session(ids_: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": ids_.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}
        return torch.from_numpy(np.asarray(session.run(["last_hidden_state"], feeds)[0]))

    config = AutoConfig.from_pretrained(str(model), local_files_only=True)
    before = RuntimeEncoder(run_session, config, runtime="onnx-int8", rowwise=True, threads=None, workers=1)

    per_core = {
        t: frozen_encoder(model, runtime="onnx-int8", threads=t, cache_dir=user_cache_dir())
        for t in (1, args.threads)
    }

    def spread(t: int) -> Callable[[], np.ndarray]:
        return lambda: text_features(
            per_core[t], tokenizer, texts, pooling="mean", max_length=256, max_tokens=16384
        )

    ways: dict[str, Callable[[], np.ndarray]] = {
        f"one report at a time, {args.threads} intra-op threads (ONNX Runtime alone)": intra_op,
        f"one report at a time, {args.threads} intra-op threads, through torch (dprad before)": lambda: (
            text_features(before, tokenizer, texts, pooling="mean", max_length=256, max_tokens=16384)
        ),
        "one report per core, 1 thread": spread(1),
        f"one report per core, {args.threads} threads (dprad)": spread(args.threads),
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    features: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, run in ways.items():
            t0 = time.perf_counter()
            features[name] = run()
            times[name].append(time.perf_counter() - t0)
    base = len(texts) / statistics.median(times[next(iter(ways))])
    print("| way | reports/s | ratio |")
    print("| --- | --- | --- |")
    for name, ts in times.items():
        rate = len(texts) / statistics.median(ts)
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x |")
    one, many = (features[k] for k in list(ways)[2:])
    print(
        f"one report per core: features at 1 and {args.threads} threads identical: {np.array_equal(one, many)}"
    )


if __name__ == "__main__":
    main()
