"""A table's teacher travels from `dprad label` into the run's config and its model card."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dprad.cli import main
from dprad.data.provenance import read_record, sidecar
from dprad.report import write_model_card


def train_args(data: Path, out: Path, model: Path) -> list[str]:
    return ["train", str(data), "--out", str(out), "--model", str(model), "--mode", "head", "--epochs", "1"]


def test_label_records_its_teacher_and_the_model_card_names_it(tmp_path: Path, tiny_bert: Path) -> None:
    data, labelled = tmp_path / "s.csv", tmp_path / "rules.csv"
    main(["synth", "--out", str(data), "--patients", "60"])
    assert main(["label", str(data), "--teacher", "rules", "--out", str(labelled)]) in (0, None)
    record = read_record(labelled)
    assert record is not None and record.teacher == "rules" and record.source == "s.csv"
    assert record.reports == len(pd.read_csv(data)) and record.unlabelled == 0
    assert main(train_args(labelled, tmp_path / "run", tiny_bert)) in (0, None)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["teacher"] == record.describe()
    card = write_model_card(tmp_path / "run", tmp_path / "card.md").read_text()
    assert f"- Teacher: {record.describe()}." in card and "does not record" not in card


def test_a_stated_teacher_wins_and_no_record_says_so(tmp_path: Path, tiny_bert: Path) -> None:
    data = tmp_path / "s.csv"
    main(["synth", "--out", str(data), "--patients", "60"])
    assert not sidecar(data).exists()
    main(train_args(data, tmp_path / "plain", tiny_bert))
    card = write_model_card(tmp_path / "plain", tmp_path / "plain.md").read_text()
    assert "The run does not record which teacher" in card
    main([*train_args(data, tmp_path / "stated", tiny_bert), "--teacher", "two radiologists, consensus"])
    card = write_model_card(tmp_path / "stated", tmp_path / "stated.md").read_text()
    assert "- Teacher: two radiologists, consensus." in card


def test_a_broken_record_is_an_error_not_ignored(tmp_path: Path, tiny_bert: Path) -> None:
    data = tmp_path / "s.csv"
    main(["synth", "--out", str(data), "--patients", "60"])
    sidecar(data).write_text('{"teacher": "rules"}')
    with pytest.raises(SystemExit) as err:
        main(train_args(data, tmp_path / "r", tiny_bert))
    assert err.value.code == 2
    assert not (tmp_path / "r").exists()


def test_an_empty_stated_teacher_is_an_error(tmp_path: Path, tiny_bert: Path) -> None:
    data = tmp_path / "s.csv"
    main(["synth", "--out", str(data), "--patients", "60"])
    with pytest.raises(SystemExit) as err:
        main([*train_args(data, tmp_path / "r", tiny_bert), "--teacher", " "])
    assert err.value.code == 2 and not (tmp_path / "r").exists()
