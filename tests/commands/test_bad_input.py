"""Bad input that once got through: each now stops before any work with one line naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.cli import main
from dprad.config import LoraConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.read import read_reports
from dprad.data.schemas import load_schema
from dprad.data.table import reports_frame, write_table
from dprad.errors import DpradError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "c.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=60, seed=2)), CHEXPERT14), path)
    return path


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
    ],
)
def test_train_refuses_bad_numbers_before_any_work(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    out = tmp_path / "run"
    err = one_line_error(capsys, ["train", str(corpus), *flags, "--out", str(out)])
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
