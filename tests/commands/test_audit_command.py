"""`dprad audit --attack attribute,extraction` as a user runs it: a served tiny run attacked over real HTTP
on loopback with a budgeted key, the sections kept in audit.json beside earlier ones, and the report
showing the extraction curve and the attribute table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.cli import app
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.report import write_report
from dprad.run import RunRecord
from dprad.serve.app import ServeLimits, create_app, running
from dprad.stages.train import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("audit-cmd")
    data = root / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=220, seed=4)), CHEXPERT14), data)
    cfg = RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(tiny_bert), max_length=96),
        privacy=PrivacyConfig(noise_multiplier=1.0),
        train=TrainConfig(mode="head", epochs=5, lr=0.5, batch_size=64),
    )
    return train(cfg, root / "run").run_dir


def test_attribute_and_extraction_through_the_served_api_land_in_audit_json_and_the_report(
    run_dir: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.yaml"
    entries = [{"id": "attacker", "key": "attacker-key-0123456789", "role": "client", "budget_total": 90}]
    keys.write_text(yaml.safe_dump({"keys": entries}))
    (tmp_path / "attacker.key").write_text("attacker-key-0123456789\n")
    canary = {
        "guesses": 100,
        "correct": 57,
        "epsilon_lower_bound": 0.12,
        "ceiling": 3.2,
        "exceeds_ledger": False,
    }
    (run_dir / "audit.json").write_text(json.dumps({"canary": canary}))
    app_ = create_app(
        run_dir, keys_path=keys, state_dir=tmp_path / "state", limits=ServeLimits(batch_wait_ms=2)
    )
    with running(app_) as url:
        result = CliRunner().invoke(
            app,
            [
                *("audit", str(run_dir), "--attack", "attribute,extraction", "--queries", "30,60,120"),
                *("--url", url, "--key-file", str(tmp_path / "attacker.key"), "--keys", str(keys)),
                *("--bootstrap", "20"),
            ],
        )
    assert result.exit_code == 0, result.output
    assert "model extraction through HTTP" in result.output and "attribute inference" in result.output
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["canary"] == canary  # earlier sections stay
    assert (
        audit["theory"]["private"] is True
        and audit["theory"]["epsilon"] == RunRecord.open(run_dir).ledger.epsilon
    )
    ex = audit["extraction"]
    # the key's budget (90 reports) cut the attacker off before 120 queries, and the curve says where
    assert ex["queries"][:2] == [30, 60] and ex["queries"][-1] <= 90
    assert ex["cut_off"] is not None and 120 in ex["cut_off"]["budgets_not_reached"]
    assert ex["key_budgets"] == [
        {"key": "attacker", "role": "client", "budget_total": 90, "budget_per_day": None}
    ]
    assert "test reports" in ex["evaluated_on"] and ex["through"].startswith("HTTP")
    for a in ex["agreement"]:
        assert 0 <= a["ci_low"] <= a["estimate"] <= a["ci_high"] <= 1
    att = audit["attribute"]
    assert att["pooled"]["members"] > 0 and {r["label"] for r in att["labels"]} == set(CHEXPERT14.labels)
    typed = RunRecord.open(run_dir).audit
    assert typed is not None and typed.extraction is not None and typed.attribute is not None
    assert [p.queries for p in typed.extraction.points] == ex["queries"]
    page = write_report([run_dir], tmp_path / "r.html").read_text()
    for element in ('id="plot-extraction"', 'id="table-extraction"', 'id="table-attribute"'):
        assert element in page, element
    assert "not the patients" in page  # what extraction does and does not threaten


def test_audit_refuses_unknown_attacks_and_bad_budgets(run_dir: Path, tmp_path: Path) -> None:
    two_lines = tmp_path / "two.key"
    two_lines.write_text("secret-one\nsecret-two\n")
    for args, match in (
        (
            ["--attack", "extraction", "--url", "http://127.0.0.1:9", "--key-file", str(tmp_path / "none")],
            "cannot be read",
        ),
        (
            ["--attack", "extraction", "--url", "http://127.0.0.1:9", "--key-file", str(two_lines)],
            "one API key on one line",
        ),
        (["--attack", "loss,magic"], "each must be one of"),
        (["--attack", "extraction", "--queries", "0,10"], "positive report counts"),
        (["--attack", "extraction", "--url", "http://127.0.0.1:9"], "needs --key-file"),
    ):
        res = CliRunner().invoke(app, ["audit", str(run_dir), *args])
        assert res.exit_code != 0 and isinstance(res.exception, DpradError), res.output
        assert match in str(res.exception) and "secret" not in str(res.exception)


def test_audit_refuses_no_bootstrap_too_many_queries_and_other_urls_before_any_work(
    run_dir: Path, tmp_path: Path
) -> None:
    key = tmp_path / "attacker.key"
    key.write_text("attacker-key-0123456789\n")
    audit = run_dir / "audit.json"
    before = audit.read_bytes() if audit.exists() else None
    for args, match in (
        # extraction wrote "ci_low": NaN with no resamples; loss refused it: every attack refuses it now
        (["--attack", "extraction", "--bootstrap", "0"], "--bootstrap 0 must be at least 1"),
        (["--attack", "attribute", "--bootstrap", "-1"], "--bootstrap -1 must be at least 1"),
        # 7.5e10 synthetic patients were being generated
        (
            ["--attack", "extraction", "--queries", "100,100000000000"],
            "--queries 100000000000 is more than 100,000",
        ),
        # refused before the default attacks train their reference models
        (["--url", "ftp://x"], "--url 'ftp://x' must be an http:// or https:// URL with a host"),
        (["--attack", "extraction", "--url", "http://", "--key-file", str(key)], "--url 'http://' must be"),
    ):
        res = CliRunner().invoke(app, ["audit", str(run_dir), *args])
        assert res.exit_code != 0 and isinstance(res.exception, DpradError), res.output
        assert match in str(res.exception)
    assert (audit.read_bytes() if audit.exists() else None) == before
