"""Load test of `dprad serve` on loopback, next to offline `Predictor.predict` on the same reports.

32 concurrent clients send 20,000 synthetic reports in total (requests of --per-request reports) to a
server running in its own process; the script prints errors, client-side p50 / p99 latency per request,
reports/s, the offline throughput measured in the same run, the ratio served / offline, and the largest
difference between served and offline probabilities. Loopback only; bounded by --reports and --time-limit.

python bench/serve_load.py [--reports 20000] [--clients 32] [--per-request 8] [--model minilm] [--run RUN] [--scorer-cores K]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SERVER = """
import sys, uvicorn
from dprad.serve.app import ServeLimits, create_app
app = create_app(sys.argv[1], keys_path=sys.argv[2], state_dir=sys.argv[3], limits=ServeLimits(max_reports_per_request=512))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[4]), log_level="warning", access_log=False)
"""
KEY = "bench-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_run(model: str, root: Path) -> Path:
    from dprad import CHEXPERT14, SynthConfig, generate_reports
    from dprad.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from dprad.data.table import reports_frame, write_table
    from dprad.stages.train import train

    data = root / "train.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=300, seed=1)), CHEXPERT14), data)
    cfg = RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=model),
        train=TrainConfig(mode="head", epochs=20),
    )
    return train(cfg, root / "run").run_dir


async def load(
    url: str, texts: list[str], *, clients: int, per_request: int, deadline: float
) -> dict[str, Any]:
    import httpx

    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    queue: asyncio.Queue[tuple[int, list[str]]] = asyncio.Queue()
    for item in enumerate(chunks):
        queue.put_nowait(item)
    latencies: list[float] = []
    errors: list[str] = []
    probs: dict[int, list[list[float]]] = {}

    async def client(c: httpx.AsyncClient) -> None:
        while not queue.empty() and time.monotonic() < deadline:
            i, chunk = queue.get_nowait()
            t0 = time.perf_counter()
            try:
                r = await c.post(f"{url}/v1/classify", json={"reports": [{"text": t} for t in chunk]})
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")
                continue
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                continue
            out = r.json()
            probs[i] = [[res["probabilities"][lab] for lab in out["labels"]] for res in out["results"]]

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return {
        "latencies": latencies,
        "errors": errors,
        "probs": probs,
        "elapsed": elapsed,
        "unsent": queue.qsize(),
    }


def _prom_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", type=int, default=20_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--per-request", type=int, default=8)
    ap.add_argument("--model", default="minilm", help="encoder of the run trained for the bench (head mode)")
    ap.add_argument("--run", type=Path, default=None, help="use this finished run instead of training one")
    ap.add_argument("--time-limit", type=float, default=1800.0, help="seconds for the served phase")
    ap.add_argument(
        "--scorer-cores",
        type=int,
        default=-1,
        help="cores given to the server and, the same, to offline prediction; the load-generating clients get "
        "the rest (-1: all but one; 0: no pinning, everything shares every core)",
    )
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    k = len(cores) - 1 if args.scorer_cores < 0 else args.scorer_cores
    scorer = set(cores[:k]) if 0 < k < len(cores) else set(cores)
    clients = set(cores) - scorer or set(cores)

    from dprad import SynthConfig, generate_reports
    from dprad.modes import load_run

    tmp = Path(tempfile.mkdtemp(prefix="dprad-serve-bench-"))
    run = args.run or make_run(args.model, tmp)
    reports = generate_reports(SynthConfig(n_patients=int(args.reports / 1.6) + 50, seed=2))[: args.reports]
    texts = [r.text for r in reports]

    # offline: what `dprad predict` does, on the same reports, in this process, on the scorer's cores (the
    # same CPU budget the server gets, so the ratio compares scoring paths, not core counts)
    import torch

    os.sched_setaffinity(0, scorer)
    threads = torch.get_num_threads()
    torch.set_num_threads(len(scorer))
    predictor = load_run(run)
    t0 = time.perf_counter()
    offline = predictor.predict(reports).probs  # (N, L)
    offline_s = time.perf_counter() - t0
    del predictor
    torch.set_num_threads(threads)
    os.sched_setaffinity(0, clients)  # the load generator stays off the scorer's cores where it can

    keys = tmp / "keys.yaml"
    keys.write_text(json.dumps({"keys": [{"id": "bench", "key": KEY, "role": "admin"}]}))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(run), str(keys), str(tmp / "state"), str(port)],
        env=os.environ | {"OMP_NUM_THREADS": str(len(scorer))},
        preexec_fn=lambda: os.sched_setaffinity(0, scorer),  # pins the child process only
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        res = asyncio.run(
            load(
                url,
                texts,
                clients=args.clients,
                per_request=args.per_request,
                deadline=time.monotonic() + args.time_limit,
            )
        )
        prom = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).text
    finally:
        server.terminate()
        server.wait(30)

    served_n = sum(len(v) for v in res["probs"].values())
    lat = np.asarray(res["latencies"]) * 1000
    served_rate = served_n / res["elapsed"]
    offline_rate = len(reports) / offline_s
    diffs = [
        np.abs(np.asarray(p) - offline[i * args.per_request : i * args.per_request + len(p)]).max()
        for i, p in res["probs"].items()
    ]
    print(
        f"run {run} ({args.model if args.run is None else 'given'}), {len(reports)} reports, loopback {url}; "
        f"server and offline scoring on cores {sorted(scorer)}, clients on cores {sorted(clients)}"
    )
    print(
        f"served: {args.clients} clients x requests of {args.per_request}: {served_n} reports scored in "
        f"{res['elapsed']:.1f} s = {served_rate:.1f} reports/s; errors {len(res['errors'])}; "
        f"unsent (time limit) {res['unsent']}"
    )
    if len(lat):
        print(
            f"latency per request: p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms"
        )
    model_s = _prom_value(prom, "dprad_model_seconds_total")
    batches = _prom_value(prom, "dprad_batches_total")
    print(
        f"server: a model call in progress for {model_s:.1f} s of the {res['elapsed']:.1f} s "
        "(request handling overlaps it), "
        f"{batches:.0f} micro-batches of {served_n / max(batches, 1):.0f} reports on average"
    )
    print(f"offline Predictor.predict on the same reports: {offline_s:.1f} s = {offline_rate:.1f} reports/s")
    print(f"served / offline throughput: {served_rate / offline_rate:.2f}x")
    print(f"largest |served - offline| probability: {max(diffs) if diffs else float('nan'):.2e}")
    for e in res["errors"][:5]:
        print(f"error: {e}")


if __name__ == "__main__":
    main()
