"""The federated table's IU three-hospital row over real processes: the same prepared hospitals federated
by ``dprad federate server`` and three ``dprad federate client`` processes on loopback, once with
``--insecure --no-secagg`` and once with TLS, admitted node keys and secure aggregation (SecAgg+), beside
the in-process federation the table used. Prints weighted F1 (overall, at the shipped thresholds) and the
server's wall time per round for each, per split seed.

    python bench/federated_secure.py [--corpus iu] [--seeds 0] [--eps 10] [--rounds 10]

Hospitals and splits are the table's (bench/federated_table.py: 60 / 25 / 15 % of patients, one
patient-level split per seed). Every federation starts from fresh copies of the prepared sites (a
federation spends their budgets).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from federated_table import federate, hospitals, wf1


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dprad(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen([sys.executable, "-m", "dprad", *args], stdout=f, stderr=subprocess.STDOUT)


def over_flower(sites: list[Path], work: Path, *, schema: str, rounds: int, secure: bool) -> dict[str, Any]:
    """A federation of fresh copies of ``sites`` over a real SuperLink and SuperNodes -> federation.json."""
    from dprad.federate.certs import make_certs, make_node_key
    from dprad.federate.site import Site

    tag = "secure" if secure else "insecure"
    copies = []
    for s in sites:
        copies.append(work / tag / s.name)
        shutil.copytree(s, copies[-1])
    out, port = work / tag / "fed", _port()
    server_flags: list[str] = ["--insecure", "--no-secagg"]
    client_flags: dict[str, list[str]] = {s.name: ["--insecure"] for s in copies}
    if secure:
        pki = make_certs(work / tag / "pki", "127.0.0.1")
        server_flags = ["--ssl-ca-certfile", str(pki["ca.crt"]), "--ssl-certfile", str(pki["server.pem"])]
        server_flags += ["--ssl-keyfile", str(pki["server.key"]), "--secagg"]
        for s in copies:
            key, pub = make_node_key(work / tag / "keys" / s.name)
            server_flags += ["--admit", f"{Site(s).info.name}={pub}"]  # the name the site answers under
            client_flags[s.name] = ["--root-certificates", str(pki["ca.crt"]), "--node-key", str(key)]
    server = _dprad(
        "federate", "server", "--out", str(out), "--port", str(port), "--rounds", str(rounds), "--schema", schema,
        "--min-clients", "3", "--timeout", "600", *server_flags, log=work / tag / "server.log",
    )  # fmt: skip
    clients = [
        _dprad(
            "federate",
            "client",
            "--out",
            str(s),
            "--superlink",
            f"127.0.0.1:{port}",
            "--timeout",
            "600",
            *client_flags[s.name],
            log=work / tag / f"{s.name}.log",
        )
        for s in copies
    ]
    if server.wait(3600) != 0:
        raise SystemExit(f"{tag} server failed: {(work / tag / 'server.log').read_text()[-3000:]}")
    for c in clients:
        c.wait(120)
    return dict(json.loads((out / "federation.json").read_text()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="iu")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--eps", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dprad-feature-cache"))
    args = ap.parse_args()
    from dprad.config import DataConfig, PrivacyConfig, RunConfig, TrainConfig
    from dprad.federate.site import prepare_site

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        work = Path(tempfile.mkdtemp(prefix=f"dprad-fedsec-{seed}-"))
        groups, schema = hospitals(args.corpus, seed)
        cfg = RunConfig(
            data=DataConfig(schema=schema),
            privacy=PrivacyConfig(epsilon=args.eps),
            train=TrainConfig(mode="head", feature_cache=args.cache),
        )
        dirs = []
        for k, reps in enumerate(groups):
            dirs.append(work / f"prep-h{k + 1}")
            prepare_site(cfg, dirs[-1], name=f"h{k + 1}", rounds=args.rounds, local_epochs=None, reports=reps)
        started = time.monotonic()
        local, _ = federate(dirs, work, schema=schema, rounds=args.rounds)
        local_s = (time.monotonic() - started) / args.rounds
        plain = over_flower(dirs, work, schema=schema, rounds=args.rounds, secure=False)
        secure = over_flower(dirs, work, schema=schema, rounds=args.rounds, secure=True)
        assert secure["secure_aggregation"]["on"] and not plain["secure_aggregation"]["on"]
        row = {
            "seed": seed,
            "in-process": wf1(local["evaluation"]["overall"]),
            "flower insecure": wf1(plain["evaluation"]["overall"]),
            "flower TLS + auth + secagg": wf1(secure["evaluation"]["overall"]),
            "s/round in-process (whole run / rounds)": local_s,
            "s/round insecure": float(np.mean([r["seconds"] for r in plain["rounds"] if "seconds" in r])),
            "s/round secure": float(np.mean([r["seconds"] for r in secure["rounds"] if "seconds" in r])),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"| split seed | {' | '.join(k for k in rows[0] if k != 'seed')} |")
    print(f"| --- |{' --- |' * (len(rows[0]) - 1)}")
    for row in rows:
        print(
            f"| {row['seed']} | "
            + " | ".join(
                f"{v:.4f}" if "s/round" not in k else f"{v:.2f}" for k, v in row.items() if k != "seed"
            )
            + " |"
        )


if __name__ == "__main__":
    main()
