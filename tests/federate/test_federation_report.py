"""A federation in the report (read in a real browser) and in its model card: each hospital's guarantee
is the epsilon of its own ledger, and its metrics are its own test split's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from dprad.cli import main
from dprad.federate.local import LocalTransport
from dprad.federate.server import FederationConfig, run_federation
from federated import fresh

SITES = ("site_a", "site_b", "site_c")


def test_report_and_model_card_state_each_hospitals_own_guarantee(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    sites = fresh(prepared, tmp_path, *SITES)
    log = run_federation(FederationConfig(rounds=1, min_clients=3), LocalTransport(sites), tmp_path / "fed")
    main(["model-card", str(tmp_path / "fed")])
    card = (tmp_path / "fed" / "MODEL_CARD.md").read_text()
    for s in sites:
        eps = json.loads((s / "privacy.json").read_text())["epsilon"]
        assert f"| {s.name} | ε = {eps:.3g}" in card
    assert "Aggregation: plain: the server saw each hospital's update" in card  # in-process: no secure sum
    page = tmp_path / "report.html"
    main(["report", *map(str, sites), str(tmp_path / "fed"), "--out", str(page)])
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not on PATH (Debian package 'chromium'; .ci/run installs it)")
    dom = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=True,
    ).stdout  # fmt: skip
    table = dom[dom.index('id="table-federation-0"') :]
    table = table[: table.index("</table>")]
    for name, ev in log["evaluation"]["sites"].items():
        w = ev["headline"]["weighted_f1"]
        assert f"{w['estimate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}]" in table, name
    with pytest.raises(SystemExit):  # a federation alone is not a report: its sites' runs are
        main(["report", str(tmp_path / "fed"), "--out", str(tmp_path / "x.html")])
