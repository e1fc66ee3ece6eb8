"""The HTML report's "label noise x DP" section (``dprad report ... --label-noise study.json``): a study
as bench/label_noise.py writes it, read strictly and rendered beside a tiny real run."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.cli import main
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.report import write_report
from dprad.report.label_noise import load_study
from dprad.stages.train import train

SECTION = "Teacher label noise under differential privacy"


def _cell(f1: tuple[float, float, float], rates: tuple[float, float], sens: list[Any]) -> dict[str, Any]:
    """One teacher at one eps, shaped as bench/label_noise.py writes it."""
    return {
        "weighted_f1": dict(zip(("mean", "min", "max"), f1, strict=True)),
        "training_label_noise": {"false_negative_rate": rates[0], "false_positive_rate": rates[1]},
        "per_label": [
            {
                "label": "Cardiomegaly",
                "test_positives": 73.0,
                "rare": False,
                "critical": False,
                "sensitivity": dict(zip(("estimate", "ci_low", "ci_high"), sens[0], strict=True)),
            },
            {
                # rare and critical; the name checks escaping
                "label": "Pneumo <thorax> & co",
                "test_positives": 5.0,
                "rare": True,
                "critical": True,
                "sensitivity": dict(zip(("estimate", "ci_low", "ci_high"), sens[1], strict=True)),
            },
        ],
    }


STUDY: dict[str, Any] = {
    "corpora": {
        "iu": {
            "teachers": {
                "gold": {
                    "1.0": _cell(
                        (0.8710402250289917, 0.8633020520210266, 0.8804376125335693),
                        (0.0, 0.0),
                        [(0.8538812796274821, 0.8036530017852783, 0.8949771523475647), (0.6, 0.2, 1.0)],
                    ),
                    "inf": _cell(
                        (0.9021, 0.8971, 0.9083),
                        (0.0, 0.0),
                        [(0.9123, 0.8711, 0.9488), (1.0, 1.0, 1.0)],
                    ),
                },
                "missed30": {
                    "1.0": _cell(
                        (0.7961, 0.7792, 0.8134),
                        (0.2963087624817682, 0.0),
                        [(0.7012, 0.6433, 0.7577), (0.2, 0.0, 0.5333)],
                    ),
                    "inf": _cell(
                        (0.8852, 0.8641, 0.9104),
                        (0.2963087624817682, 0.0),
                        [(0.8889, 0.8417, 0.9301), (0.7333, 0.4667, 1.0)],
                    ),
                },
            }
        }
    },
    "rare_below": 20,
    "resamples": 1000,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """One tiny real run (non-private linear head on the tiny encoder), as tests/report/test_report.py builds
    its runs, without evaluation.json (the report then shows point estimates)."""
    base = tmp_path_factory.mktemp("label-noise")
    data = base / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=120, seed=5)), CHEXPERT14), data)
    cfg = RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(tiny_bert), max_length=48),
        privacy=PrivacyConfig(),
        train=TrainConfig(mode="head", epochs=2.0, batch_size=64, lr=5e-2),
    )
    train(cfg, base / "runs" / "head")
    return base / "runs" / "head"


def _write(path: Path, study: dict[str, Any]) -> Path:
    path.write_text(json.dumps(study, indent=1))
    return path


class _Tables(HTMLParser):
    """Each table's rows, as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or "?"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_section_shows_the_study_numbers(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _write(tmp_path / "study.json", STUDY)
    out = tmp_path / "report.html"
    main(["report", str(run_dir), "--out", str(out), "--label-noise", str(study)])
    assert f"report: {out.resolve()}" in capsys.readouterr().out
    html = out.read_text()
    assert f"<h2>{SECTION}</h2>" in html and 'href="#label-noise"' in html
    assert "<script" not in html.split('id="label-noise"')[1]  # the section adds no script

    parsed = _Tables()
    parsed.feed(html)
    f1 = parsed.tables["table-label-noise-f1-0"]
    assert f1 == [
        ["teacher", "training labels FNR", "training labels FPR", "ε = 1", "ε = ∞ (non-private)"],
        ["gold", "0.000", "0.000", "0.871 (0.863..0.880)", "0.902 (0.897..0.908)"],
        ["missed30", "0.296", "0.000", "0.796 (0.779..0.813)", "0.885 (0.864..0.910)"],
    ]
    sens = parsed.tables["table-label-noise-sens-0"]
    # only the rare / critical label; teachers as rows, eps as columns; the label is marked both ways
    assert sens == [
        ["label", "test positives", "teacher", "ε = 1", "ε = ∞ (non-private)"],
        ["Pneumo <thorax> & corarecritical", "5", "gold", "0.600 [0.200, 1.000]", "1.000 [1.000, 1.000]"],
        ["missed30", "0.200 [0.000, 0.533]", "0.733 [0.467, 1.000]"],
    ]
    assert "Cardiomegaly" not in html.split('id="label-noise"')[1]  # neither rare nor critical
    # escaped as text, marked as rare and critical
    assert "<b>Pneumo &lt;thorax&gt; &amp; co</b>" in html and "<thorax>" not in html
    assert '<span class="mark mark-rare">rare</span><span class="mark mark-critical">critical</span>' in html
    # the one sentence on how to read it
    reading = re.search(r"<b>How to read this\.</b>(.*?)</p>", html, re.S)
    assert reading is not None
    text = " ".join(reading.group(1).split())
    for phrase in ("trained on its teacher's labels", "gold labels of the test split", "patient-bootstrap"):
        assert phrase in text, phrase
    assert "1,000 resamples" in text and "averaged over split seeds" in text
    assert "[1.000, 1.000] is weak evidence" in text
    assert "fewer than 20 test positives" in html


def test_without_the_flag_the_report_has_no_such_section(run_dir: Path, tmp_path: Path) -> None:
    html = write_report([run_dir], tmp_path / "plain.html").read_text()
    assert SECTION not in html and 'id="label-noise"' not in html and "label-noise" not in html


def _missing_ci_low(s: dict[str, Any]) -> None:
    del s["corpora"]["iu"]["teachers"]["gold"]["1.0"]["per_label"][1]["sensitivity"]["ci_low"]


def _text_estimate(s: dict[str, Any]) -> None:
    s["corpora"]["iu"]["teachers"]["missed30"]["inf"]["per_label"][0]["sensitivity"]["estimate"] = "high"


@pytest.mark.parametrize(
    ("spoil", "where"),
    [
        (_missing_ci_low, "corpora.iu.teachers.gold.1.0.per_label[1].sensitivity: missing ci_low"),
        (
            _text_estimate,
            "corpora.iu.teachers.missed30.inf.per_label[0].sensitivity.estimate: "
            "expected a number, got a string ('high')",
        ),
    ],
)
def test_a_malformed_study_is_one_line_exit_2_and_no_report(
    spoil: Any, where: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = copy.deepcopy(STUDY)
    spoil(bad)
    study = _write(tmp_path / "study.json", bad)
    out = tmp_path / "report.html"
    with pytest.raises(SystemExit) as exc:
        main(["report", str(run_dir), "--out", str(out), "--label-noise", str(study)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == f"dprad: error: {study}: {where}"
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda s: s.pop("resamples"), "study.json: missing resamples"),
        (lambda s: s.update(corpora={}), "study.json: corpora: no corpus in the study"),
        (
            lambda s: s["corpora"]["iu"]["teachers"]["gold"].update({"1": {}}),
            "study.json: corpora.iu.teachers.gold.1: the same eps as 1.0",
        ),
        (
            lambda s: s["corpora"]["iu"]["teachers"]["gold"].update({"-inf": {}}),
            "corpora.iu.teachers.gold.-inf: the eps key '-inf' is not a positive number or 'inf'",
        ),
        (
            lambda s: s["corpora"]["iu"]["teachers"]["missed30"]["1.0"]["per_label"][1].update(rare=False),
            "corpora.iu.teachers.missed30.1.0.per_label[1].rare: False where "
            "corpora.iu.teachers.gold.1.0.per_label[1] has True",
        ),
        (
            lambda s: s["corpora"]["iu"]["teachers"]["gold"]["inf"]["weighted_f1"].update(max=1.2),
            "corpora.iu.teachers.gold.inf.weighted_f1.max: 1.2 is outside [0, 1]",
        ),
        (
            lambda s: s["corpora"]["iu"]["teachers"]["gold"]["inf"]["per_label"][0].update(critical="yes"),
            "corpora.iu.teachers.gold.inf.per_label[0].critical: expected true or false",
        ),
    ],
)
def test_the_reader_is_strict(spoil: Any, message: str, tmp_path: Path) -> None:
    bad = copy.deepcopy(STUDY)
    spoil(bad)
    with pytest.raises(DpradError, match=re.escape(message)):
        load_study(_write(tmp_path / "study.json", bad))


def test_the_reader_carries_the_numbers_frozen(tmp_path: Path) -> None:
    study = load_study(_write(tmp_path / "study.json", STUDY))
    (iu,) = study.corpora
    assert iu.name == "iu" and [t.name for t in iu.teachers] == ["gold", "missed30"]
    assert iu.epsilons == (1.0, float("inf")) and study.rare_below == 20 and study.resamples == 1000
    gold1 = iu.teachers[0].cell(1.0)
    assert gold1 is not None and gold1.weighted_f1.mean == 0.8710402250289917
    assert gold1.per_label[1].sensitivity.ci_high == 1.0 and gold1.per_label[1].rare
    with pytest.raises(dataclasses.FrozenInstanceError):
        gold1.epsilon = 2.0  # type: ignore[misc]
    with pytest.raises(DpradError, match=r"nope\.json: no such file"):
        load_study(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text('{"corpora": ')
    with pytest.raises(DpradError, match=r"broken\.json: not valid JSON"):
        load_study(tmp_path / "broken.json")
