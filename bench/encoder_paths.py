"""The frozen encoder's runtime, chosen by measurement (dprad.encoder_runtime): speed and the private
head's utility for each path, side by side in one run.

    python bench/encoder_paths.py [--paths torch,int8,onnx,onnx-int8] [--corpus iu|ct|both]
                                  [--eps 1,10,inf] [--seeds 0,1,2] [--timed 200] [--repeats 3]
                                  [--time-only] [--out DIR]

Speed: the same `--timed` training reports of each corpus (max_length 256, the product's default) through
:func:`dprad.nn.features.encoder_features` with each path at 1 and 2 threads, interleaved path by path,
`--repeats` times; the median wall time gives reports per second per thread (= per core). Also: the
largest feature difference of a report scored alone against the same report in its batch.

Utility: each path's features of every report of the corpus and of dprad's public corpus are computed
once and written to a feature cache of its own (the product's own store, `cached_features`); then
`dprad.stages.train.train` runs the product's head-mode defaults (rule prior, public warm start, DP
thresholds) on that cache, so only the features differ: same splits, same recipe, and the same stated
noise seed for every path of one (corpus, eps, seed) cell: a paired comparison. Test weighted F1 at the
shipped thresholds, mean ± sd over split seeds, and each path's worst cell difference against fp32
(`torch`). The rule: the default is the fastest path whose F1 is never more than 0.003 below fp32's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dprad.data.dataset import Encoded

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = {
    "iu": (DATA / "iu-xray" / "indiana_reports.csv", "iu-xray"),
    "ct": (DATA / "ct-rate-manual" / "train.csv", "ct-rate-manual"),
}
MAX_LENGTH = 256
TOLERANCE = 0.003
STAMPS: dict[Path, int] = {}  # feature file -> mtime when this run wrote or found it


def encoders(paths: list[str], threads: int, cache: Path) -> dict[str, Any]:
    from dprad.encoder_runtime import frozen_encoder
    from dprad.local_models import resolve_model_dir

    model_dir = resolve_model_dir("minilm")
    return {p: frozen_encoder(model_dir, runtime=p, threads=threads, cache_dir=cache) for p in paths}


def timings(paths: list[str], enc: Encoded, cache: Path, repeats: int) -> dict[tuple[str, int], float]:
    """(path, threads) -> reports per second per thread, median over interleaved repeats."""
    import torch

    from dprad.nn.features import encoder_features

    built = {t: encoders(paths, t, cache) for t in (1, 2)}
    walls: dict[tuple[str, int], list[float]] = {(p, t): [] for p in paths for t in (1, 2)}
    before = torch.get_num_threads()
    for _ in range(repeats):
        for p in paths:
            for t in (1, 2):
                torch.set_num_threads(t)  # the torch paths read it; ONNX sessions hold their own count
                tick = time.perf_counter()
                encoder_features(built[t][p], enc, pooling="mean", max_tokens=8192)
                walls[(p, t)].append(time.perf_counter() - tick)
    torch.set_num_threads(before)
    n = len(enc)
    return {k: n / statistics.median(v) / k[1] for k, v in walls.items()}


def batch_drift(paths: list[str], enc: Encoded, cache: Path, k: int = 24) -> dict[str, float]:
    """Largest |feature| difference of a report alone against the same report in one padded batch."""
    from dprad.data.dataset import Encoded
    from dprad.nn.features import encoder_features

    built = encoders(paths, 1, cache)
    e = enc
    k = min(k, len(e))
    sub = Encoded([e.ids[i] for i in range(k)], e.lengths[:k], e.targets[:k], e.mask[:k], e.pad_id)
    out = {}
    for p, model in built.items():
        together = encoder_features(model, sub, pooling="mean", max_tokens=1 << 20)
        alone = np.concatenate(
            [
                encoder_features(
                    model,
                    Encoded(
                        [sub.ids[i]],
                        sub.lengths[i : i + 1],
                        sub.targets[i : i + 1],
                        sub.mask[i : i + 1],
                        sub.pad_id,
                    ),
                    pooling="mean",
                    max_tokens=1 << 20,
                )
                for i in range(k)
            ]
        )
        out[p] = float(np.abs(together - alone).max())
    return out


def fill_cache(path_name: str, everyone: list, schema: object, folder: Path, cache: Path) -> float:
    """Every report's and the public corpus's features with one path, written where the product's feature
    cache looks for them (``--feature-cache``: ``features-<model, pooling, length>.npz``, keys and rows)."""
    import hashlib

    import torch

    from dprad.data.dataset import encode
    from dprad.data.schemas import CHEXPERT14, CTRATE18
    from dprad.local_models import load_tokenizer, resolve_model_dir
    from dprad.nn.feature_cache import text_keys
    from dprad.nn.features import encoder_features
    from dprad.nn.public import public_reports

    model_dir = resolve_model_dir("minilm")
    bucket = hashlib.sha256(f"{model_dir}\0mean\0{MAX_LENGTH}".encode()).hexdigest()[:16]
    target = folder / f"features-{bucket}.npz"
    if target.is_file():
        STAMPS[target] = target.stat().st_mtime_ns
        return 0.0
    tok = load_tokenizer("minilm")
    model = encoders([path_name], 1, cache)[path_name]
    torch.set_num_threads(1)  # one thread: on a shared, busy machine two ran slower per report
    tick = time.perf_counter()
    keys, rows = [], []
    public = folder.parent / f"public-{path_name}.npz"  # the public corpus's rows: one pass per path
    if public.is_file():
        with np.load(public) as z:
            keys.append(z["keys"])
            rows.append(z["features"])
        groups = [(everyone, schema)]
    else:
        groups = [(public_reports("cxr"), CHEXPERT14), (public_reports("ct"), CTRATE18), (everyone, schema)]
    for reports, sch in groups:
        enc = encode(reports, tok, sch, max_length=MAX_LENGTH)  # type: ignore[arg-type]
        rows.append(encoder_features(model, enc, pooling="mean", max_tokens=8192))
        keys.append(text_keys([r.text for r in reports]))
        if len(keys) == 2 and not public.is_file():
            with open(public, "wb") as f:
                np.savez(f, keys=np.concatenate(keys), features=np.concatenate(rows))
    all_keys, first = np.unique(np.concatenate(keys), return_index=True)
    features = np.concatenate(rows)[first]
    folder.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        np.savez(f, keys=all_keys, features=features)
    STAMPS[target] = target.stat().st_mtime_ns
    return time.perf_counter() - tick


def untouched(folder: Path) -> bool:
    """The store holds only what :func:`fill_cache` wrote: no run encoded a text itself (that would have
    used the product's fp32 encoder and added a chunk or rewritten the file)."""
    files = list(folder.glob("*.npz"))
    same = len(files) == 1 and files[0].stat().st_mtime_ns == STAMPS.get(files[0], -1)
    return same and not list(folder.glob("features-*/chunk-*.npz"))


def main() -> None:
    import torch

    from dprad.config import DataConfig, PrivacyConfig, RunConfig, TrainConfig
    from dprad.data.dataset import encode
    from dprad.local_models import load_tokenizer
    from dprad.privacy.noise import NoiseSource
    from dprad.stages.plan import prepare
    from dprad.stages.train import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", default="torch,int8,onnx,onnx-int8")
    ap.add_argument("--corpus", default="both", choices=["iu", "ct", "both"])
    ap.add_argument("--order", default="ct,iu", help="corpora in this order with --corpus both")
    ap.add_argument("--eps", default="1,10,inf")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--timed", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--time-only", action="store_true")
    ap.add_argument("--skip-time", action="store_true", help="no speed timing (when another run times)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    paths = args.paths.split(",")
    corpora = args.order.split(",") if args.corpus == "both" else [args.corpus]
    epsilons = [float(e) for e in args.eps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out or tempfile.mkdtemp(prefix="dprad-encoder-paths-"))
    onnx_cache = out / "onnx"
    print(f"runs and caches in {out}; torch {torch.__version__}; paths {', '.join(paths)}", flush=True)

    speed: dict[str, dict[tuple[str, int], float]] = {}
    data = {}
    for corpus in corpora:
        path, fmt = CORPORA[corpus]
        schema, splits, _ = prepare(RunConfig(data=DataConfig(path=str(path), format=fmt)))
        data[corpus] = (schema, [r for reps in splits.as_dict().values() for r in reps])
        if args.skip_time:
            continue
        enc = encode(
            list(splits.train[: args.timed]), load_tokenizer("minilm"), schema, max_length=MAX_LENGTH
        )
        speed[corpus] = timings(paths, enc, onnx_cache, args.repeats)
        drift = batch_drift(paths, enc, onnx_cache)
        print(
            f"\n{corpus}: {len(enc)} reports timed, mean {enc.lengths.mean():.0f} tokens, {args.repeats} repeats"
        )
        for p in paths:
            one, two = speed[corpus][(p, 1)], speed[corpus][(p, 2)]
            ratio = one / speed[corpus][(paths[0], 1)]
            print(
                f"  {p:>9}: {one:6.1f} reports/s/core at 1 thread ({ratio:.2f}x {paths[0]}), {two:6.1f} at 2;"
                f" alone-vs-batched max |diff| {drift[p]:.1e}",
                flush=True,
            )
    if args.time_only:
        return

    f1: dict[tuple[str, str, float], list[float]] = {}
    for corpus in corpora:
        schema, everyone = data[corpus]
        for p in paths:
            secs = fill_cache(p, everyone, schema, out / f"features-{p}", onnx_cache)
            print(
                f"{corpus} {p}: features of {len(everyone)} reports + public corpus in {secs:.0f} s (1 thread)",
                flush=True,
            )
        path, fmt = CORPORA[corpus]
        for eps in epsilons:
            private = bool(np.isfinite(eps))
            for seed in seeds:
                for p in paths:
                    cfg = RunConfig(
                        data=DataConfig(path=str(path), format=fmt, split_seed=seed),
                        privacy=PrivacyConfig(epsilon=eps if private else None),
                        train=TrainConfig(mode="head", feature_cache=str(out / f"features-{p}"), threads=1),
                    )
                    noise = NoiseSource.from_seed(1000 * seed + (int(eps) if private else 999))
                    tick = time.perf_counter()
                    res = train(cfg, out / "runs" / f"{corpus}-{p}-{eps}-{seed}", overwrite=True, noise=noise)
                    if not untouched(out / f"features-{p}"):
                        raise SystemExit(
                            f"{p}: the run encoded texts the path's store lacked (fp32 features)"
                        )
                    score = res.metrics["test"]["threshold_val"]["weighted_f1"]
                    f1.setdefault((corpus, p, eps), []).append(score)
                    print(
                        f"  {corpus} eps {eps:>4g} seed {seed} {p:>9}: test wF1 {score:.4f}"
                        f" ({time.perf_counter() - tick:.0f} s)",
                        flush=True,
                    )
    table(paths, corpora, epsilons, speed, f1)


def table(
    paths: list[str],
    corpora: list[str],
    epsilons: list[float],
    speed: dict[str, dict[tuple[str, int], float]],
    f1: dict[tuple[str, str, float], list[float]],
) -> None:
    cells = [(c, e) for c in corpora for e in epsilons]
    head = f"{'path':>9} " + " ".join(f"{'r/s/core ' + c:>12}" for c in corpora)
    head += (
        " " + " ".join(f"{c + ' eps ' + format(e, 'g'):>15}" for c, e in cells) + f" {'worst vs fp32':>13}"
    )
    print("\n" + head)
    ok = []
    for p in paths:
        row = f"{p:>9} " + " ".join(
            f"{speed[c][(p, 1)]:>12.1f}" if c in speed else f"{'-':>12}" for c in corpora
        )
        worst = np.inf
        for c, e in cells:
            a, base = f1.get((c, p, e), []), f1.get((c, paths[0], e), [])
            sd = np.std(a, ddof=1) if len(a) > 1 else 0.0
            row += f" {np.mean(a):>8.3f} ± {sd:.3f}" if a else f" {'-':>15}"
            n = min(len(a), len(base))
            if n:  # paired by seed: the same split and noise seed
                worst = min(worst, float(np.mean(np.array(a[:n]) - np.array(base[:n]))))
        row += f" {worst:>+13.4f}" if np.isfinite(worst) else f" {'-':>13}"
        print(row)
        if np.isfinite(worst) and worst >= -TOLERANCE:
            ok.append(p)
    if ok and len(speed) < len(corpora):
        print(
            f"\nwithin {TOLERANCE} of fp32 on every cell: {', '.join(ok)} (no timing in this run: --time-only)"
        )
    elif ok:
        pick = max(ok, key=lambda p: min(speed[c][(p, 1)] for c in corpora))
        print(
            f"\nwithin {TOLERANCE} of fp32 on every cell: {', '.join(ok)}; fastest of them (slowest corpus): {pick}"
        )


if __name__ == "__main__":
    main()
