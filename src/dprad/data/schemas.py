"""Label schemas as data: CheXpert-14, CT-RATE-18, and user schemas from YAML/JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from dprad.errors import DpradError

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
LABEL_VALUES = (POSITIVE, NEGATIVE, UNCERTAIN)


class UncertainPolicy(str, Enum):
    """How a CheXpert-style uncertain mention (-1) becomes a training target."""

    ONES = "ones"  # uncertain -> positive (U-Ones, the default)
    ZEROS = "zeros"  # uncertain -> negative (U-Zeros)
    IGNORE = "ignore"  # uncertain -> masked out of the loss and the metrics


@dataclass(frozen=True)
class LabelSchema:
    name: str
    labels: tuple[str, ...]
    # Labels a clinician does not want missed: thresholds for them target sensitivity, not F1.
    critical: tuple[str, ...] = ()
    # A label that is 1 exactly when no other finding is positive or uncertain (CheXpert's No Finding).
    no_finding: str | None = None
    # Labels that do not block No Finding (CheXpert: Support Devices).
    not_blocking_no_finding: tuple[str, ...] = ()
    description: str = ""
    terms: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.labels:
            raise DpradError(f"schema '{self.name}' has no labels")
        if len(set(self.labels)) != len(self.labels):
            raise DpradError(f"schema '{self.name}' lists a label twice")
        for extra in (*self.critical, *self.not_blocking_no_finding, *(self.terms or {})):
            if extra not in self.labels:
                raise DpradError(f"schema '{self.name}': '{extra}' is not one of its labels")
        if self.no_finding is not None and self.no_finding not in self.labels:
            raise DpradError(f"schema '{self.name}': no_finding '{self.no_finding}' is not one of its labels")

    def __len__(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "labels": list(self.labels),
            "critical": list(self.critical),
            "no_finding": self.no_finding,
            "not_blocking_no_finding": list(self.not_blocking_no_finding),
            "description": self.description,
            "terms": {k: list(v) for k, v in self.terms.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, object], *, source: str = "schema") -> LabelSchema:
        try:
            labels = d["labels"]
        except KeyError:
            raise DpradError(f"{source}: missing key 'labels'") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise DpradError(f"{source}: 'labels' must be a list of strings")
        terms_raw = d.get("terms") or {}
        if not isinstance(terms_raw, dict):
            raise DpradError(f"{source}: 'terms' must map each label to a list of phrases")
        terms: dict[str, tuple[str, ...]] = {}
        for label, phrases in terms_raw.items():
            # a bare string would be split into characters and match nearly every report
            if not _str_list(phrases) or not all(p.strip() for p in phrases):
                raise DpradError(
                    f"{source}: terms '{label}' must be a list of non-empty phrases, "
                    f"not {type(phrases).__name__} {phrases!r:.60}"
                )
            terms[str(label)] = tuple(phrases)
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("critical", "not_blocking_no_finding"):
            value = d.get(key) or []
            if not _str_list(value):
                raise DpradError(f"{source}: '{key}' must be a list of label names, not {value!r:.60}")
            lists[key] = tuple(value)  # type: ignore[arg-type]
        no_finding = d.get("no_finding")
        if no_finding is not None and not isinstance(no_finding, str):
            raise DpradError(f"{source}: 'no_finding' must be a label name, not {no_finding!r:.60}")
        return cls(
            name=str(d.get("name") or Path(source).stem),
            labels=tuple(labels),
            critical=lists["critical"],
            no_finding=no_finding,
            not_blocking_no_finding=lists["not_blocking_no_finding"],
            description=str(d.get("description") or ""),
            terms=terms,
        )


def _str_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(x, str) for x in value)


CHEXPERT14 = LabelSchema(
    name="chexpert14",
    labels=(
        "No Finding",
        "Enlarged Cardiomediastinum",
        "Cardiomegaly",
        "Lung Opacity",
        "Lung Lesion",
        "Edema",
        "Consolidation",
        "Pneumonia",
        "Atelectasis",
        "Pneumothorax",
        "Pleural Effusion",
        "Pleural Other",
        "Fracture",
        "Support Devices",
    ),
    critical=("Pneumothorax", "Pneumonia", "Edema", "Consolidation"),
    no_finding="No Finding",
    not_blocking_no_finding=("Support Devices",),
    description="The 14 CheXpert observations for chest radiograph reports (Irvin et al., 2019).",
)

CTRATE18 = LabelSchema(
    name="ctrate18",
    labels=(
        "Medical material",
        "Arterial wall calcification",
        "Cardiomegaly",
        "Pericardial effusion",
        "Coronary artery wall calcification",
        "Hiatal hernia",
        "Lymphadenopathy",
        "Emphysema",
        "Atelectasis",
        "Lung nodule",
        "Lung opacity",
        "Pulmonary fibrotic sequela",
        "Pleural effusion",
        "Mosaic attenuation pattern",
        "Peribronchial thickening",
        "Consolidation",
        "Bronchiectasis",
        "Interlobular septal thickening",
    ),
    critical=("Pericardial effusion", "Consolidation", "Lung nodule"),
    description="The 18 CT-RATE abnormality labels for chest CT reports (Hamamci et al., 2024).",
)

BUILTIN_SCHEMAS = {s.name: s for s in (CHEXPERT14, CTRATE18)}


def builtin_schema(schema: LabelSchema) -> bool:
    """The schema is one of dprad's own (same name and labels), for which public synthetic data exist."""
    return schema.name in BUILTIN_SCHEMAS and tuple(schema.labels) == BUILTIN_SCHEMAS[schema.name].labels


def load_schema(name_or_path: str | LabelSchema) -> LabelSchema:
    """A built-in schema by name (``chexpert14``, ``ctrate18``) or a user schema from a YAML/JSON file."""
    if isinstance(name_or_path, LabelSchema):
        return name_or_path
    if name_or_path in BUILTIN_SCHEMAS:
        return BUILTIN_SCHEMAS[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        known = ", ".join(BUILTIN_SCHEMAS)
        raise DpradError(f"--schema '{name_or_path}' is neither a built-in schema ({known}) nor a file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - any parse failure becomes one line naming the file
        raise DpradError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {err}") from None
    if isinstance(raw, list):
        raw = {"name": path.stem, "labels": raw}
    if not isinstance(raw, dict):
        raise DpradError(f"{path}: a schema is a mapping with 'labels' (or a plain list of label names)")
    return LabelSchema.from_dict(raw, source=str(path))
