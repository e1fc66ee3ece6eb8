"""The HTML report and the model card, on real tiny runs, checked the way a person sees them: the page is
rendered by headless Chromium, and the rendered DOM must hold every plot and table, with no script error
and no broken image."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import typer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from typer.testing import CliRunner

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.commands.report import register
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.io import write_json
from dprad.report import plots, write_model_card, write_report
from dprad.report.collect import read_run
from dprad.stages.evaluate import EvalOptions, evaluate_run
from dprad.stages.train import train
from report_agreement import check_agreement, expected

EXPECTED_PLOTS = ("plot-privacy-utility", "plot-labels-0", "plot-reliability", "plot-subgroups", "plot-audit")
EXPECTED_TABLES = (
    "table-headline",
    "table-rare",
    "table-calibration",
    "table-subgroups",
    "table-transfer",
    "table-audit",
    "table-dp",
    "table-dp-mechanism",
    "table-selection",
    "table-sweep",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> dict[str, Path]:
    """Four tiny runs on one synthetic corpus: non-private head, dp-head at eps 1 and 10 (evaluated with
    CIs and subgroups), and dp-head at noise multiplier 2 left without evaluation.json; plus an evaluation of the eps-10
    run on a second corpus, an audit.json and a sweep table with one failed cell."""
    base = tmp_path_factory.mktemp("study")
    data = base / "synth.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=220, seed=5)), CHEXPERT14), data)
    other = base / "other_site.csv"
    write_table(reports_frame(generate_reports(SynthConfig(n_patients=60, seed=77)), CHEXPERT14), other)
    runs = base / "runs"
    # the fourth run fixes sigma instead of a target eps (eps is then the ledger's output): it skips the
    # noise calibration, the slowest part of a tiny run
    cells = {
        "head": ("head", PrivacyConfig()),
        "dp-eps1": ("dp-head", PrivacyConfig(epsilon=1.0)),
        "dp-eps10": (
            "dp-head",
            PrivacyConfig(epsilon=10.0, accountant="rdp"),
        ),  # PLD calibrates slowly at eps 10
        "dp-sigma2-noeval": ("dp-head", PrivacyConfig(noise_multiplier=2.0)),
    }
    for name, (mode, privacy) in cells.items():
        cfg = RunConfig(
            data=DataConfig(path=str(data)),
            model=ModelConfig(name=str(tiny_bert), max_length=48),
            privacy=privacy,
            train=TrainConfig(mode=mode, epochs=3.0, batch_size=64, lr=5e-2),
        )
        train(cfg, runs / name)
        if name != "dp-sigma2-noeval":
            opts = EvalOptions(n_boot=40, groups=("sex", "site"))
            write_json(runs / name / "evaluation.json", evaluate_run(runs / name, data, options=opts))
    write_json(
        runs / "dp-eps10" / "evaluation-other_site.json",
        evaluate_run(runs / "dp-eps10", other, options=EvalOptions(n_boot=40)),
    )
    # an audit.json and a selection.json shaped as dprad.audit and dprad.sweep write them (fixed inputs
    # here, so that this test checks the rendering, not those modules)
    ci = lambda e, lo, hi: {"estimate": e, "ci_low": lo, "ci_high": hi}  # noqa: E731
    write_json(
        runs / "dp-eps1" / "audit.json",
        {
            "run": str(runs / "dp-eps1"),
            "canary": {"guesses": 100, "correct": 57, "epsilon_lower_bound": 0.12, "ceiling": 3.2}
            | {"exceeds_ledger": False, "delta": 1e-4, "confidence": 0.95},
            "theory": {"private": True, "mode": "dp-head", "epsilon": 1.0, "delta": 1e-4},
            "mia": {
                "members": 50,
                "nonmembers": 50,
                "attacks": {
                    "loss": {"auc": ci(0.512, 0.43, 0.60)},
                    "lira_online": {"auc": ci(0.55, 0.47, 0.63)},
                },
            },
        },
    )
    sweep = base / "results.csv"
    sweep.write_text(
        "cell,epsilon,status,error\nhead,inf,done,\ndp-eps1,1,done,\ndp-eps0.01,0.01,failed,RuntimeError: boom\n"
    )
    cost = {"method": "papernot-steinke", "epsilon": 3.1, "delta": 2e-4, "largest_single_epsilon": 1.0}
    write_json(
        base / "selection.json",
        {
            "what": "Choosing 'the best run' among these cells by their validation scores is a release of its own.",
            "groups": [
                {
                    "dataset": "synth",
                    "scope": "every private cell",
                    "candidates": ["dp-eps1", "dp-eps10"],
                    "compared_on": "the validation split of synth.csv, scored without DP",
                    "costs": {
                        "papernot-steinke": cost | {"assumption": "the number of candidates is random"}
                    },
                }
            ],
        },
    )
    return {"base": base, "runs": runs, "sweep": sweep, "data": data}


class _Dom(HTMLParser):
    """Element ids, tag counts, and every src/href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.attrs_by_id: dict[str, dict[str, str]] = {}
        self.urls: list[str] = []
        self.rows: dict[str, int] = {}
        self.html_attrs: dict[str, str] = {}
        self.headlines = 0
        self._table: str | None = None
        self._in_headlines = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "html":
            self.html_attrs = a
        if "id" in a:
            self.ids[a["id"]] = tag
            self.attrs_by_id[a["id"]] = a
        self.urls += [a[k] for k in ("src", "href") if k in a]
        if tag == "table":
            self._table = a.get("id")
        if tag == "tr" and self._table:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1
        if tag == "ul" and a.get("id") == "headlines":
            self._in_headlines = True
        if tag == "li" and self._in_headlines:
            self.headlines += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        if tag == "ul":
            self._in_headlines = False


def _chromium(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not on PATH (Debian package 'chromium'; .ci/run installs it)")
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def _dump_dom(page: Path, tmp: Path) -> _Dom:
    res = _chromium(page.as_uri(), tmp, "--dump-dom")
    assert res.returncode == 0 and "<html" in res.stdout, res.stderr[-2000:]
    dom = _Dom()
    dom.feed(res.stdout)
    return dom


def test_report_renders_in_chromium_with_every_plot_and_table(
    study: dict[str, Path],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = study["base"] / "report.html"
    write_report(sorted(study["runs"].iterdir()), out, sweep_table=study["sweep"], title="tiny study")
    html = out.read_text()

    # self-contained: no resource outside the file; every figure is an embedded PNG
    static = _Dom()
    static.feed(html)
    assert all(u.startswith(("data:image/png;base64,", "#")) for u in static.urls), static.urls
    assert "<link" not in html and not re.search(r"<script[^>]+src=", html)

    dom = _dump_dom(out, tmp_path)
    # the page's own script ran to the load event, saw no error, and every image decoded
    assert dom.html_attrs.get("data-rendered") == "ok", dom.html_attrs
    assert "data-js-errors" not in dom.html_attrs, dom.html_attrs["data-js-errors"]
    assert dom.html_attrs.get("data-images-broken") == ""
    assert dom.html_attrs.get("data-images") == str(len(EXPECTED_PLOTS))
    for pid in EXPECTED_PLOTS:
        assert dom.ids.get(pid) == "img", f"plot {pid} missing from the rendered page"
        assert dom.attrs_by_id[pid]["src"].startswith("data:image/png;base64,")
    for tid in EXPECTED_TABLES:
        assert dom.ids.get(tid) == "table", f"table {tid} missing from the rendered page"
    # one headline sentence per run; one DP-parameter row per run (plus the header row)
    assert dom.headlines == 4 and dom.rows["table-dp"] == 5 and dom.rows["table-headline"] == 5
    assert dom.rows["table-dp-mechanism"] == 5
    assert dom.rows["table-transfer"] == 2 and dom.rows["table-audit"] == 2 and dom.rows["table-sweep"] == 4
    assert dom.rows["table-selection"] == 2

    # the first screen: one plain sentence per run (eps, weighted F1 with its CI, the thresholds it is at),
    # the non-private reference in its own sentence and named once in the legend, never in every sentence
    ledger = json.loads((study["runs"] / "dp-eps1" / "privacy.json").read_text())
    ev = json.loads((study["runs"] / "dp-eps1" / "evaluation.json").read_text())["headline"]["weighted_f1"]
    ref = json.loads((study["runs"] / "head" / "evaluation.json").read_text())["headline"]["weighted_f1"]
    sentence = re.search(r"<b>dp-eps1</b>.*?</li>", html, re.S)
    assert sentence is not None
    text = sentence.group(0)
    spent = f"{ledger['epsilon']:.4g}"
    assert ("ε = 1," if spent == "1" else f"ε = 1 (spent {spent}),") in text
    assert (
        f"weighted F1 {ev['estimate']:.3f} [{ev['ci_low']:.3f}, {ev['ci_high']:.3f}] at the shipped" in text
    )
    assert "non-private" not in text and f"{ref['estimate']:.3f} [" not in text
    head = re.search(r"<b>head</b>.*?</li>", html, re.S)
    assert (
        head is not None
        and f"{ref['estimate']:.3f} [{ref['ci_low']:.3f}, {ref['ci_high']:.3f}]" in head.group(0)
    )
    legend = re.search(r'<div class="legend" id="glance-legend">.*?</div>', html, re.S)
    assert legend is not None and "<b>Non-private run:</b> head." in legend.group(0)
    assert "fitted on the validation split under DP" in legend.group(0)
    for li in re.findall(r"<li class=\"(?:non)?private\">(.*?)</li>", html, re.S):
        assert _paren_depth(li) <= 1, li  # no parenthesis inside another
    noeval = re.search(r"<b>dp-sigma2-noeval</b>.*?</li>", html, re.S)
    assert noeval is not None and "(no CI)" in noeval.group(0)
    assert "RuntimeError: boom" in html  # the failed sweep cell is shown
    assert "is a release of its own" in html and "papernot-steinke" in html  # selection.json, rendered
    assert "LiRA online 0.550 [0.470, 0.630]" in html and "57 / 100" in html  # the audit, rendered

    shot = tmp_path_factory.mktemp("screenshots") / "report.png"
    res = _chromium(out.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,2400")
    assert res.returncode == 0 and shot.stat().st_size > 50_000, res.stderr[-2000:]
    with capsys.disabled():
        print(f"\nreport: {out}\nscreenshot of the first screen: {shot}")


def _paren_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        deepest = max(deepest, depth)
    return deepest


def test_the_error_probe_catches_script_errors_and_broken_images(
    study: dict[str, Path], tmp_path: Path
) -> None:
    """The checks above can fail: the same page with a throwing script and a broken image is caught."""
    out = tmp_path / "report.html"
    write_report([study["runs"] / "dp-eps1"], out)
    broken = out.read_text().replace(
        "</main>",
        '<img id="bad" src="data:image/png;base64,AAAA"><script>throw new Error("probe-boom")</script></main>',
    )
    page = tmp_path / "broken.html"
    page.write_text(broken)
    dom = _dump_dom(page, tmp_path)
    assert "probe-boom" in dom.html_attrs.get("data-js-errors", "")
    assert "bad" in dom.html_attrs.get("data-images-broken", "").split(",")


def test_model_card_states_the_ledger_and_what_is_not_protected(study: dict[str, Path]) -> None:
    run = study["runs"] / "dp-eps1"
    card = write_model_card(run).read_text()
    assert (run / "MODEL_CARD.md").exists()
    ledger = json.loads((run / "privacy.json").read_text())
    assert f"| ε (spent) | {ledger['epsilon']:.4g} |" in card
    assert f"| δ | {ledger['delta']:.1e} |" in card
    assert f"| noise multiplier σ | {ledger['noise_multiplier']:.4g} |" in card
    assert f"| clipping norm C | {ledger['max_grad_norm']:g} |" in card
    assert f"| steps | {ledger['steps']} |" in card and "| accountant | pld |" in card
    ev = json.loads((run / "evaluation.json").read_text())
    w = ev["headline"]["weighted_f1"]
    assert f"| weighted F1 | {w['estimate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] |" in card
    for phrase in (
        "## Intended use",
        "## Data, labels and teacher",
        "## Known limits",
        "## What differential privacy does not protect",
        "pre-training data",
        "The validation split",
        "Outputs under unlimited querying",
        "**Subgroups by sex**",
        "**Calibration**: pooled ECE",
    ):
        assert phrase in card, phrase
    unit = json.loads((study["runs"] / "dp-eps1" / "privacy.json").read_text())["privacy_unit"]
    # the synthetic corpus has repeat patients, so the run protects patients; a report-level run says
    # what that means for a patient with several reports
    assert ("per patient" in card) if unit == "patient" else ("Patients with several reports" in card)
    rare = [r["label"] for r in ev["per_label"] if r["support"] < 20]
    assert rare and all(f"{lab} (" in card.split("**Rare labels**")[1] for lab in rare)

    # without evaluation.json the card uses metrics.json and says there is no CI
    noeval = write_model_card(study["runs"] / "dp-sigma2-noeval", study["base"] / "card3.md").read_text()
    assert "point estimates only, no confidence interval" in noeval
    m = json.loads((study["runs"] / "dp-sigma2-noeval" / "metrics.json").read_text())
    assert f"{m['test']['threshold_val']['weighted_f1']:.3f} (no CI)" in noeval
    head = write_model_card(study["runs"] / "head", study["base"] / "card-head.md").read_text()
    assert "**None.**" in head and "| private | no |" in head


def test_table_sentences_and_model_cards_quote_the_same_numbers_at_the_shipped_thresholds(
    study: dict[str, Path], tmp_path: Path
) -> None:
    """One evaluation per run, quoted alike by the headline table, the at-a-glance sentence and the model
    card, with the same words for its thresholds. Beside the study's runs (evaluated at the shipped
    thresholds, or not evaluated with DP thresholds that stayed at 0.5): the non-private head, whose
    validation-fitted thresholds are not 0.5, once without evaluation.json (metrics.json at its shipped
    thresholds, not at 0.5) and once evaluated with --thresholds 0.5 (said plainly beside its numbers)."""
    extra = tmp_path / "runs"
    shutil.copytree(study["runs"] / "head", extra / "head-noeval")
    (extra / "head-noeval" / "evaluation.json").unlink()
    shutil.copytree(study["runs"] / "head", extra / "head-at-0.5")
    at_half = EvalOptions(thresholds="0.5", n_boot=40)
    write_json(
        extra / "head-at-0.5" / "evaluation.json",
        evaluate_run(extra / "head-at-0.5", study["data"], options=at_half),
    )
    dirs = {d.name: d for d in (*sorted(study["runs"].iterdir()), *sorted(extra.iterdir()))}
    html = write_report(list(dirs.values()), tmp_path / "report.html").read_text()
    cards = {name: write_model_card(d, tmp_path / f"card-{name}.md").read_text() for name, d in dirs.items()}
    check_agreement(html, cards, dirs)

    # the cases are the ones meant: the head's thresholds move its F1 away from its F1 at 0.5
    m = json.loads((dirs["head-noeval"] / "metrics.json").read_text())["test"]
    at_shipped, at_half_f1 = m["threshold_val"]["weighted_f1"], m["threshold_0.5"]["weighted_f1"]
    assert f"{at_shipped:.3f}" != f"{at_half_f1:.3f}"
    assert expected(dirs["head-noeval"])[1] == "val"
    assert expected(dirs["head-at-0.5"])[1] == "0.5" and 'id="not-shipped"' in html
    assert "These numbers are not what the shipped model does" in cards["head-at-0.5"]
    # and the check fails on the table as it was: metrics.json at 0.5 for a run without evaluation.json
    before = html.replace(f"<td>{at_shipped:.3f} (no CI)</td>", f"<td>{at_half_f1:.3f} (no CI)</td>")
    assert before != html
    with pytest.raises(AssertionError):
        check_agreement(before, cards, {"head-noeval": dirs["head-noeval"]})


def test_selection_epsilon_and_defensive_reading(study: dict[str, Path], tmp_path: Path) -> None:
    """A ledger that records a DP threshold selection shows its cost; odd audit keys do not break reading."""
    run = tmp_path / "selected"
    shutil.copytree(study["runs"] / "dp-eps1", run)
    ledger = json.loads((run / "privacy.json").read_text())
    parts = [p for p in ledger.get("parts", []) if "threshold" not in p["part"]]
    ledger["parts"] = [*parts, {"part": "thresholds (DP histograms)", "epsilon": 0.25}]
    write_json(run / "privacy.json", ledger)
    write_json(run / "audit.json", {"mia": {"roc_auc": 0.55}, "canary": "not run"})
    r = read_run(run)
    assert r.selection == (0.25, "thresholds (DP histograms)")  # the ledger's part, as the report quotes it
    assert (
        r.audit is not None and r.audit.canary is None and r.audit.mia is not None and r.audit.mia.auc == 0.55
    )
    assert math.isinf(read_run(study["runs"] / "head").ledger.spent_epsilon)
    html = write_report([run], tmp_path / "r.html").read_text()
    # the glance legend names what choosing the thresholds under DP cost, once; the DP table the ledger part
    assert "whose share follows its name: selected ε = 0.25." in html
    assert "0.25 (thresholds (DP histograms))" in html
    plain = write_report([study["runs"] / "dp-eps1"], tmp_path / "s.html").read_text()
    # the run as trained: its own DP thresholds, 10% of eps = 1, are shown as what they cost
    assert "whose share follows its name: dp-eps1 ε = 0.1." in plain
    card = write_model_card(run).read_text()
    assert "| threshold / model selection ε | 0.25 (thresholds (DP histograms)) |" in card


def test_cli_and_one_line_errors(study: dict[str, Path], tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    out = tmp_path / "report.html"
    # a folder of runs stands for the finished runs in it; an unfinished one is left out and said so
    (study["runs"].parent / "half").mkdir(exist_ok=True)
    shutil.copy(study["runs"] / "head" / "config.json", study["runs"].parent / "half" / "config.json")
    res = runner.invoke(
        app, ["report", str(study["runs"]), str(study["runs"].parent / "half"), "--out", str(out)]
    )
    assert res.exit_code != 0 and isinstance(res.exception, DpradError)
    res = runner.invoke(
        app, ["report", str(study["runs"]), "--out", str(out), "--sweep", str(study["sweep"])]
    )
    assert res.exit_code == 0, res.output
    assert f"report: {out.resolve()}" in res.output and out.stat().st_size > 10_000
    assert 'id="table-selection"' in out.read_text()  # selection.json beside the sweep table
    plain = write_report([study["runs"]], tmp_path / "plain.html").read_text()
    assert "Choosing among these runs is not free" in plain and 'id="table-selection"' not in plain
    res = runner.invoke(app, ["model-card", str(study["runs"] / "dp-eps10"), "--out", str(tmp_path / "c.md")])
    assert res.exit_code == 0 and (tmp_path / "c.md").read_text().startswith("# Model card: dp-eps10")

    with pytest.raises(DpradError, match=r"nope: no such run directory"):
        write_report([tmp_path / "nope"], tmp_path / "x.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DpradError, match="neither a run directory"):
        write_report([tmp_path / "empty"], tmp_path / "x.html")
    with pytest.raises(DpradError, match=r"--sweep .*missing.csv: no such file"):
        write_report([study["runs"] / "head"], tmp_path / "x.html", sweep_table=tmp_path / "missing.csv")
    bad = tmp_path / "badrun"
    shutil.copytree(study["runs"] / "head", bad)
    (bad / "evaluation.json").write_text("{not json")
    with pytest.raises(DpradError, match=r"badrun/evaluation.json: not valid JSON"):
        write_report([bad], tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_plots_leave_matplotlib_global_state_alone(study: dict[str, Path], tmp_path: Path) -> None:
    # rcParams is read key by key, leaving out 'backend', whose lookup would itself import pyplot
    code = (
        "import sys, matplotlib; from pathlib import Path; from dprad.report import write_report\n"
        "r = matplotlib.rcParams\n"
        "snap = lambda: (dict.__getitem__(r, 'backend'), {k: r[k] for k in r if k != 'backend'})\n"
        "before = snap()\n"
        f"write_report([Path({str(study['runs'] / 'dp-eps1')!r})], Path({str(tmp_path / 'r.html')!r}))\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert snap() == before, 'matplotlib global state changed'\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_report_and_card_name_the_base_model_and_the_run_never_their_paths(tmp_path: Path) -> None:
    """A run's ledger written before these pages named things (tests/fixtures/run-before-19) holds the base
    model's install path (/tmp/fixgen/encoder); the pages name the model, the data and the run instead."""
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "run-before-19" / "runs"
    runs = tmp_path / "runs"
    shutil.copytree(fixture, runs)
    assert "/tmp/fixgen/encoder" in (runs / "dp-head" / "privacy.json").read_text()
    html = write_report([runs / "dp-head", runs / "dp-lora"], tmp_path / "report.html").read_text()
    card = write_model_card(runs / "dp-head", tmp_path / "card.md").read_text()
    for page in (html, card):
        assert "/tmp/fixgen" not in page and str(tmp_path) not in page
    assert "the base model encoder and its pre-training data" in html
    assert (
        "- Training data: `reports.csv` (format" in card and "Not covered: the base model encoder and" in card
    )
    assert "_Written by dprad from run `dp-head`;" in card


# ---------------------------------------------------------------------------------------------------
# layout, as a browser lays the page out

MEASURE = """<script>window.addEventListener("load", function () {
  var main = document.querySelector("main"), right = main.getBoundingClientRect().right
    - parseFloat(getComputedStyle(main).paddingRight), items = [], order = [];
  document.querySelectorAll("table, figure, figure img").forEach(function (el) {
    var r = el.getBoundingClientRect(), item = {tag: el.tagName, id: el.id, right: r.right};
    for (var p = el.parentElement; p && p !== main; p = p.parentElement) {
      if (["auto", "scroll"].indexOf(getComputedStyle(p).overflowX) >= 0) {
        item.wrapper = p.getBoundingClientRect().right; item.scrolls = p.scrollWidth > p.clientWidth + 1; break;
      }
    }
    items.push(item);
  });
  var out = {viewport: window.innerWidth, page: document.documentElement.scrollWidth, right: right, items: items};
  var pre = document.createElement("pre"); pre.id = "measured"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script></body>"""


def _measure(page: Path, tmp: Path, width: int) -> dict[str, Any]:
    probe = tmp / f"measure-{width}.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE))
    res = _chromium(probe.as_uri(), tmp, "--dump-dom", f"--window-size={width},2000")
    found = re.search(r'<pre id="measured">(.*?)</pre>', res.stdout, re.S)
    assert res.returncode == 0 and found is not None, res.stderr[-2000:]
    return dict(json.loads(unescape(found.group(1))))


def test_tables_and_figures_fit_the_page_at_1300_and_800_px(study: dict[str, Path], tmp_path: Path) -> None:
    """No table or figure crosses the page's right edge: each fits its container or scrolls inside its own
    wrapper. At 1,300 px every table the report composes fits without scrolling (the sweep table copies a
    file's columns and may scroll). The heat map's columns have a key to the run names; the headline
    metrics come before the cost of choosing among the runs."""
    out = write_report(sorted(study["runs"].iterdir()), tmp_path / "report.html", sweep_table=study["sweep"])
    html = out.read_text()
    for width in (1300, 800):
        m = _measure(out, tmp_path, width)
        assert m["viewport"] == width and m["page"] <= width, m  # the page itself never scrolls sideways
        tables = [i for i in m["items"] if i["tag"] == "TABLE"]
        assert {"table-dp", "table-headline"} <= {t["id"] for t in tables}
        for item in m["items"]:
            edge = item["wrapper"] if "wrapper" in item else item["right"]
            assert edge <= m["right"] + 0.5, (width, item, m["right"])
            if item["right"] > m["right"] + 0.5:
                assert item.get("scrolls"), (width, item)  # wider than the page: scrolls in its wrapper
            if width == 1300 and item["id"] != "table-sweep":
                assert not item.get("scrolls") and item["right"] <= m["right"] + 0.5, item
    key = re.search(r'<table class="key" id="plot-labels-0-key">.*?</table>', html, re.S)
    assert key is not None
    pairs = re.findall(r"<tr><td>(R\d+)</td><td>([^<]+)</td></tr>", key.group(0))
    assert sorted(n for _, n in pairs) == sorted(d.name for d in study["runs"].iterdir())
    assert [k for k, _ in pairs] == [f"R{i}" for i in range(1, len(pairs) + 1)]
    assert html.index('id="table-headline"') < html.index('id="table-selection"')


def test_heat_map_columns_are_short_keys_that_do_not_overlap(study: dict[str, Path], tmp_path: Path) -> None:
    """With run names as long as a sweep's (the demo's), the column labels under both panels are short
    keys whose boxes do not touch, and the key maps each to its run."""
    runs = []
    for d in sorted(study["runs"].iterdir()):
        long = tmp_path / f"synth-cxr-minilm-{d.name}-seed0-split0"
        shutil.copytree(d, long)
        runs.append(read_run(long))
    made = plots.label_heatmap_figure(runs, runs[0].dataset)
    assert made is not None
    fig, key = made
    assert [name for _, name in key] == [r.name for r in sorted(runs, key=plots.run_order) if r.evaluation]
    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax in fig.axes[:2]:
        ticks = ax.get_xticklabels()
        assert [t.get_text().split("\n")[0] for t in ticks] == [k for k, _ in key]
        boxes = [t.get_window_extent(renderer) for t in ticks]
        assert len(boxes) == len(runs) and all(b.width > 0 for b in boxes)
        for a, b in itertools.pairwise(boxes):
            assert a.x1 < b.x0, (a, b)  # left to right, apart


def test_privacy_utility_y_axis_spans_the_data(study: dict[str, Path]) -> None:
    """When every point and interval sits high, the y axis spans them with a small margin, not 0 to 1."""
    runs = [read_run(study["runs"] / n) for n in ("dp-eps1", "dp-eps10")]
    ivs = [r.evaluation.metric("weighted_f1") for r in runs if r.evaluation]
    values = [v for iv in ivs for v in (iv.estimate, iv.low, iv.high) if v is not None]
    assert len(values) == 6
    fig, _ = plots.utility_figure(runs)
    bottom, top = fig.axes[0].get_ylim()
    assert bottom <= min(values) and top >= max(values)  # every point and interval shows
    assert top - bottom <= max(values) - min(values) + 0.1, (bottom, top, values)
