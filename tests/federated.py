"""Helpers of the federation tests: three hospitals of a synthetic corpus (its three sites) as CSVs, a site
prepared with ``dprad federate client``, and fresh copies (a federation spends a site's budget)."""

from __future__ import annotations

import shutil
from pathlib import Path

from dprad.cli import main
from dprad.data.schemas import CHEXPERT14, CTRATE18
from dprad.data.synth import SynthConfig, generate_reports
from dprad.data.table import reports_frame, write_table

ROUNDS = 2


def write_sites(root: Path, modality: str = "cxr") -> dict[str, Path]:
    reports = generate_reports(SynthConfig(n_patients=240, seed=11, modality=modality))
    paths = {}
    for site in ("site_a", "site_b", "site_c"):
        path = root / f"{site}-{modality}.csv"
        mine = [r for r in reports if r.attrs["site"] == site]
        write_table(reports_frame(mine, CHEXPERT14 if modality == "cxr" else CTRATE18), path)
        paths[site] = path
    return paths


def prepare(
    data: Path,
    out: Path,
    *,
    name: str,
    model: Path,
    rounds: int = ROUNDS,
    epsilon: str = "8",
    extra: tuple[str, ...] | list[str] = (),
) -> Path:
    main(
        [
            "federate", "client", str(data), "--out", str(out), "--name", name, "--rounds", str(rounds),
            "--model", str(model), "--max-length", "48", "--epsilon", epsilon, "--local-epochs", "2", *extra,
        ]
    )  # fmt: skip
    return out


def fresh(prepared: dict[str, Path], dest: Path, *names: str) -> list[Path]:
    out = []
    for n in names:
        shutil.copytree(prepared[n], dest / n)
        out.append(dest / n)
    return out
