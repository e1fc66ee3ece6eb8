"""A label-noise x DP study, as ``python bench/label_noise.py --out study.json`` writes it: students trained
on each teacher's labels (gold, rules, synthetic noise) at several eps and split seeds, scored on gold.

Reading only: :func:`load_study` validates the file strictly and carries the numbers it holds, in frozen
dataclasses, for the HTML report; it computes no new metric. Any problem is a :class:`DpradError` whose
one-line message names the file and the JSON path of the first problem, e.g.
``study.json: corpora.iu.teachers.gold.1.0.per_label[3].sensitivity: missing ci_low``.

The shape (keys not listed are ignored)::

    {"corpora": {CORPUS: {"teachers": {TEACHER: {EPS: {
        "weighted_f1": {"mean", "min", "max"},
        "training_label_noise": {"false_negative_rate", "false_positive_rate"},
        "per_label": [{"label", "test_positives", "rare", "critical",
                       "sensitivity": {"estimate", "ci_low", "ci_high"}}, ...]}}}}},
     "rare_below": 20, "resamples": 1000}

EPS is a float written as a string (``"1.0"``, ``"10.0"``) or ``"inf"`` for the non-private student. Every
rate is in [0, 1]. A sensitivity may be NaN (the producer writes NaN where a label had no test positive);
nothing else may be NaN or infinite.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from dprad.errors import DpradError


@dataclass(frozen=True)
class Sensitivity:
    """Test sensitivity of one label, mean over split seeds, with its 95% patient-bootstrap interval."""

    estimate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class LabelSensitivity:
    label: str
    test_positives: float  # mean over split seeds
    rare: bool
    critical: bool
    sensitivity: Sensitivity


@dataclass(frozen=True)
class WeightedF1:
    """Test weighted F1 over split seeds."""

    mean: float
    min: float
    max: float


@dataclass(frozen=True)
class TrainingLabelNoise:
    """The teacher's realised noise on the training labels: FNR among gold positives, FPR among gold
    negatives (mean over split seeds)."""

    false_negative_rate: float
    false_positive_rate: float


@dataclass(frozen=True)
class Cell:
    """One teacher at one eps."""

    eps_key: str  # as in the file: "1.0", "inf"
    epsilon: float  # math.inf for the non-private student
    weighted_f1: WeightedF1
    training_label_noise: TrainingLabelNoise
    per_label: tuple[LabelSensitivity, ...]


@dataclass(frozen=True)
class Teacher:
    name: str
    cells: tuple[Cell, ...]  # by increasing eps, inf last

    def cell(self, epsilon: float) -> Cell | None:
        return next((c for c in self.cells if c.epsilon == epsilon), None)


@dataclass(frozen=True)
class Corpus:
    name: str
    teachers: tuple[Teacher, ...]  # in the file's order

    @property
    def epsilons(self) -> tuple[float, ...]:
        """Every eps any teacher was trained at, increasing, inf last."""
        return tuple(sorted({c.epsilon for t in self.teachers for c in t.cells}))

    @property
    def labels(self) -> tuple[LabelSensitivity, ...]:
        """The labels in the file's order (the same in every cell of a corpus; the loader checks)."""
        return self.teachers[0].cells[0].per_label


@dataclass(frozen=True)
class LabelNoiseStudy:
    source: str  # the file, as given
    corpora: tuple[Corpus, ...]  # in the file's order
    rare_below: float  # a label is rare below this many test positives (mean over split seeds)
    resamples: int  # patient-bootstrap resamples per split seed


def load_study(path: str | Path) -> LabelNoiseStudy:
    """Read and validate a study written by ``bench/label_noise.py --out``."""
    path = Path(path)
    if not path.is_file():
        raise DpradError(f"{path}: no such file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DpradError(f"{path}: not valid JSON: {err}") from None
    return _Reader(str(path)).study(raw)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _describe(value: Any) -> str:
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind.get(type(value), type(value).__name__)} ({text})"


class _Reader:
    """Walks the JSON, keeping the path for the error message."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> NoReturn:
        raise DpradError(f"{self.source}: {where}: {problem}" if where else f"{self.source}: {problem}")

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"expected an object, got {_describe(value)}")
        return value

    def get(self, obj: dict[str, Any], key: str, where: str) -> Any:
        if key not in obj:
            self.fail(where, f"missing {key}")
        return obj[key]

    def number(
        self, obj: dict[str, Any], key: str, where: str, *, unit: bool = False, nan_ok: bool = False
    ) -> float:
        value = self.get(obj, key, where)
        at = f"{where}.{key}" if where else key
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(at, f"expected a number, got {_describe(value)}")
        x = float(value)
        if math.isnan(x):
            if nan_ok:
                return x
            self.fail(at, "expected a number, got NaN")
        if math.isinf(x):
            self.fail(at, f"expected a finite number, got {value}")
        if unit and not 0.0 <= x <= 1.0:
            self.fail(at, f"{value} is outside [0, 1]")
        return x

    def flag(self, obj: dict[str, Any], key: str, where: str) -> bool:
        value = self.get(obj, key, where)
        if not isinstance(value, bool):
            self.fail(f"{where}.{key}", f"expected true or false, got {_describe(value)}")
        return value

    def study(self, raw: Any) -> LabelNoiseStudy:
        top = self.obj(raw, "")
        rare_below = self.number(top, "rare_below", "")
        if rare_below <= 0:
            self.fail("rare_below", f"{rare_below:g} must be positive")
        resamples = self.get(top, "resamples", "")
        if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
            self.fail("resamples", f"expected a positive whole number, got {_describe(resamples)}")
        corpora_raw = self.obj(self.get(top, "corpora", ""), "corpora")
        if not corpora_raw:
            self.fail("corpora", "no corpus in the study")
        corpora = tuple(self.corpus(name, value, f"corpora.{name}") for name, value in corpora_raw.items())
        return LabelNoiseStudy(self.source, corpora, rare_below, resamples)

    def corpus(self, name: str, raw: Any, where: str) -> Corpus:
        if not name.strip():
            self.fail(where, "empty corpus name")
        teachers_raw = self.obj(self.get(self.obj(raw, where), "teachers", where), f"{where}.teachers")
        if not teachers_raw:
            self.fail(f"{where}.teachers", "no teacher")
        teachers = []
        first: tuple[str, tuple[LabelSensitivity, ...]] | None = None
        for teacher, value in teachers_raw.items():
            at = f"{where}.teachers.{teacher}"
            if not teacher.strip():
                self.fail(at, "empty teacher name")
            cells_raw = self.obj(value, at)
            if not cells_raw:
                self.fail(at, "no eps")
            cells: list[Cell] = []
            for key, cell_raw in cells_raw.items():
                epsilon = self.eps(key, f"{at}.{key}")
                same = next((c.eps_key for c in cells if c.epsilon == epsilon), None)
                if same is not None:
                    self.fail(f"{at}.{key}", f"the same eps as {same}")
                cell = self.cell(key, epsilon, cell_raw, f"{at}.{key}")
                if first is None:
                    first = (f"{at}.{key}.per_label", cell.per_label)
                else:
                    self._same_labels(first, cell.per_label, f"{at}.{key}.per_label")
                cells.append(cell)
            teachers.append(Teacher(teacher, tuple(sorted(cells, key=lambda c: c.epsilon))))
        return Corpus(name, tuple(teachers))

    def eps(self, key: str, where: str) -> float:
        """An eps key: a positive float as a string ("1.0"), or "inf" for the non-private student."""
        try:
            epsilon = float(key)
        except ValueError:
            epsilon = math.nan
        if key != key.strip() or math.isnan(epsilon) or epsilon <= 0:
            self.fail(where, f"the eps key {key!r} is not a positive number or 'inf'")
        return epsilon

    def cell(self, key: str, epsilon: float, raw: Any, where: str) -> Cell:
        obj = self.obj(raw, where)
        f1_at = f"{where}.weighted_f1"
        f1 = self.obj(self.get(obj, "weighted_f1", where), f1_at)
        weighted_f1 = WeightedF1(
            self.number(f1, "mean", f1_at, unit=True),
            self.number(f1, "min", f1_at, unit=True),
            self.number(f1, "max", f1_at, unit=True),
        )
        if weighted_f1.min > weighted_f1.max:
            self.fail(f1_at, f"min {weighted_f1.min} is above max {weighted_f1.max}")
        noise_at = f"{where}.training_label_noise"
        noise = self.obj(self.get(obj, "training_label_noise", where), noise_at)
        rates = TrainingLabelNoise(
            self.number(noise, "false_negative_rate", noise_at, unit=True),
            self.number(noise, "false_positive_rate", noise_at, unit=True),
        )
        labels_at = f"{where}.per_label"
        rows = self.get(obj, "per_label", where)
        if not isinstance(rows, list):
            self.fail(labels_at, f"expected a list, got {_describe(rows)}")
        if not rows:
            self.fail(labels_at, "no label")
        per_label = tuple(self.label(row, f"{labels_at}[{i}]") for i, row in enumerate(rows))
        seen: set[str] = set()
        for i, row in enumerate(per_label):
            if row.label in seen:
                self.fail(f"{labels_at}[{i}].label", f"{row.label!r} appears twice")
            seen.add(row.label)
        return Cell(key, epsilon, weighted_f1, rates, per_label)

    def label(self, raw: Any, where: str) -> LabelSensitivity:
        obj = self.obj(raw, where)
        name = self.get(obj, "label", where)
        if not isinstance(name, str) or not name.strip():
            self.fail(f"{where}.label", f"expected a label name, got {_describe(name)}")
        positives = self.number(obj, "test_positives", where)
        if positives < 0:
            self.fail(f"{where}.test_positives", f"{positives:g} is negative")
        rare = self.flag(obj, "rare", where)
        critical = self.flag(obj, "critical", where)
        s_at = f"{where}.sensitivity"
        s = self.obj(self.get(obj, "sensitivity", where), s_at)
        sens = Sensitivity(
            self.number(s, "estimate", s_at, unit=True, nan_ok=True),
            self.number(s, "ci_low", s_at, unit=True, nan_ok=True),
            self.number(s, "ci_high", s_at, unit=True, nan_ok=True),
        )
        if sens.ci_low > sens.ci_high:  # False when either is NaN
            self.fail(s_at, f"ci_low {sens.ci_low} is above ci_high {sens.ci_high}")
        return LabelSensitivity(name, positives, rare, critical, sens)

    def _same_labels(
        self, first: tuple[str, tuple[LabelSensitivity, ...]], rows: tuple[LabelSensitivity, ...], where: str
    ) -> None:
        """Every cell of a corpus scores the same labels on the same test splits: same names in the same
        order, same test positives, same rare and critical marks."""
        ref_at, ref = first
        if len(rows) != len(ref):
            self.fail(where, f"{len(rows)} labels where {ref_at} has {len(ref)}")
        for i, (row, r) in enumerate(zip(rows, ref, strict=True)):
            for key in ("label", "test_positives", "rare", "critical"):
                if getattr(row, key) != getattr(r, key):
                    self.fail(
                        f"{where}[{i}].{key}",
                        f"{getattr(row, key)!r} where {ref_at}[{i}] has {getattr(r, key)!r}",
                    )
