"""End-to-end training on tiny random-init encoders: the run directory, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.cli import main
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.modes import load_run
from dprad.privacy import compute_epsilon, epsilon_of, event_from_dict
from dprad.stages.train import StepInfo, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    reports = generate_reports(
        SynthConfig(n_patients=260, seed=11, prevalence={"Pneumothorax": 0.06, "Pleural Other": 0.06})
    )
    write_table(reports_frame(reports, CHEXPERT14), path)
    return path


def cfg(data: Path, model: Path, mode: str, **train: object) -> RunConfig:
    private = mode.startswith("dp-")
    return RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(model), max_length=64),
        privacy=PrivacyConfig(epsilon=3.0 if private else None),
        train=TrainConfig(
            mode=mode, **{"epochs": 2.0, "batch_size": 64, "lr": 1e-2, "checkpoint_every": 1} | train
        ),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("mode", ["dp-lora", "dp-head", "lora", "dp-full"])
def test_run_directory_describes_itself_and_reloads(
    corpus: Path, tiny_bert: Path, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "run"
    result = train(cfg(corpus, tiny_bert, mode), out)
    files = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "privacy.json",
        "history.json",
        "metrics.json",
        "schema.json",
        "splits.json",
        "model",
    } <= files
    assert "checkpoint.pt" not in files
    ledger = json.loads((out / "privacy.json").read_text())
    config = json.loads((out / "config.json").read_text())
    # privacy is a switch: the config names the mode, the ledger names it with its privacy
    assert ledger["mode"] == mode and config["train"]["mode"] == mode.removeprefix("dp-")
    if mode.startswith("dp-"):
        # the synthetic corpus has repeat patients: the unit of privacy is the patient, sampled as such
        assert ledger["private"] is True and ledger["accountant"] == "pld"
        assert ledger["privacy_unit"] == "patient" and ledger["sampler"] == "poisson-patient"
        # the ledger's epsilon is recomputable from the ledger's own numbers, and within the target
        again = compute_epsilon(
            noise_multiplier=ledger["noise_multiplier"],
            sample_rate=ledger["sample_rate"],
            steps=ledger["steps"],
            delta=ledger["delta"],
            accountant="pld",
        ).epsilon
        # training is one part (LoRA / full: LP-FT's fine-tuning, after the linear probe's part); the DP
        # thresholds another; the total is what the target bounds
        names = [p["part"].split(" ")[0] for p in ledger["parts"]]
        assert names == (
            ["linear", "fine-tuning", "thresholds"] if mode != "dp-head" else ["training", "thresholds"]
        )
        train_part = ledger["parts"][-2]
        assert train_part["epsilon"] == pytest.approx(again) and again < ledger["epsilon"]
        total = epsilon_of(event_from_dict(ledger["event"]), delta=ledger["delta"])
        assert ledger["epsilon"] == pytest.approx(total) and 0.99 * 3.0 <= ledger["epsilon"] <= 3.0
        assert ledger["delta"] < 1 / ledger["dataset_size"]
        assert "differential privacy" in ledger["statement"] and "pre-training" in ledger["statement"]
        history = json.loads((out / "history.json").read_text())
        assert history["epsilon_per_epoch"][-1]["epsilon"] == pytest.approx(train_part["epsilon"])
        # the sampler the run used is the one the accountant assumed: Poisson at the ledger's rate
        sizes = np.array(history["batch_units"])  # patients or reports: the units the accountant counts
        n, q = ledger["dataset_size"], ledger["sample_rate"]
        assert len(sizes) == ledger["steps"] and len(set(sizes.tolist())) > 1
        assert abs(sizes.mean() - q * n) < 4 * np.sqrt(n * q * (1 - q) / len(sizes))
    else:
        assert ledger["private"] is False and ledger["epsilon"] is None and "WITHOUT" in ledger["statement"]
    assert (out / "model" / "adapter" / "adapter_config.json").exists() == (
        mode == "dp-lora" or mode == "lora"
    )
    # one call reloads the run; its predictions equal the ones training evaluated
    predictor = load_run(out)
    test_ids = set(json.loads((out / "splits.json").read_text())["test"])
    reports = [
        r
        for r in generate_reports(
            SynthConfig(n_patients=260, seed=11, prevalence={"Pneumothorax": 0.06, "Pleural Other": 0.06})
        )
        if r.id in test_ids
    ]
    preds = predictor.predict(reports)
    assert preds.probs.shape == (len(reports), 14) and ((preds.probs >= 0) & (preds.probs <= 1)).all()
    from dprad.data.reports import label_matrix
    from dprad.metrics.scores import summary

    y, m = label_matrix(reports, CHEXPERT14)
    again = summary(y, preds.probs, mask=m)["weighted_f1"]
    assert again == pytest.approx(result.metrics["test"]["threshold_0.5"]["weighted_f1"], abs=1e-6)


def test_resume_after_a_crash_gives_the_same_run(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    c = cfg(corpus, tiny_bert, "dp-lora", epochs=3.0)
    c = c.with_(privacy=PrivacyConfig(epsilon=3.0, noise_seed=2))  # stated: a whole run to compare with
    whole = train(c, tmp_path / "whole")

    def crash(info: StepInfo) -> None:
        if info.step == 5:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(c, tmp_path / "resumed", on_step=crash)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists() and not (
        tmp_path / "resumed" / "privacy.json"
    ).exists()
    seen: list[int] = []
    resumed = train(c, tmp_path / "resumed", on_step=lambda s: seen.append(s.step))
    assert seen[0] == 6  # steps 1-5 are not repeated
    a, b = whole.ledger.to_dict(), resumed.ledger.to_dict()
    assert a == b
    ha = json.loads((tmp_path / "whole" / "history.json").read_text())
    hb = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert ha == hb and len(hb["step_loss"]) == a["steps"]
    wa = torch.load(tmp_path / "whole" / "model" / "head.pt")
    wb = torch.load(tmp_path / "resumed" / "model" / "head.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(epsilon=0.0), "--epsilon 0.0 must be a positive number"),
        (dict(epsilon=-2.0), "must be a positive number"),
        (dict(epsilon=1.0, delta=1.5), r"--delta 1.5 must be in \(0, 1\)"),
        (dict(epsilon=1.0, delta=0.01), r"is >= 1/n"),
        (dict(epsilon=1.0, noise_multiplier=1.0), "exactly one of --epsilon and --noise-multiplier"),
        (dict(epsilon=1.0, max_grad_norm=float("nan")), "--max-grad-norm nan must be a positive number"),
        (dict(noise_multiplier=float("inf")), "--noise-multiplier inf must be a positive number"),
    ],
)
def test_bad_privacy_input_is_refused_before_anything_is_written(
    corpus: Path, tiny_bert: Path, tmp_path: Path, change: dict[str, object], match: str
) -> None:
    with pytest.raises(DpradError, match=match):
        c = cfg(corpus, tiny_bert, "dp-lora").with_(privacy=PrivacyConfig(**change))  # type: ignore[arg-type]
        train(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_label_without_positives_and_empty_split_and_non_encoder(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    reports = generate_reports(SynthConfig(n_patients=80, seed=1, prevalence={"Pneumothorax": 0.0}))
    data = tmp_path / "no_ptx.csv"
    write_table(reports_frame(reports, CHEXPERT14), data)
    with pytest.raises(DpradError, match="'Pneumothorax' of schema 'chexpert14' have no positive report"):
        train(cfg(data, tiny_bert, "dp-lora"), tmp_path / "a")
    split = tmp_path / "split.csv"
    df = reports_frame(generate_reports(SynthConfig(n_patients=40, seed=1)), CHEXPERT14)
    df["split"] = "test"
    df.to_csv(split, index=False)
    with pytest.raises(DpradError, match="the training split is empty"):
        train(
            cfg(split, tiny_bert, "dp-lora").with_(data=DataConfig(path=str(split), split_col="split")),
            tmp_path / "b",
        )
    gpt = tmp_path / "gpt2"
    gpt.mkdir()
    (gpt / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2})
    )
    with pytest.raises(DpradError, match="model type 'gpt2' is not a supported encoder"):
        train(cfg(corpus, gpt, "lora"), tmp_path / "c")
    with pytest.raises(DpradError, match="is not a Hugging Face model directory"):
        train(cfg(corpus, tmp_path / "nothing", "lora"), tmp_path / "d")
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_cli_train_predict_epsilon(
    corpus: Path, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    main(
        [
            "train",
            str(corpus),
            "--out",
            str(out),
            "--model",
            str(tiny_bert),
            "--mode",
            "dp-head",
            "--epsilon",
            "1",
            "--epochs",
            "3",
            "--batch-size",
            "64",
            "--max-length",
            "64",
        ]
    )
    ledger = json.loads((out / "privacy.json").read_text())
    assert ledger["target_epsilon"] == 1.0 and ledger["epsilon"] <= 1.0
    scores = tmp_path / "scores.csv"
    main(["predict", str(out), str(corpus), "--out", str(scores)])
    df = pd.read_csv(scores)
    assert list(df.columns) == ["id", *CHEXPERT14.labels, "loss"] and df["loss"].notna().all()
    capsys.readouterr()
    main(["epsilon", "-q", "0.04", "--steps", "2250", "-s", "1.5", "--accountant", "rdp", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert res["epsilon"] == pytest.approx(7.33, abs=0.01) and res["accountant"] == "rdp"
    main(["epsilon", "-q", "0.04", "--steps", "2250", "--epsilon", "1.0", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert 0.99 <= res["epsilon"] <= 1.0 and res["noise_multiplier"] > 1.5
    with pytest.raises(SystemExit) as ex:
        main(
            [
                "train",
                str(corpus),
                "--out",
                str(out),
                "--model",
                str(tiny_bert),
                "--mode",
                "dp-head",
                "--epsilon",
                "1",
            ]
        )
    assert ex.value.code == 2  # a finished run is not overwritten silently


@pytest.mark.parametrize("example", sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")))
def test_example_configs_load_and_train(example: Path, corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    main(
        [
            "train",
            str(corpus),
            "--config",
            str(example),
            "--model",
            str(tiny_bert),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--max-length",
            "32",
        ]
    )
    config = json.loads((out / "config.json").read_text())
    import yaml

    wanted = yaml.safe_load(example.read_text())
    for section, values in wanted.items():
        for key, value in values.items():
            if key in {"epochs", "batch_size", "max_length", "name", "pooling"}:
                continue  # overridden by the flags above; pooling 'auto' is resolved to what the model declares
            got = config[section][key]
            assert (list(got) if isinstance(got, list | tuple) else got) == value, (section, key)
    ledger = json.loads((out / "privacy.json").read_text())
    assert (
        ledger["target_epsilon"] == wanted["privacy"]["epsilon"]
        and ledger["epsilon"] <= ledger["target_epsilon"]
    )


def test_overwrite_leaves_no_file_of_the_earlier_run(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(cfg(corpus, tiny_bert, "dp-head"), out)
    assert (out / "privacy.json").exists()

    def crash(info: StepInfo) -> None:
        raise RuntimeError("crash in the new run")

    with pytest.raises(RuntimeError):
        train(cfg(corpus, tiny_bert, "head"), out, overwrite=True, on_step=crash)
    # the old ledger (a private run) must not sit beside the new, non-private config
    assert json.loads((out / "config.json").read_text())["train"]["mode"] == "head"
    assert not (out / "privacy.json").exists() and not (out / "model").exists()


@pytest.mark.parametrize("eps", [0.01, 0.1, 1.0, 10.0])
def test_calibrated_runs_across_the_epsilon_range(
    eps: float, corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    c = cfg(corpus, tiny_bert, "dp-head").with_(privacy=PrivacyConfig(epsilon=eps, accountant="rdp"))
    led = train(c, tmp_path / "run").ledger
    assert led.accountant == "rdp" and 0.99 * eps <= led.epsilon <= eps  # type: ignore[operator]
    assert led.noise_multiplier is not None and led.noise_multiplier > 0


def test_public_warm_start_is_resolved_recorded_and_refused_where_it_does_not_apply(
    corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    from dprad.stages.train import resolve

    base = cfg(corpus, tiny_bert, "dp-head")
    at = lambda eps: base.with_(privacy=PrivacyConfig(epsilon=eps))  # noqa: E731
    assert resolve(at(1.0), n_train=500, schema=CHEXPERT14).train.public_warm_start is True
    assert resolve(at(10.0), n_train=500, schema=CHEXPERT14).train.public_warm_start is True
    plain = cfg(corpus, tiny_bert, "head")
    assert resolve(plain, n_train=500, schema=CHEXPERT14).train.public_warm_start is False
    with pytest.raises(DpradError, match="applies to head modes and LP-FT probes"):
        resolve(
            cfg(corpus, tiny_bert, "dp-lora").with_(
                train=TrainConfig(mode="dp-lora", public_warm_start=True, probe=False)
            ),
            n_train=500,
            schema=CHEXPERT14,
        )
    # LP-FT (the default for lora and full): the warm start is the probe's, resolved as for a head
    lpft = resolve(cfg(corpus, tiny_bert, "dp-lora"), n_train=500, schema=CHEXPERT14).train
    assert lpft.probe is True and lpft.public_warm_start is True
    out = tmp_path / "run"
    train(at(1.0), out)
    assert json.loads((out / "config.json").read_text())["train"]["public_warm_start"] is True
    assert any("public synthetic reports" in n for n in json.loads((out / "notes.json").read_text()))
