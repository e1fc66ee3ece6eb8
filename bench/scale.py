"""A hospital's whole archive, stage by stage: the product's pipeline on a synthetic MIMIC-CXR tree.

For each size n (reports = studies), the script makes a public MIMIC-CXR-shaped tree with ``dprad synth
--layout mimic-cxr`` (patients in MIMIC-CXR's proportion, 65,379 for 227,835 studies), then runs each
stage as the user would, as its own ``dprad`` process:

    data inspect -> label --teacher rules -> train --epsilon 1 (the product's defaults, with
    --feature-cache) -> evaluate (1,000 patient resamples) -> audit --attack loss -> report -> model-card
    -> export -> predict (the serving reports) -> serve (the real HTTP API on loopback answering
    --serve-reports reports)

Training keeps its features in ``--feature-cache WORK/features``, which evaluate and audit read back
instead of encoding the same reports again (delete the folder with the run: it is as sensitive as the
reports).

and prints, per stage: wall time, CPU time (user + system of that process and its children, from
``os.wait4``), peak RSS (the process's own ``ru_maxrss``), seconds per 1,000 reports, and the growth
exponent between successive sizes (the log-log slope of wall time; n log n between 50k and 227,835 is a
slope of 1.09). The serve stage's rate is the client-side one (reports answered / time from the first
request to the last answer); ``predict``'s is its whole process (loading included), on the same reports.

The synthetic text is templated: its F1 means nothing. The tree exists to measure cost and find what
breaks. Nothing is downloaded; the encoder is the packaged MiniLM-L6 unless --model says otherwise.

python bench/scale.py --n 10000 --n 50000 --n 227835 [--encoder-runtime onnx-int8] [--work DIR]
    [--serve-reports 10000] [--keep]

``--encoder-runtime`` is passed to ``dprad train`` (the head's frozen encoder; predict, serve, evaluate and
audit then use the run's own); run the script once per runtime to compare them stage by stage.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MIMIC_STUDIES, MIMIC_PATIENTS = 227_835, 65_379
KEY = "scale-bench-key-0123456789abcdef"


@dataclass(frozen=True)
class Stage:
    name: str
    n: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    rc: int
    extra: dict[str, Any]

    @property
    def per_1k(self) -> float:
        return self.wall_s / self.n * 1000


def dprad(*args: str) -> list[str]:
    return [sys.executable, "-m", "dprad", *args]


def measured(name: str, n: int, cmd: list[str], log: Path, **extra: Any) -> Stage:
    """Run one stage as its own process; wall time, and CPU time and peak RSS from that process's rusage."""
    print(f"[{time.strftime('%H:%M:%S')}] n={n:,} {name}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stage = Stage(
        name=name,
        n=n,
        wall_s=time.perf_counter() - t0,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        rc=proc.returncode,
        extra=extra,
    )
    if stage.rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"stage {name} at n={n} exited {stage.rc}; the end of {log}:\n" + "\n".join(tail))
    return stage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def send(url: str, texts: list[str], *, clients: int, per_request: int) -> dict[str, Any]:
    """Every text through POST /v1/classify, ``clients`` requests in flight; errors counted, not raised."""
    import httpx

    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)
    answered, errors = 0, []

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal answered
        while not queue.empty():
            chunk = queue.get_nowait()
            try:
                r = await c.post(f"{url}/v1/classify", json={"reports": [{"text": t} for t in chunk]})
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")
                continue
            if r.status_code != 200 or len(r.json()["results"]) != len(chunk):
                errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                continue
            answered += len(chunk)

    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=900, limits=limits, headers=headers) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return {"answered": answered, "errors": len(errors), "first_errors": errors[:3], "send_s": elapsed}


def serve_stage(run: Path, texts: list[str], work: Path, log: Path, n: int) -> Stage:
    """``dprad serve`` in its own process; the reports sent from this one; the server's rusage at its exit."""
    import httpx

    keys = work / "keys.yaml"
    keys.write_text(json.dumps({"keys": [{"id": "bench", "key": KEY, "role": "admin"}]}))
    port = free_port()
    cmd = dprad(
        "serve", str(run), "--keys", str(keys), "--port", str(port), "--state-dir", str(work / "state")
    )
    print(f"[{time.strftime('%H:%M:%S')}] n={n:,} serve: {len(texts):,} reports over HTTP", flush=True)
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 600
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"dprad serve did not start; see {log}")
                time.sleep(0.5)
            ready_s = time.perf_counter() - t0
            res = asyncio.run(send(url, texts, clients=8, per_request=64))
        finally:
            proc.send_signal(signal.SIGINT)
            _, _status, usage = os.wait4(proc.pid, 0)
    return Stage(
        name="serve",
        n=n,
        wall_s=time.perf_counter() - t0,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        rc=0,
        extra=res | {"ready_s": ready_s, "reports": len(texts), "rate": res["answered"] / res["send_s"]},
    )


def pipeline(n: int, work: Path, *, serve_reports: int, model: str, seed: int, runtime: str) -> list[Stage]:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "stages.log"
    tree, table, run = work / "mimic", work / "labels.parquet", work / "run"
    patients = max(1, round(n * MIMIC_PATIENTS / MIMIC_STUDIES))
    stages: list[Stage] = []
    if not tree.is_dir():
        synth = dprad(
            "synth", "--layout", "mimic-cxr", "--patients", str(patients), "--studies", str(n),
            "--seed", str(seed), "--out", str(tree),
        )  # fmt: skip
        stages.append(measured("synth (setup)", n, synth, log))
    stages.append(
        measured("data inspect", n, dprad("data", "inspect", str(tree), "--format", "mimic-cxr"), log)
    )
    stages.append(
        measured(
            "label (rules)",
            n,
            dprad("label", str(tree), "--format", "mimic-cxr", "--teacher", "rules", "--out", str(table)),
            log,
        )
    )
    shutil.rmtree(work / "features", ignore_errors=True)  # a pass timed from scratch, never from a cache
    shutil.rmtree(run, ignore_errors=True)
    # --feature-cache: the features the training pass writes are kept, so evaluate and audit read them
    # back instead of encoding the same reports again
    train = dprad(
        "train", str(table), "--out", str(run), "--epsilon", "1", "--model", model,
        "--encoder-runtime", runtime, "--feature-cache", str(work / "features"),
    )  # fmt: skip
    stages.append(measured("train (eps 1, head)", n, train, log))
    stages.append(
        measured(
            "evaluate (B=1000)",
            n,
            dprad("evaluate", str(run), str(table), "--bootstrap", "1000", "--out", str(work / "eval.json")),
            log,
        )
    )
    stages.append(measured("audit (loss MIA)", n, dprad("audit", str(run), "--attack", "loss"), log))
    stages.append(measured("report", n, dprad("report", str(run), "--out", str(work / "report.html")), log))
    stages.append(measured("model-card", n, dprad("model-card", str(run)), log))
    export = work / "export"
    shutil.rmtree(export, ignore_errors=True)
    stages.append(measured("export", n, dprad("export", str(run), "--out", str(export)), log))

    # the serving reports: a public synthetic corpus, disjoint from the tree (another seed), as a CSV
    import pandas as pd

    from dprad import SynthConfig, generate_reports

    serving = generate_reports(SynthConfig(n_patients=serve_reports, seed=seed + 1))[:serve_reports]
    texts = [r.text for r in serving]
    csv = work / "serving.csv"
    pd.DataFrame(
        {"id": [r.id for r in serving], "patient_id": [r.patient_id for r in serving], "text": texts}
    ).to_csv(csv, index=False)
    pred = measured(
        "predict",
        n,
        dprad("predict", str(run), str(csv), "--out", str(work / "pred.csv")),
        log,
        reports=len(texts),
    )
    stages.append(
        Stage(**{**asdict(pred), "extra": pred.extra | {"rate": len(texts) / pred.wall_s}})  # type: ignore[arg-type]
    )
    stages.append(serve_stage(run, texts, work, log, n))
    return stages


def slope(a: Stage, b: Stage) -> float:
    return math.log(b.wall_s / a.wall_s) / math.log(b.n / a.n)


def table(results: dict[int, list[Stage]]) -> str:
    sizes = sorted(results)
    names = [s.name for s in results[sizes[0]]]
    head = ["stage"]
    for n in sizes:
        head += [f"wall s @{n:,}", f"CPU s @{n:,}", f"peak RSS MB @{n:,}", f"s/1k @{n:,}"]
    head += [f"slope {a:,}->{b:,}" for a, b in itertools.pairwise(sizes)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = {n: 0.0 for n in sizes}
    for name in names:
        by_n = {n: next(s for s in results[n] if s.name == name) for n in sizes}
        row = [name]
        for n in sizes:
            s = by_n[n]
            if not name.endswith("(setup)"):
                totals[n] += s.wall_s
            row += [f"{s.wall_s:.1f}", f"{s.cpu_s:.1f}", f"{s.peak_rss_mb:,.0f}", f"{s.per_1k:.2f}"]
        row += [f"{slope(by_n[a], by_n[b]):.2f}" for a, b in itertools.pairwise(sizes)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "pipeline wall time (setup excluded): " + ", ".join(f"{totals[n] / 60:.1f} min @{n:,}" for n in sizes)
    )
    for n in sizes:
        serve = next(s for s in results[n] if s.name == "serve")
        pred = next(s for s in results[n] if s.name == "predict")
        lines.append(
            f"@{n:,}: serve answered {serve.extra['answered']:,} of {serve.extra['reports']:,} reports, "
            f"{serve.extra['errors']} errors, {serve.extra['rate']:.1f} reports/s over HTTP (8 clients x 64 "
            f"reports/request; ready after {serve.extra['ready_s']:.1f} s); predict {pred.extra['rate']:.1f} "
            "reports/s (its whole process, loading included)"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="reports (studies); repeat for several sizes")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder)")
    ap.add_argument("--serve-reports", type=int, default=10_000)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--seed", type=int, default=0, help="the synthetic tree's seed")
    ap.add_argument(
        "--encoder-runtime", default="auto", help="train's --encoder-runtime (auto, torch, onnx-int8 ...)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    args = ap.parse_args()
    sizes = sorted(set(args.n or [10_000, 50_000, MIMIC_STUDIES]))
    work = args.work or Path(tempfile.mkdtemp(prefix="dprad-scale-"))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    results: dict[int, list[Stage]] = {}
    try:
        for n in sizes:
            results[n] = pipeline(
                n,
                work / f"n{n}",
                serve_reports=args.serve_reports,
                model=args.model,
                seed=args.seed,
                runtime=args.encoder_runtime,
            )
            (work / f"n{n}" / "stages.json").write_text(json.dumps([asdict(s) for s in results[n]], indent=1))
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"commit {commit}; {platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; python {platform.python_version()}"
    )
    print("command: python bench/scale.py " + " ".join(sys.argv[1:]))
    print(f"encoder runtime: {args.encoder_runtime}")
    print(table(results))


if __name__ == "__main__":
    main()
