"""Bad input that once got through: each now stops before any work with one line naming what is wrong."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pandas as pd
import pytest

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.cli import main
from dprad.config import DataConfig, LoraConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.read import read_reports
from dprad.data.schemas import load_schema
from dprad.data.table import reports_frame, write_table
from dprad.errors import DpradError
from dprad.stages.train import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "c.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=60, seed=2)), CHEXPERT14), path)
    return path


@pytest.fixture(scope="module")
def trainable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus every label of which has positives in a training split: planning gets past its data checks."""
    path = tmp_path_factory.mktemp("bad") / "trainable.csv"
    rare = {"Pneumothorax": 0.1, "Pleural Other": 0.1}
    write_table(
        reports_frame(generate_reports(SynthConfig(n_patients=150, seed=3, prevalence=rare)), CHEXPERT14),
        path,
    )
    return path


@pytest.fixture(scope="module")
def run(trainable: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (non-private head) for the commands that read one."""
    cfg = RunConfig(
        data=DataConfig(path=str(trainable)),
        model=ModelConfig(name=str(tiny_bert), max_length=64),
        train=TrainConfig(mode="head", epochs=1.0, batch_size=32, lr=0.1),
    )
    return train(cfg, tmp_path_factory.mktemp("bad-run") / "run").run_dir


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the real entry point; it must exit 2 with exactly one line on stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dprad: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--epsilon", "1", "--max-grad-norm", "nan"], "--max-grad-norm nan must be a positive number"),
        (["--epsilon", "1", "--lr", "nan"], "--lr nan must be a positive number"),
        (["--epsilon", "1", "--epochs", "inf"], "--epochs inf must be a positive number"),
        (["--epsilon", "inf"], "--epsilon inf must be a positive number"),
        (["--max-length", "0"], "--max-length 0 must be a finite number >= 2"),
        (["--epsilon", "1", "--delta", "nan"], "--delta nan must be in (0, 1)"),
        (["--epsilon", "1", "--threshold-share", "1.5"], "--threshold-share 1.5 must be in (0, 1)"),
        (["--batch-size", "0"], "--batch-size 0 must be a finite number >= 1"),
        (["--lora-r", "0", "--mode", "lora"], "--lora-r 0 must be a finite number >= 1"),
        # the noise calibration's bounds (privacy/accounting.py): refused while planning, before the run
        # directory, instead of a 149 GiB MemoryError or minutes of searching
        (["--epsilon", "1e9"], "--epsilon 1e+09 is above 100, the largest target dprad calibrates"),
        (["--epsilon", "10000"], "--epsilon 10000 is above 100"),
        (
            ["--noise-multiplier", "0.01"],
            "--noise-multiplier 0.01 is below 0.1, the least noise dprad accounts",
        ),
        # an unknown accountant is refused in a non-private run too (a private one always refused it)
        (["--accountant", "foo"], "--accountant 'foo' is not one of pld, rdp, prv"),
    ],
)
def test_train_refuses_bad_numbers_before_any_work(
    trainable: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    out = tmp_path / "run"
    err = one_line_error(capsys, ["train", str(trainable), *flags, "--out", str(out)])
    assert named in err
    assert not out.exists()


def test_config_files_are_checked_like_flags(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("privacy:\n  epsilon: 1\n  max_grad_norm: .nan\ntrain:\n  lr: 0.1\n")
    err = one_line_error(capsys, ["train", str(corpus), "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert "--max-grad-norm nan must be a positive number (config privacy.max_grad_norm)" in err
    cfg.write_text("train:\n  lr: fast\n")
    err = one_line_error(capsys, ["train", str(corpus), "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert "--lr must be a number, not str 'fast'" in err
    assert not (tmp_path / "r").exists()


def test_every_numeric_config_field_has_a_range() -> None:
    """A new numeric field must say its range, or a NaN in it would slip through again."""
    from dataclasses import fields

    for section in (RunConfig().data, ModelConfig(), LoraConfig(), PrivacyConfig(), TrainConfig()):
        numeric = {
            f.name
            for f in fields(section)
            if any(t in str(f.type) for t in ("int", "float")) and "bool" not in str(f.type)
        }
        assert numeric <= set(type(section).RANGES), (
            type(section).__name__,
            numeric - set(type(section).RANGES),
        )
    with pytest.raises(DpradError, match="whole number"):
        TrainConfig(batch_size=2.5)  # type: ignore[arg-type]
    with pytest.raises(DpradError, match="must be a number"):
        TrainConfig(epochs=True)  # type: ignore[arg-type]
    # valid values still construct and round-trip
    cfg = RunConfig(privacy=PrivacyConfig(epsilon=1.0, delta=1e-5), train=TrainConfig(epochs=0.5, lr=1e-3))
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        (
            "labels: [Edema]\nterms:\n  Edema: pulmonary edema\n",
            "terms 'Edema' must be a list of non-empty phrases",
        ),
        ("labels: [Edema]\nterms:\n  Edema: [pulmonary edema, 3]\n", "terms 'Edema' must be a list"),
        ("labels: [Edema]\nterms:\n  Edema: ['']\n", "terms 'Edema' must be a list of non-empty phrases"),
        ("labels: [Edema]\ncritical: Edema\n", "'critical' must be a list of label names"),
        ("labels: [Edema]\nno_finding: [Edema]\n", "'no_finding' must be a label name"),
    ],
)
def test_schema_with_wrong_types_is_refused(tmp_path: Path, yaml_text: str, named: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml_text)
    with pytest.raises(DpradError, match=named) as err:
        load_schema(str(path))
    assert str(path) in str(err.value)


def test_schema_string_terms_no_longer_label_every_report(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = tmp_path / "s.yaml"
    schema.write_text("labels: [Edema]\nterms:\n  Edema: pulmonary edema\n")
    out = tmp_path / "l.csv"
    err = one_line_error(capsys, ["label", str(corpus), "--schema", str(schema), "--out", str(out)])
    assert "terms 'Edema'" in err and not out.exists()
    # the same vocabulary as a list labels only the reports that mention it
    schema.write_text("labels: [Edema]\nterms:\n  Edema: [pulmonary edema, edema]\n")
    main(["label", str(corpus), "--schema", str(schema), "--out", str(out)])
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    texts = pd.read_csv(corpus, dtype=str, keep_default_na=False).set_index("id")["text"]
    flagged = df[df["Edema"].isin({"1", "-1", "0"})]["id"]
    assert 0 < len(flagged) < len(df)
    assert all("edema" in texts[i].lower() for i in flagged)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_typed_text_column_that_is_not_text_is_refused(tmp_path: Path, fmt: str) -> None:
    df = pd.DataFrame({"id": ["a", "b", "c"], "text": ["Cardiomegaly.", None, 7], "Edema": [1, 0, 0]})
    path = tmp_path / f"r.{fmt}"
    if fmt == "parquet":
        df["text"] = [0, 1, 2]  # a whole integer column, as a wrong --text-col would give
        df.to_parquet(path)
        where = "row 1: column 'text': expected report text, found int 0"
    else:
        df.to_json(path, orient="records", lines=True)
        where = "row 3: column 'text': expected report text, found int 7"
    with pytest.raises(DpradError, match=where) as err:
        read_reports(path, schema=CHEXPERT14)
    assert str(path) in str(err.value)


Q_STEPS = ["-q", "0.01", "--steps", "1000"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ([*Q_STEPS, "-s", "inf"], "--noise-multiplier inf must be a finite number"),
        ([*Q_STEPS, "-s", "1e-9"], "--noise-multiplier 1e-09 is below 0.1, the least noise dprad accounts"),
        ([*Q_STEPS, "-s", "0"], "--noise-multiplier 0 is below 0.1"),  # was: epsilon=inf, exit 0
        (
            ["-q", "0.01", "--steps", "100000000000", "-s", "1"],
            "--steps 100000000000 is more than the 10,000,000",
        ),
        (["-q", "0.01", "--steps", "200000", "-s", "1", "--accountant", "prv"], "the 100,000 DP-SGD steps"),
        (["-q", "1", "--steps", "1000000", "-s", "1"], "epsilon would be above 1000"),
        ([*Q_STEPS, "--epsilon", "1e9"], "--epsilon 1e+09 is above 100"),
        ([*Q_STEPS, "--epsilon", "10000"], "--epsilon 10000 is above 100"),
        # within the targets' bound, but more than the least noise spends: the reachable epsilon is named
        (["-q", "0.0001", "--steps", "1", "--epsilon", "60"], "spends only epsilon 52.67"),
    ],
)
def test_epsilon_refuses_what_the_accountants_cannot_account(
    capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    assert named in one_line_error(capsys, ["epsilon", *flags])
    main(["epsilon", *Q_STEPS, "-s", "1"])  # inside the bounds: still a number
    assert "epsilon=1.82" in capsys.readouterr().out


def test_a_text_column_of_numbers_is_refused_by_every_reader(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "numbers.csv"
    data.write_text("id,text,Edema\na,5,1\nb,6,0\n")
    named = f"{data}: row 1: column 'text': expected report text, found the number '5'"
    for argv in (
        ["data", "inspect", str(data)],
        ["label", str(data), "--teacher", "rules", "--out", str(tmp_path / "labels.csv")],
        ["predict", str(run), str(data), "--out", str(tmp_path / "scores.csv")],
    ):
        assert named in one_line_error(capsys, argv)
    assert not (tmp_path / "labels.csv").exists() and not (tmp_path / "scores.csv").exists()
    # a report that mentions numbers is still a report
    data.write_text("id,text,Edema\na,5 mm nodule.,1\nb,Heart size 6 cm.,0\n")
    main(["data", "inspect", str(data), "--json"])
    assert json.loads(capsys.readouterr().out)


def test_a_literal_nan_label_is_refused_not_read_as_blank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "labels.csv"
    data.write_text("id,text,Edema\na,Edema is present.,\nb,No edema.,0\nc,Edema.,nan\n")
    err = one_line_error(capsys, ["data", "inspect", str(data)])
    assert f"{data}: row 3: column 'Edema': label value 'nan' is not one of 1, 0, -1 or blank" in err
    data.write_text("id,text,Edema\na,Edema is present.,\nb,No edema.,0\nc,Edema.,\n")  # empty: blank
    result, _, _ = read_reports(data, schema=CHEXPERT14)
    assert [r.labels for r in result.reports] == [{}, {"Edema": 0}, {}]


def test_predict_refuses_an_unwritable_out_before_scoring(
    run: Path, trainable: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    outs = [a_file / "scores.csv"]  # its folder is a file
    if Path("/proc/self").is_dir():
        outs.append(Path("/proc/scores.csv"))  # Linux: a folder no one can create files in, root included
    for out in outs:
        err = one_line_error(capsys, ["predict", str(run), str(trainable), "--out", str(out)])
        assert f"--out {out}: " in err
        assert not out.exists()
    err = one_line_error(capsys, ["predict", str(run), str(trainable), "--out", str(tmp_path)])
    assert f"--out {tmp_path}: is a folder" in err


def test_serve_refuses_a_port_in_use_or_a_host_that_does_not_resolve_before_serving(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - {id: a, key: client-key-0123456789, role: client}\n")
    state = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", str(run), "--keys", str(keys), "--state-dir", str(state), "--port", str(port)]
        err = one_line_error(capsys, argv)
    assert f"--port {port}: 127.0.0.1 port {port} is already in use" in err
    argv = [
        "serve",
        str(run),
        "--keys",
        str(keys),
        "--state-dir",
        str(state),
        "--host",
        "no-such-host.invalid",
    ]
    err = one_line_error(capsys, argv)
    assert "--host 'no-such-host.invalid' does not resolve" in err
    assert "serving" not in capsys.readouterr().out and not state.exists()


def test_evaluate_refuses_an_unknown_group(
    run: Path, trainable: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    argv = [
        "evaluate",
        str(run),
        str(trainable),
        "--groups",
        "sex,nosuchcol",
        "--bootstrap",
        "5",
        "--out",
        str(out),
    ]
    err = one_line_error(capsys, argv)
    assert (
        f"--groups 'nosuchcol': no report in {trainable} has that attribute; it has: age, age_band, sex, site"
        in err
    )
    assert not out.exists()
