"""The training stages' seams: config round trip, typed CLI overrides, one metrics engine, empty splits,
lossless label tables, the ledger's event, and no process-global side effects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.cli import main
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.stages.train import prepare, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=200, seed=5)), CHEXPERT14), path)
    return path


def small(corpus: Path, model: Path, **privacy: object) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(corpus)),
        model=ModelConfig(name=str(model), max_length=48),
        privacy=PrivacyConfig(**privacy),  # type: ignore[arg-type]
        train=TrainConfig(mode="head", epochs=3.0, batch_size=64, lr=1.0),
    )


def test_a_runs_config_json_reproduces_its_ledger_and_metrics(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    # the default (secret noise): config.json reproduces the plan and the guarantee, not the noisy weights
    first = tmp_path / "a"
    train(small(corpus, tiny_bert, epsilon=2.0), first)
    main(["train", "--config", str(first / "config.json"), "--out", str(tmp_path / "b")])
    for name in ("privacy.json", "splits.json"):
        assert json.loads((first / name).read_text()) == json.loads((tmp_path / "b" / name).read_text()), name
    cfg_a = json.loads((first / "config.json").read_text())
    assert cfg_a == json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg_a["train"]["mode"] == "head" and cfg_a["privacy"]["epsilon"] == 2.0
    assert cfg_a["privacy"]["noise_seed"] is None
    losses = [json.loads((d / "history.json").read_text())["step_loss"] for d in (first, tmp_path / "b")]
    assert losses[0] != losses[1]  # other Poisson batches and noise: nothing written regenerates them
    # a stated --noise-seed: config.json reproduces everything, bit for bit
    seeded = tmp_path / "c"
    train(small(corpus, tiny_bert, epsilon=2.0, noise_seed=4), seeded)
    main(["train", "--config", str(seeded / "config.json"), "--out", str(tmp_path / "d")])
    for name in ("privacy.json", "metrics.json", "splits.json", "history.json"):
        a = json.loads((seeded / name).read_text())
        b = json.loads((tmp_path / "d" / name).read_text())
        assert a == b, name


def test_the_ledger_event_recomputes_its_epsilon(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from dprad.privacy import epsilon_of, event_from_dict

    led = json.loads(
        (train(small(corpus, tiny_bert, epsilon=1.0), tmp_path / "r").run_dir / "privacy.json").read_text()
    )
    event = event_from_dict(led["event"])
    assert epsilon_of(event, delta=led["delta"], accountant="pld") == pytest.approx(led["epsilon"], rel=1e-9)
    # the run's event: DP-SGD (Poisson-sampled Gaussian, composed over the steps) and the DP thresholds
    training, thresholds = led["event"]["events"]
    assert training["event"]["sampling_probability"] == led["sample_rate"]
    assert training["count"] == led["steps"]
    assert training["event"]["event"]["noise_multiplier"] == led["noise_multiplier"]
    assert thresholds == {"type": "GaussianDpEvent", "noise_multiplier": led["parts"][1]["noise_multiplier"]}


def test_flags_typed_at_their_default_value_still_override_the_config_file(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"format": "csv", "split_seed": 3},
                "model": {"name": str(tiny_bert), "max_length": 48},
                "privacy": {"epsilon": 1.0, "force_delta": True},
                "train": {"mode": "head", "epochs": 2, "lr": 0.5, "batch_size": 64},
            }
        )
    )
    out = tmp_path / "run"
    # string, number and bool flags, each typed with its default value
    main(
        [
            *("train", str(corpus), "--config", str(config), "--out", str(out)),
            *("--format", "auto", "--split-seed", "0", "--no-force-delta"),
        ]
    )
    got = json.loads((out / "config.json").read_text())
    assert got["data"]["format"] == "auto"
    assert got["data"]["split_seed"] == 0
    assert got["privacy"]["force_delta"] is False
    assert got["train"]["lr"] == 0.5 and got["model"]["max_length"] == 48  # not typed: the file's values


def test_unknown_config_keys_are_an_error(tmp_path: Path, corpus: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  mode: head\n  learning_rate: 3\n")
    with pytest.raises(SystemExit) as ex:
        main(["train", str(corpus), "--config", str(bad), "--out", str(tmp_path / "r")])
    assert ex.value.code == 2


def test_training_metrics_equal_evaluate_point_estimates(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    from dprad.stages.evaluate import EvalOptions, evaluate_run

    res = train(small(corpus, tiny_bert), tmp_path / "r")
    for at, key in (("0.5", "threshold_0.5"), ("val", "threshold_val")):  # 0.5, and the shipped thresholds
        ev = evaluate_run(tmp_path / "r", corpus, options=EvalOptions(n_boot=20, split="test", thresholds=at))
        m = res.metrics["test"][key]
        for k in ("weighted_f1", "macro_f1", "micro_f1", "macro_auroc"):
            assert ev["headline"][k]["estimate"] == pytest.approx(m[k], abs=1e-9), k
        for row_t, row_e in zip(m["per_label"], ev["per_label"], strict=True):
            for k in ("precision", "recall", "f1"):
                assert row_e[k]["estimate"] == pytest.approx(row_t[k], abs=1e-9)


def test_split_1_0_0_trains_on_everything_and_says_so(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    main(
        [
            "train",
            str(corpus),
            "--model",
            str(tiny_bert),
            "--mode",
            "head",
            "--epochs",
            "2",
            "--max-length",
            "48",
            "--split",
            "1,0,0",
            "--out",
            str(out),
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    assert splits["val"] == [] and splits["test"] == [] and len(splits["train"]) > 0
    assert "test" not in metrics and metrics["thresholds"]["values"] == [0.5] * 14
    notes = json.loads((out / "notes.json").read_text())
    assert any("test split is empty" in n for n in notes) and any("val split is empty" in n for n in notes)


def test_a_run_restores_the_torch_thread_count(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    c = small(corpus, tiny_bert)
    train(c.with_(train=TrainConfig(mode="head", epochs=1.0, batch_size=64, threads=1)), tmp_path / "r")
    assert torch.get_num_threads() == before


def test_label_gold_then_train_sees_the_same_reports_and_splits_as_the_native_file(
    iu_csv: Path, tmp_path: Path
) -> None:
    table = tmp_path / "iu.csv"
    main(["label", str(iu_csv), "--format", "iu-xray", "--teacher", "gold", "--out", str(table)])
    native = prepare(RunConfig(data=DataConfig(path=str(iu_csv), format="iu-xray")))
    relabelled = prepare(RunConfig(data=DataConfig(path=str(table))))
    assert native[0].labels == relabelled[0].labels
    for name in ("train", "val", "test"):
        a, b = getattr(native[1], name), getattr(relabelled[1], name)
        assert [r.id for r in a] == [r.id for r in b], name
        assert [r.labels for r in a] == [r.labels for r in b], name
    assert len(native[1].train) + len(native[1].val) + len(native[1].test) == 3734


def test_the_public_corpus_shares_no_text_with_dprad_synth() -> None:
    from dprad.nn.public import public_reports

    for modality in ("cxr", "ct"):
        user = {r.text for r in generate_reports(SynthConfig(modality=modality))}
        public = public_reports(modality)
        assert len(public) > 500
        assert not [r.text for r in public if r.text in user], modality


def test_auto_is_the_head_at_every_size_and_says_when_that_is_unmeasured(tiny_bert: Path) -> None:
    from dprad.stages.plan import AUTO_MEASURED_UP_TO, plan_run, resolve

    base = RunConfig(
        data=DataConfig(schema="chexpert14"),
        model=ModelConfig(name=str(tiny_bert)),
        privacy=PrivacyConfig(epsilon=1.0),
    )
    for n in (100, AUTO_MEASURED_UP_TO, 10 * AUTO_MEASURED_UP_TO):
        assert resolve(base, n_train=n).train.mode == "head"
    assert not any(
        "mode auto" in n for n in plan_run(base, generate_reports(SynthConfig(n_patients=200))).notes
    )
    many = generate_reports(SynthConfig(n_patients=4500, seed=3))  # about 3,150 training patients
    plan = plan_run(base, many)
    assert plan.cfg.train.mode == "head" and plan.n > AUTO_MEASURED_UP_TO
    assert any(f"only up to {AUTO_MEASURED_UP_TO:,}" in n for n in plan.notes)
    # a mode the user chose is not second-guessed
    chosen = base.with_(train=TrainConfig(mode="lora"))
    assert not any("mode auto" in n for n in plan_run(chosen, many).notes)
