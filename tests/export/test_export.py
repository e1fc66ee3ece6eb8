"""`dprad export`: the shareable part of a run holds exactly the safe list, loads and scores like the run
(through load_run, evaluate and a real server), and refuses what the privacy guarantee does not cover."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.cli import app, main
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.reports import Report
from dprad.data.table import reports_frame, write_table
from dprad.export import export_run, safe_files
from dprad.export.safe import ENCODER_FILES
from dprad.metrics.evaluation import EvalOptions
from dprad.modes import load_run
from dprad.run import RunRecord
from dprad.serve.app import create_app, running
from dprad.serve.keys import hash_key
from dprad.stages.evaluate import evaluate_run
from dprad.stages.train import train

SYNTH = SynthConfig(n_patients=160, seed=7, prevalence={"Pneumothorax": 0.08})
KEY = "client-key-0123456789abcdef"
# the tiny encoder (tests/tiny.py): config, weights and the default tokenizer's files
ENCODER = {
    "encoder/config.json",
    "encoder/model.safetensors",
    "encoder/tokenizer.json",
    "encoder/tokenizer_config.json",
    "encoder/vocab.txt",
    "encoder/special_tokens_map.json",
}
COMMON = {
    "MANIFEST.json",
    "MODEL_CARD.md",
    "config.json",
    "privacy.json",
    "schema.json",
    "thresholds.json",
    "model/head.safetensors",
}
# the safe list, per mode, spelled out: a file added to an export fails here until it is added on purpose
SAFE = {
    "head": COMMON | ENCODER,
    "lora": COMMON
    | ENCODER
    | {
        "model/center.safetensors",  # LP-FT (the default): the probe's public feature centre
        "model/adapter/adapter_config.json",
        "model/adapter/adapter_model.safetensors",
    },
    "full": COMMON
    | ENCODER
    | {"model/center.safetensors", "model/encoder/config.json", "model/encoder/model.safetensors"},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    write_table(reports_frame(generate_reports(SYNTH), CHEXPERT14), path)
    return path


def run_config(data: Path, encoder: Path, cache: Path, mode: str, **privacy: object) -> RunConfig:
    private = privacy.pop("private", True)
    return RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(encoder), max_length=64),
        privacy=PrivacyConfig(epsilon=3.0 if private else None, accountant="rdp", **privacy),  # type: ignore[arg-type]
        train=TrainConfig(
            mode=mode, epochs=3.0 if mode == "head" else 1.0, batch_size=64, feature_cache=str(cache)
        ),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, corpus: Path, tiny_bert: Path) -> dict[str, Path]:
    """A private head (DP thresholds), a private LoRA and full fine-tuning (LP-FT), a non-private head, and a private head whose
    thresholds were fitted on validation WITHOUT DP."""
    root = tmp_path_factory.mktemp("runs")
    cache = root / "features"
    plans = {
        "head": run_config(corpus, tiny_bert, cache, "head"),
        "lora": run_config(corpus, tiny_bert, cache, "lora"),
        "full": run_config(corpus, tiny_bert, cache, "full"),
        "plain": run_config(corpus, tiny_bert, cache, "head", private=False),
        "val": run_config(corpus, tiny_bert, cache, "head", thresholds="val"),
    }
    return {name: train(cfg, root / name).run_dir for name, cfg in plans.items()}


@pytest.fixture(scope="module")
def exports(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {mode: export_run(runs[mode], root / mode) for mode in ("head", "lora", "full")}


def listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def some_reports() -> list[Report]:
    texts = [
        "Small apical pneumothorax on the right.",
        "No acute cardiopulmonary disease.",
        "Moderate cardiomegaly with a small left pleural effusion.",
        "Possible pneumonia in the right lower lobe.",
    ]
    return [Report(id=f"q{i}", patient_id=f"q{i}", text=t) for i, t in enumerate(texts)]


@pytest.mark.parametrize("mode", ["head", "lora", "full"])
def test_export_holds_exactly_the_safe_list(
    runs: dict[str, Path], exports: dict[str, Path], mode: str
) -> None:
    out = exports[mode]
    assert listing(out) == SAFE[mode]
    # the export module's own list says the same, with a reason for every file
    record = RunRecord.open(out)
    listed = set(safe_files(mode, lp_ft=mode != "head", private=True))
    encoder = {n for n in listing(out) if n.startswith("encoder/")}
    assert listed | encoder | {"MANIFEST.json"} == SAFE[mode]
    assert all(
        any(Path(n).match(p) for p in ENCODER_FILES) for n in (e.removeprefix("encoder/") for e in encoder)
    )
    manifest = record.manifest()
    assert manifest is not None and manifest.run == mode
    assert {e.path for e in manifest.files} == SAFE[mode] - {"MANIFEST.json"}
    for e in manifest.files:
        data = (out / e.path).read_bytes()
        assert e.sha256 == hashlib.sha256(data).hexdigest() and e.bytes == len(data) and e.why
    left = dict(manifest.left_out)
    for name in (
        "splits.json",
        "history.json",
        "metrics.json",
        "reference.json",
        "notes.json",
        "model/head.pt",
    ):
        assert name in left and left[name] != "not on the safe list", name
    # every weight is safetensors: no pickle leaves
    assert not any(n.endswith((".pt", ".bin", ".pkl")) for n in listing(out))


@pytest.mark.parametrize("mode", ["head", "lora"])
def test_export_shares_no_training_id_and_the_ledger_as_written(
    runs: dict[str, Path], exports: dict[str, Path], mode: str
) -> None:
    run, out = runs[mode], exports[mode]
    assert (out / "privacy.json").read_bytes() == (run / "privacy.json").read_bytes()
    ids = {i for split in json.loads((run / "splits.json").read_text()).values() for i in split}
    patients = {r.patient_id for r in generate_reports(SYNTH) if r.id in ids}
    assert len(ids) > 100
    for name in listing(out):
        if name.endswith((".json", ".md", ".txt")):
            text = (out / name).read_text(encoding="utf-8")
            found = [i for i in ids | patients if i in text]
            assert not found, (name, found[:5])
    record = RunRecord.open(out)
    assert record.is_export and record.splits == {} and record.metrics == {}
    assert Path(record.model_dir) == out / "encoder"
    assert record.thresholds == RunRecord.open(run).thresholds and record.thresholds.fitted_on == "val (DP)"
    card = (out / "MODEL_CARD.md").read_text()
    assert card.startswith(f"# Model card: {mode}\n") and "None in this export" in card
    assert "Weighted F1" not in card and "Note from training" not in card


@pytest.mark.parametrize("mode", ["head", "lora", "full"])
def test_export_predicts_like_the_run_and_evaluates(
    runs: dict[str, Path], exports: dict[str, Path], corpus: Path, mode: str, tiny_bert: Path
) -> None:
    reports = some_reports()
    from_run = load_run(runs[mode]).predict(reports).probs
    from_export = load_run(exports[mode]).predict(reports).probs
    np.testing.assert_allclose(from_export, from_run, atol=1e-6, rtol=0)
    res = evaluate_run(exports[mode], corpus, options=EvalOptions(n_boot=5))
    assert res["split"] == "all" and res["reports"] == len(generate_reports(SYNTH))
    assert res["privacy"] == RunRecord.open(runs[mode]).ledger.to_dict()


def test_export_loads_without_the_base_encoder_where_it_was(
    runs: dict[str, Path], tmp_path: Path, tiny_bert: Path
) -> None:
    """The export bundles its encoder: moved, with the run's encoder path gone, it still loads."""
    import shutil

    encoder = tmp_path / "encoder-gone"
    shutil.copytree(tiny_bert, encoder)
    run = tmp_path / "run"
    shutil.copytree(runs["head"], run)
    config = json.loads((run / "config.json").read_text())
    config["derived"]["model_dir"] = str(encoder)
    (run / "config.json").write_text(json.dumps(config))
    out = export_run(run, tmp_path / "export")
    shutil.rmtree(encoder)
    moved = tmp_path / "elsewhere" / "shared-model"
    moved.parent.mkdir()
    shutil.move(str(out), moved)
    assert load_run(moved).predict(some_reports()).probs.shape == (4, len(CHEXPERT14))


def test_served_export_decides_like_the_served_run(
    runs: dict[str, Path], exports: dict[str, Path], tmp_path: Path
) -> None:
    import yaml

    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump({"keys": [{"id": "client", "key_sha256": hash_key(KEY), "role": "admin"}]})
    )
    body = {"reports": [{"id": r.id, "text": r.text} for r in some_reports()]}
    answers = {}
    for name, path in (("run", runs["lora"]), ("export", exports["lora"])):
        app_ = create_app(path, keys_path=keys, state_dir=tmp_path / f"state-{name}")
        with running(app_) as url:
            r = httpx.post(f"{url}/v1/classify", json=body, headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code == 200, r.text
            answers[name] = r.json()
            model = httpx.get(f"{url}/v1/model", headers={"Authorization": f"Bearer {KEY}"}).json()
            assert bool(model["metrics"]) == (name == "run")  # an export serves no non-DP metrics
    run, exp = answers["run"], answers["export"]
    assert exp["labels"] == run["labels"] and exp["threshold_rule"] == run["threshold_rule"]
    for a, b in zip(run["results"], exp["results"], strict=True):
        assert a["decisions"] == b["decisions"] and a["positive"] == b["positive"]
        np.testing.assert_allclose(
            [b["probabilities"][lab] for lab in exp["labels"]],
            [a["probabilities"][lab] for lab in run["labels"]],
            atol=1e-6,
        )


def test_refuses_what_the_guarantee_does_not_cover(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DpradError, match=r"plain: not private") as err:
        export_run(runs["plain"], tmp_path / "plain")
    assert "\n" not in str(err.value) and not (tmp_path / "plain").exists()
    with pytest.raises(
        DpradError, match=r"val: its thresholds were fitted on the validation split without DP"
    ):
        export_run(runs["val"], tmp_path / "val")
    assert not list(tmp_path.iterdir())  # nothing half-written, no temporary folder left
    # forced: exported, and the card's first line says what is not covered
    card = (
        export_run(runs["plain"], tmp_path / "plain", force_non_private=True) / "MODEL_CARD.md"
    ).read_text()
    assert "no privacy guarantee" in card.splitlines()[0]
    card = (export_run(runs["val"], tmp_path / "val", force_non_private=True) / "MODEL_CARD.md").read_text()
    assert "thresholds" in card.splitlines()[0] and "WITHOUT DP" in card.splitlines()[0]
    thresholds = RunRecord.open(tmp_path / "val").thresholds
    assert thresholds.fitted_on == "val (NOT private)"


def test_refuses_an_existing_folder_and_replaces_it_on_request(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DpradError, match="exists and is not empty"):
        export_run(runs["head"], out)
    assert listing(out) == {"keep.txt"}
    with pytest.raises(DpradError, match="outside the run"):
        export_run(runs["head"], runs["head"] / "export")
    export_run(runs["head"], out, overwrite=True)
    assert listing(out) == SAFE["head"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the old one removed, no temporary folder left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert listing(export_run(runs["head"], empty)) == SAFE["head"]


def test_include_evaluation_and_the_command(runs: dict[str, Path], corpus: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "head"
    shutil.copytree(runs["head"], run)
    with pytest.raises(DpradError, match=r"no evaluation\.json"):
        export_run(run, tmp_path / "none", include=("evaluation",))
    with pytest.raises(DpradError, match="--include audit: not one of evaluation"):
        export_run(run, tmp_path / "none", include=("audit",))
    main(["evaluate", str(run), str(corpus), "--bootstrap", "5", "--out", str(run / "evaluation.json")])
    result = CliRunner().invoke(
        app, ["export", str(run), "--out", str(tmp_path / "ex"), "--include", "evaluation"]
    )
    assert result.exit_code == 0, result.output
    assert listing(tmp_path / "ex") == SAFE["head"] | {"evaluation.json"}
    # the run's evaluation, its local paths named (the run directory and the data by their names)
    own = json.loads((run / "evaluation.json").read_text())
    shipped = json.loads((tmp_path / "ex" / "evaluation.json").read_text())
    assert (own["run"], own["data"]) == (str(run), str(corpus))
    assert (shipped["run"], shipped["data"]) == (run.name, corpus.name)
    assert {k: v for k, v in shipped.items() if k not in ("run", "data")} == {
        k: v for k, v in own.items() if k not in ("run", "data")
    }
    assert "model/head.safetensors" in result.output and "splits.json" in result.output
    card = (tmp_path / "ex" / "MODEL_CARD.md").read_text().splitlines()
    assert "private data WITHOUT differential privacy" in card[0] and "## Metrics" in card
    refused = CliRunner().invoke(app, ["export", str(runs["plain"]), "--out", str(tmp_path / "p")])
    assert refused.exit_code != 0 and not (tmp_path / "p").exists()
    # predict on an export, through the command line
    scores = tmp_path / "scores.csv"
    main(["predict", str(tmp_path / "ex"), str(corpus), "--out", str(scores)])
    assert scores.is_file()
