from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dprad import CHEXPERT14
from dprad.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dprad", *args], capture_output=True, text=True, check=False)


def test_synth_inspect_label_roundtrip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.csv"
    main(["synth", "--out", str(out), "--patients", "120", "--seed", "4"])
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(df.columns[:3]) == ["id", "patient_id", "text"]
    assert list(df.columns[3:17]) == list(CHEXPERT14.labels)
    capsys.readouterr()
    main(["data", "inspect", str(out), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["reports"] == len(df) and info["patients"] == 120
    assert sum(info["split_sizes"].values()) == len(df)
    assert info["length_tokens"]["max"] > info["length_tokens"]["median"] > 10
    labelled = tmp_path / "l.parquet"
    main(["label", str(out), "--teacher", "gold", "--out", str(labelled)])
    back = pd.read_parquet(labelled)
    assert back["id"].tolist() == df["id"].tolist()
    assert back["Cardiomegaly"].tolist() == df["Cardiomegaly"].tolist()


def test_cli_error_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text,Edema\n1,x,7\n")
    out = tmp_path / "out.csv"
    proc = run_cli("label", str(bad), "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "bad.csv: row 1: column 'Edema': label value '7'" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


def test_label_iu_reproduces_prevalences(iu_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "iu.csv"
    main(["label", str(iu_csv), "--format", "iu-xray", "--teacher", "gold", "--out", str(out)])
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(df) == 3826
    # the 25 skipped empty-text rows were all indexed 'normal': the other 13 labels are exact
    assert (df["No Finding"] == "1").sum() == 1379 - 25
    assert (df["Lung Opacity"] == "1").sum() == 762
    assert (df["Pneumothorax"] == "1").sum() == 26
