"""A check shared by the report's tests (and usable on the demo's outputs): the report's headline table, its
at-a-glance sentences and each run's model card quote the same numbers, at the same thresholds, and those
are the run's shipped thresholds (or the three say plainly that they are not).

The expected values are read here straight from the run's files, not through dprad: evaluation.json when
the run has one, else metrics.json's test split at the thresholds the run ships.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

METRICS = {"weighted_f1": "weighted F1", "macro_f1": "macro F1", "micro_f1": "micro F1"}
METRICS |= {"macro_auroc": "macro AUROC"}


class _Page(HTMLParser):
    """The headline table (a dict per row, by column) and the at-a-glance sentences (run name -> text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.sentences: dict[str, str] = {}
        self._table = False
        self._cell: list[str] | None = None
        self._li: list[str] | None = None
        self._in_list = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") == "table-headline"
        elif tag == "tr" and self._table:
            self.rows.append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "ul" and a.get("id") == "headlines":
            self._in_list = True
        elif tag == "li" and self._in_list:
            self._li = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "ul":
            self._in_list = False
        elif tag == "li" and self._li is not None:
            text = " ".join("".join(self._li).split())
            self.sentences[text.split(" ", 1)[0]] = text
            self._li = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._li):
            if part is not None:
                part.append(data)

    def table(self) -> dict[str, dict[str, str]]:
        head, *body = self.rows
        return {row[0]: dict(zip(head, row, strict=True)) for row in body}


def _fmt(x: Any) -> str:
    """A value as the report prints it: '0.812 [0.790, 0.833]' or '0.812 (no CI)'."""
    if isinstance(x, Mapping):
        if x.get("ci_low") is not None and x.get("ci_high") is not None:
            return f"{x['estimate']:.3f} [{x['ci_low']:.3f}, {x['ci_high']:.3f}]"
        x = x["estimate"]
    return f"{x:.3f} (no CI)"


def expected(run_dir: Path) -> tuple[dict[str, str], str, bool]:
    """(metric -> printed value, the thresholds the numbers are at ('val' or '0.5'), whether the run ships
    thresholds other than 0.5), from the run's own files."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fitted = metrics.get("thresholds", {})
    ships_other = any(v != 0.5 for v in fitted.get("values") or ())
    if (run_dir / "evaluation.json").is_file():
        ev = json.loads((run_dir / "evaluation.json").read_text())
        return {k: _fmt(ev["headline"][k]) for k in METRICS}, ev["thresholds"]["source"], ships_other
    at = "threshold_val" if "threshold_val" in metrics["test"] else "threshold_0.5"
    test = metrics["test"][at]
    return {k: _fmt(test[k]) for k in METRICS}, "val" if at == "threshold_val" else "0.5", ships_other


def check_agreement(report_html: str, cards: Mapping[str, str], run_dirs: Mapping[str, Path]) -> None:
    """Every run in ``run_dirs`` (name -> directory): its headline-table row, its at-a-glance sentence and
    its model card (``cards``: name -> the card's text) quote its numbers as its files hold them, and name
    one same phrase for the thresholds they are at: the shipped ones, or a plain 'NOT' when they are not."""
    page = _Page()
    page.feed(report_html)
    rows = page.table()
    for name, run_dir in run_dirs.items():
        values, source, ships_other = expected(run_dir)
        row, sentence, card = rows[name], page.sentences[name], cards[name]
        at = row["thresholds"]  # the phrase the table names; the sentence and the card must name it too
        if source == "val" or not ships_other:
            assert "shipped thresholds" in at and "NOT" not in at, (name, at)
        else:  # an evaluation at 0.5 of a run that ships other thresholds
            assert "NOT at the thresholds this run ships" in at, (name, at)
        for key, column in METRICS.items():
            assert row[column] == values[key], (name, column, row[column], values[key])
            assert f"| {column} | {values[key]} |" in card, (name, column, values[key])
        f1 = f"weighted F1 {values['weighted_f1']} {at}"
        assert f1 in sentence, (name, f1, sentence)
        assert f"Weighted F1 on the test split: {values['weighted_f1']} {at}." in card, (name, f1)
        metrics_section = card.split("## Metrics", 1)[1].split("\n\n", 2)[1]
        assert at in metrics_section, (name, at, metrics_section)
