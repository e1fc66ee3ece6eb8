"""Label mappings between schemas, for domain-transfer evaluation (e.g. chest X-ray model on chest CT)."""

from __future__ import annotations

import json
from pathlib import Path

from dprad.data.schemas import LabelSchema
from dprad.errors import DpradError

# CheXpert-14 (chest X-ray) -> CT-RATE-18 (chest CT): the findings the two label sets name in common.
CHEXPERT_TO_CTRATE = {
    "Support Devices": "Medical material",
    "Cardiomegaly": "Cardiomegaly",
    "Atelectasis": "Atelectasis",
    "Lung Lesion": "Lung nodule",
    "Lung Opacity": "Lung opacity",
    "Pleural Effusion": "Pleural effusion",
    "Consolidation": "Consolidation",
}
BUILTIN_MAPS = {
    ("chexpert14", "ctrate18"): CHEXPERT_TO_CTRATE,
    ("ctrate18", "chexpert14"): {v: k for k, v in CHEXPERT_TO_CTRATE.items()},
}


def label_map(source: LabelSchema, target: LabelSchema, spec: str | None = None) -> dict[str, str]:
    """Run label -> data label. Same schema: identity. Otherwise a built-in map or a JSON file ``{run: data}``."""
    if spec is None or spec == "builtin":
        if source.name == target.name:
            return {x: x for x in source.labels}
        if (source.name, target.name) in BUILTIN_MAPS:
            return dict(BUILTIN_MAPS[(source.name, target.name)])
        shared = [x for x in source.labels if x in target.labels]
        if not shared:
            raise DpradError(
                f"schemas '{source.name}' and '{target.name}' share no label name: pass --label-map FILE (JSON run->data)"
            )
        return {x: x for x in shared}
    path = Path(spec)
    if not path.is_file():
        raise DpradError(f"--label-map {spec}: no such file")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DpradError(f"--label-map {spec}: not valid JSON: {err.msg}") from None
    if not isinstance(raw, dict):
        raise DpradError(f"--label-map {spec}: expected an object {{run label: data label}}")
    for a, b in raw.items():
        if a not in source.labels:
            raise DpradError(f"--label-map {spec}: '{a}' is not a label of the run's schema '{source.name}'")
        if b not in target.labels:
            raise DpradError(f"--label-map {spec}: '{b}' is not a label of the data's schema '{target.name}'")
    return {str(a): str(b) for a, b in raw.items()}
