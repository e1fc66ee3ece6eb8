"""The MIMIC-CXR-layout corpus (``dprad synth --layout mimic-cxr``) and the reader / ``data inspect`` on it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dprad import CHEXPERT14, DpradError
from dprad.cli import main
from dprad.data.inspect import token_lengths
from dprad.data.mimic_cxr import CHEXPERT_CSV, read_mimic_cxr, report_text, split_sections
from dprad.data.synth import CXR_TERMS
from dprad.data.synth_mimic import CSV_LABELS, MimicSynthConfig, generate_studies, write_mimic_cxr
from dprad.local_models import load_tokenizer

LAYOUT = re.compile(r"^files/p(1\d)/p(\1\d{6})/s(5\d{7})\.txt$")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mimic") / "corpus"
    main(
        [
            "synth",
            "--layout",
            "mimic-cxr",
            "--patients",
            "600",
            "--studies",
            "2100",
            "--seed",
            "3",
            "--out",
            str(out),
        ]
    )
    return out


def test_tree_and_labels_csv_have_mimic_cxr_shape(tree: Path) -> None:
    paths = sorted(p.relative_to(tree).as_posix() for p in (tree / "files").rglob("*.txt"))
    assert len(paths) == 2100 and all(LAYOUT.match(p) for p in paths)
    assert sorted(os.listdir(tree)) == ["files", CHEXPERT_CSV]  # nothing half-written beside them
    assert not [p for p in tree.parent.iterdir() if p.name.startswith(".")]
    df = pd.read_csv(tree / CHEXPERT_CSV, dtype=str, keep_default_na=False)
    assert list(df.columns) == ["subject_id", "study_id", *sorted(CHEXPERT14.labels)]  # the real file's order
    assert len(df) == 2100 and df["study_id"].is_unique and df["subject_id"].nunique() == 600
    assert set(df[list(CSV_LABELS)].to_numpy().ravel()) == {"1.0", "0.0", "-1.0", ""}
    assert set(df["No Finding"]) == {"1.0", ""}
    on_disk = {(m.group(2), m.group(3)) for p in paths if (m := LAYOUT.match(p))}
    assert on_disk == set(zip(df["subject_id"], df["study_id"], strict=True))
    texts = [(tree / p).read_text() for p in paths]
    assert all(t.lstrip().startswith("FINAL REPORT") and "EXAMINATION:" in t for t in texts)
    for header in ("INDICATION:", "TECHNIQUE:", "COMPARISON:", "FINDINGS:", "IMPRESSION:"):
        assert 0.1 < np.mean([header in t for t in texts]) < 1.0, header


def test_deterministic_skewed_and_labels_match_the_text() -> None:
    cfg = MimicSynthConfig(n_patients=2000, seed=1)
    studies = list(generate_studies(cfg))
    assert studies == list(generate_studies(cfg))
    assert [s.text for s in studies[:50]] != [
        s.text for s in generate_studies(MimicSynthConfig(200, seed=2))
    ][:50]
    assert len(studies) == round(2000 * 227_835 / 65_379)  # MIMIC-CXR's studies per patient by default
    per_patient = np.unique([s.subject_id for s in studies], return_counts=True)[1]
    assert 0.4 < np.mean(per_patient == 1) < 0.6 and np.mean(per_patient <= 2) > 0.55  # most have 1-2
    assert per_patient.max() >= 20  # and a long tail
    words = []
    for s in studies:
        text = report_text(split_sections(s.text), s.text)
        words.append(len(text.split()))
        low = text.lower()
        for lab in s.labels:
            if lab != "No Finding":
                assert any(t.lower() in low for t in CXR_TERMS[lab]), (lab, text)
        blocking = [k for k, v in s.labels.items() if v != 0 and k not in ("No Finding", "Support Devices")]
        assert (s.labels.get("No Finding") == 1) == (not blocking)
    # findings + impression: median 55 words (MIMIC-CXR), right-skewed with IU X-ray's spread
    assert 50 <= np.median(words) <= 60
    assert 1.5 < np.percentile(words, 90) / np.median(words) < 2.2
    assert {v for s in studies for v in s.labels.values()} == {1, 0, -1}


def test_refuses_a_used_out_folder_and_a_killed_run_leaves_no_tree(tmp_path: Path) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("x")
    with pytest.raises(DpradError, match=r"--out .*used: already exists and is not an empty folder"):
        write_mimic_cxr(MimicSynthConfig(n_patients=5), used)
    assert os.listdir(used) == ["keep.txt"]
    out = tmp_path / "big"
    cmd = [sys.executable, "-m", "dprad", "synth", "--layout", "mimic-cxr", "--patients", "60000"]
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not [p for p in tmp_path.iterdir() if p.name.startswith(".big.")]:
            assert proc.poll() is None and time.monotonic() < deadline, "no temporary tree appeared"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()  # the half tree is only under the hidden temporary name


def test_reader_and_inspect_count_every_mismatch(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "files").symlink_to(tree / "files")
    df = pd.read_csv(tree / CHEXPERT_CSV, dtype=str, keep_default_na=False)
    dropped = df.iloc[[5, 500, 1500]]
    ghost = df.iloc[:2].assign(study_id=["50000000", "50000001"])  # rows naming studies not in the tree
    pd.concat([df.drop(dropped.index), ghost]).to_csv(root / CHEXPERT_CSV, index=False)
    no_heading = [
        p
        for p in sorted((tree / "files").rglob("*.txt"))
        if not re.search(r"FINDINGS:|IMPRESSION:", p.read_text())
    ]
    assert no_heading  # the generator writes some, as MIMIC-CXR has
    result = read_mimic_cxr(root)
    assert len(result.reports) == 2100 and not result.skipped
    assert sum(r.labels is None for r in result.reports) == 3
    notes = " | ".join(result.notes)
    assert f"3 studies have no row in {CHEXPERT_CSV}" in notes
    assert f"2 rows of {CHEXPERT_CSV} name a study with no report file under files/ " in notes
    assert "(first: subject_id" in notes and "study_id 50000000" in notes
    first = no_heading[0].relative_to(tree / "files").as_posix()
    assert f"{len(no_heading)} reports have neither a FINDINGS nor an IMPRESSION heading" in notes
    assert f"(first: {first})" in notes
    kept = next(r for r in result.reports if r.id == no_heading[0].stem)
    assert kept.text == " ".join(no_heading[0].read_text().split())  # kept with its whole text
    capsys.readouterr()
    main(["data", "inspect", str(root), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["reports"], info["patients"], info["labelled"]) == (
        "mimic-cxr",
        2100,
        600,
        2097,
    )
    assert set(result.notes) <= set(info["problems"])


def test_non_utf8_report_is_refused_naming_the_file(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "latin1"
    d = root / "files" / "p10" / "p10000001"
    d.mkdir(parents=True)
    (d / "s50000001.txt").write_bytes(b" FINDINGS: Heart size is normal.\n IMPRESSION: Caf\xe9 negative.\n")
    with pytest.raises(
        DpradError, match=r"p10000001/s50000001\.txt: line 2: byte \d+ \(0xe9\) is not valid UTF-8"
    ):
        read_mimic_cxr(root)
    proc = subprocess.run(
        [sys.executable, "-m", "dprad", "data", "inspect", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "s50000001.txt: line 2" in proc.stderr and "not valid UTF-8" in proc.stderr


def test_token_lengths_equal_the_tokenizer_call(tree: Path) -> None:
    texts = [r.text for r in read_mimic_cxr(tree).reports[:300]]
    texts += [
        "",
        " ",
        "Café\u0301 e\u0301t\u00e9 中文🙂x",
        "x " * 700,
        "a\x1cb c\u2028d \x85e\u00a0f",
        "[CLS] [MASK]x",
        "w" * 150,
    ]
    tok = load_tokenizer()
    expected = [
        len(x) for x in tok(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    ]
    assert token_lengths(texts, batch=64).tolist() == expected


def test_synth_layout_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, match in [
        (["--layout", "mimic"], "--layout 'mimic' must be one of: table, mimic-cxr"),
        (["--layout", "mimic-cxr", "--modality", "ct"], "--layout mimic-cxr is chest X-ray only"),
        (
            ["--layout", "mimic-cxr", "--patients", "10", "--studies", "9"],
            "--studies 9 must be at least --patients",
        ),
        (["--studies", "9"], "--studies applies to --layout mimic-cxr only"),
        (
            ["--layout", "mimic-cxr", "--prevalence", "Nope=0.1"],
            "--prevalence given for labels not in chexpert14",
        ),
    ]:
        with pytest.raises(SystemExit) as ex:
            main(["synth", *args, "--out", str(tmp_path / "x")])
        assert ex.value.code == 2
        assert match in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
