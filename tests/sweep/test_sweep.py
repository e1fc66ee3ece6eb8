"""`dprad sweep` on a tiny encoder: the grid, the results table, failures, resume after a kill, --jobs 2."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.cli import main
from dprad.commands.sweep import register
from dprad.data.table import reports_frame, write_table
from dprad.privacy import compute_epsilon, epsilon_of, event_from_dict
from dprad.sweep import RESULT_COLUMNS, SweepConfig, plan_cells, run_sweep


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    reports = generate_reports(
        SynthConfig(n_patients=160, seed=11, prevalence={"Pneumothorax": 0.08, "Pleural Other": 0.08})
    )
    write_table(reports_frame(reports, CHEXPERT14), path)
    return path


def write_config(folder: Path, body: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def tiny_body(data: str, models: list[str], **grid: Any) -> dict[str, Any]:
    return {
        "name": "tiny",
        "data": {"path": data},
        "model": {"max_length": 64},
        "train": {"epochs": 2, "batch_size": 64, "checkpoint_every": 1},
        "grid": {"models": models, "epsilons": [3, "inf"], "modes": ["head"], "seeds": [0]} | grid,
        "evaluate": {"n_boot": 50},
        "report": False,
    }


# ------------------------------------------------------------------------------------------------ config


def test_config_paths_are_relative_to_the_config_file_and_unknown_keys_are_named(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "reports.csv").write_text("id,text\n")
    path = write_config(
        tmp_path / "cfg", {"data": {"path": "../reports.csv"}, "grid": {"epsilons": [1, "inf"]}}
    )
    cfg = SweepConfig.load(path)
    assert cfg.datasets[0].data.path == str((tmp_path / "reports.csv").resolve())
    assert cfg.epsilons == (1.0, math.inf) and cfg.models == ("minilm",) and cfg.seeds == (0,)
    for body, key in [
        ({"data": {"path": "x"}, "grids": {}}, "'grids'"),
        ({"data": {"path": "x"}, "grid": {"epsilon": [1]}}, "'grid.epsilon'"),
        (
            {"data": {"path": "x"}, "grid": {"modes": [{"mode": "lora", "train": {"epoch": 1}}]}},
            "train.epoch'",
        ),
        (
            {"data": {"path": "x"}, "grid": {"datasets": [{"name": "a", "path": "x", "formats": "csv"}]}},
            "formats'",
        ),
        ({"data": {"path": "x"}, "train": {"epoch": 1}}, "epoch"),
        ({"data": {"path": "x"}, "privacy": {"epsilon": 1}}, "grid.epsilons"),
        ({"data": {"path": "x"}, "grid": {"epsilons": [0]}}, "grid.epsilons"),
        ({"data": {"path": "x"}, "grid": {"modes": ["dp-sgd"]}}, "dp-sgd"),
    ]:
        bad = write_config(tmp_path / "bad", body)
        with pytest.raises(DpradError, match=key) as err:
            SweepConfig.load(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_grid_expands_to_private_and_non_private_twins(tmp_path: Path) -> None:
    cfg = SweepConfig.from_dict(
        {
            "data": {"path": "r.csv"},
            "grid": {
                "epsilons": [0.1, 1, "inf"],
                "modes": ["dp-lora", {"mode": "full", "epsilons": ["inf"]}],
                "seeds": [0, 1],
            },
        },
        base_dir=tmp_path,
    )
    cells = plan_cells(cfg)
    modes = sorted({(c.mode, c.epsilon) for c in cells})
    assert modes == [("dp-lora", 0.1), ("dp-lora", 1.0), ("full", math.inf), ("lora", math.inf)]
    assert len(cells) == 8 and len({c.id for c in cells}) == 8
    one = next(c for c in cells if c.mode == "dp-lora" and c.epsilon == 1.0 and c.seed == 1)
    assert one.id == "r-minilm-dp-lora-eps1-s1"
    assert (
        one.config.privacy.epsilon == 1.0 and one.config.train.seed == 1 and one.config.data.split_seed == 1
    )
    assert next(c for c in cells if c.mode == "lora").config.privacy.epsilon is None
    fixed = SweepConfig.from_dict(
        {"data": {"path": "r.csv", "split_seed": 7}, "grid": {"seeds": [0, 1], "seed_splits": False}},
        base_dir=tmp_path,
    )
    assert {c.config.data.split_seed for c in plan_cells(fixed)} == {7}
    # auto resolves per dataset (the sweep reads the data to know n); at inf it is the private mode's twin
    auto = SweepConfig.from_dict(
        {"data": {"path": "r.csv"}, "grid": {"epsilons": [1, "inf"]}}, base_dir=tmp_path
    )
    assert [(c.mode, c.id) for c in plan_cells(auto, auto_modes={"r": "head"})] == [
        ("dp-head", "r-minilm-dp-head-eps1-s0"),
        ("head", "r-minilm-head-epsinf-s0"),
    ]


# ------------------------------------------------------------------------------------------------ running


def mtimes(run_dir: Path) -> dict[str, float]:
    return {
        p.name: p.stat().st_mtime_ns
        for p in (run_dir / "done.json", run_dir / "evaluation.json", run_dir / "model" / "head.pt")
    }


def test_sweep_records_a_failed_cell_finishes_the_others_and_resumes(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    body = tiny_body(str(corpus), [str(tiny_bert)])
    # a cell that fails hard inside training: LoRA on modules the encoder does not have
    broken_lora = {
        "mode": "lora",
        "name": "broken-lora",
        "epsilons": ["inf"],
        "lora": {"target_modules": ["nope"]},
    }
    body["grid"]["modes"] = ["head", broken_lora]
    cfg = SweepConfig.load(write_config(tmp_path / "cfg", body))
    out = tmp_path / "out"
    seen: list[tuple[str, int, int]] = []
    result = run_sweep(cfg, out, progress=lambda c, d, t: seen.append((c, d, t)))
    df = pd.read_parquet(result.results_parquet)
    assert list(df.columns) == list(RESULT_COLUMNS)
    assert list(df.cell) == [
        "synth-bert-dp-head-eps3-s0",
        "synth-bert-head-epsinf-s0",
        "synth-bert-broken-lora-epsinf-s0",
    ]
    assert [d for _, d, _ in seen] == [1, 2, 3]
    csv = pd.read_csv(result.results_csv)
    assert list(csv.columns) == list(df.columns) and list(csv.cell) == list(df.cell)
    for col in ("epsilon_target", "epsilon_spent", "weighted_f1", "weighted_f1_low", "macro_auroc"):
        pd.testing.assert_series_equal(csv[col], df[col], check_dtype=False)
    ok, bad = df[df["mode"].str.contains("head")], df[df["mode"] == "lora"]
    assert list(ok.status) == ["done", "done"] and list(bad.status) == ["failed"]
    assert "nope" in bad.error.item() and bad.weighted_f1.isna().all() and bad.attempts.item() == 1
    for r in ok.itertuples():
        run_dir = Path(r.run_dir)
        ev = json.loads((run_dir / "evaluation.json").read_text())
        ledger = json.loads((run_dir / "privacy.json").read_text())
        assert r.weighted_f1 == ev["headline"]["weighted_f1"]["estimate"]
        assert r.weighted_f1_low <= r.weighted_f1 <= r.weighted_f1_high
        assert r.macro_auroc == ev["headline"]["macro_auroc"]["estimate"]
        assert (
            r.test_reports == ev["reports"] == len(json.loads((run_dir / "splits.json").read_text())["test"])
        )
        if r.private:
            assert r.mode == "dp-head" and r.epsilon_target == 3.0
            again = ledger_epsilon(ledger)
            assert r.epsilon_spent == pytest.approx(again) and 2.97 <= r.epsilon_spent <= 3.0
        else:
            assert r.mode == "head" and math.isinf(r.epsilon_target) and not ledger["private"]
    # the selection file names the compared cells, the data they were compared on, and the costs
    sel = json.loads(result.selection.read_text())
    (group,) = sel["groups"]
    private_cell = ok[ok.private].cell.item()
    assert group["candidates"] == [private_cell] and "validation split" in group["compared_on"]
    assert group["costs"]["composition"]["epsilon"] == pytest.approx(ok[ok.private].epsilon_spent.item())
    assert group["costs"]["papernot-steinke"]["epsilon"] >= group["costs"]["composition"]["epsilon"]

    # second pass, in two worker processes, after a finished cell lost its done marker (killed while
    # finishing): the finished cell is reused untouched, the broken one only re-evaluated (its training
    # had finished), and the failed one tried again (and recorded again)
    before = {r.cell: mtimes(Path(r.run_dir)) for r in ok.itertuples()}
    broken = ok[~ok.private].run_dir.item()
    (Path(broken) / "done.json").unlink()
    df2 = pd.read_parquet(run_sweep(cfg, out, jobs=2).results_parquet).set_index("cell")
    for cell, m in before.items():
        now = mtimes(Path(df2.loc[cell, "run_dir"]))
        assert df2.loc[cell, "status"] == "done"
        if df2.loc[cell, "run_dir"] == broken:
            assert now["head.pt"] == m["head.pt"] and now["evaluation.json"] > m["evaluation.json"]
            assert not df2.loc[cell, "reused"] and df2.loc[cell, "attempts"] == 2
        else:
            assert now == m and df2.loc[cell, "reused"] and df2.loc[cell, "attempts"] == 1
    again = df2.loc["synth-bert-broken-lora-epsinf-s0"]
    assert again.status == "failed" and again.attempts == 2 and "nope" in again.error and not again.reused
    # a third pass redoes only the failed cell
    df3 = pd.read_parquet(run_sweep(cfg, out).results_parquet)
    assert list(df3.reused) == [True, True, False] and list(df3.attempts) == [1, 2, 3]


class Killed(BaseException):
    """Stands in for a kill (SIGINT / Ctrl-C): not an Exception, so nothing records it as a cell failure."""


def test_a_sweep_killed_mid_training_resumes_from_the_checkpoint(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    data = tmp_path / "reports.csv"
    data.write_bytes(corpus.read_bytes())
    body = tiny_body(str(data), [str(tiny_bert)], epsilons=["inf"])
    cfg = SweepConfig.load(write_config(tmp_path / "cfg", body))
    out = tmp_path / "out"

    def kill_at_3(info: Any) -> None:
        if info.step == 3:
            raise Killed

    try:
        r = run_sweep(cfg, out, on_step=kill_at_3)
    except Killed:
        pass
    else:
        pytest.fail(f"the sweep was not interrupted: {r.outcomes}")
    (cell,) = plan_cells(cfg, schemas={"reports": "chexpert14"})
    run_dir = out / "cells" / cell.id
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "done.json").exists()
    assert json.loads((run_dir / "cell.json").read_text())["status"] == "running"
    steps_seen: list[int] = []
    df = pd.read_parquet(run_sweep(cfg, out, on_step=lambda i: steps_seen.append(i.step)).results_parquet)
    (row,) = df.itertuples()
    assert row.status == "done" and row.attempts == 2 and not (run_dir / "checkpoint.pt").exists()
    assert steps_seen == list(range(4, int(row.steps) + 1))  # resumed after the checkpoint of step 3
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["step_loss"]) == row.steps
    # the same path with other contents is other data: the cell is trained again, from scratch
    n_before = sum(map(len, json.loads((run_dir / "splits.json").read_text()).values()))
    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[:-5]))
    df = pd.read_parquet(run_sweep(cfg, out).results_parquet)
    (row,) = df.itertuples()
    assert row.status == "done" and not row.reused and row.attempts == 1
    assert sum(map(len, json.loads((run_dir / "splits.json").read_text()).values())) == n_before - 5


def test_cli_sweep_prints_the_table_and_fails_when_a_cell_fails(
    corpus: Path, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    cfg_path = write_config(
        tmp_path / "cfg", tiny_body(str(corpus), [str(tiny_bert), "missing-model"], epsilons=["inf"])
    )
    # through the real entry point (`dprad` runs cli.main): a failed cell must reach the exit code
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(cfg_path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert "synth-bert-head-epsinf-s0" in out and "done" in out
    assert "1 of 2 cells failed" in err and "results:" in err
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert sorted(df.status) == ["done", "failed"]
    res = runner.invoke(app, ["sweep", str(tmp_path / "nope.yaml")])
    assert res.exit_code != 0 and isinstance(res.exception, DpradError)


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_example_config_parses_and_plans(path: Path) -> None:
    cfg = SweepConfig.load(path)
    cells = plan_cells(cfg, auto_modes={d.name: "head" for d in cfg.datasets})
    assert cells and len({c.id for c in cells}) == len(cells)
    shared = (Path(__file__).resolve().parents[3] / "shared" / "data").resolve()  # shared/ may be a link
    assert all(Path(d.data.path).is_relative_to(shared) for d in cfg.datasets)
    assert {c.epsilon for c in cells} >= {0.1, 1.0, 10.0, math.inf}
    if "paper" in path.stem:  # the paper's grid: DP-LoRA, non-private LoRA and full fine-tuning
        assert {c.mode for c in cells} == {"dp-lora", "lora", "full"}
        assert {c.epsilon for c in cells if c.mode == "dp-lora"} == {0.01, 0.1, 1.0, 10.0}


def ledger_epsilon(ledger: dict[str, Any]) -> float:
    """The ledger's epsilon recomputed from its own numbers: its whole event (training and any other DP
    release of the run) when it records one, else the DP-SGD steps."""
    if ledger.get("event"):
        return epsilon_of(event_from_dict(ledger["event"]), delta=ledger["delta"])
    return compute_epsilon(
        noise_multiplier=ledger["noise_multiplier"],
        sample_rate=ledger["sample_rate"],
        steps=ledger["steps"],
        delta=ledger["delta"],
    ).epsilon
