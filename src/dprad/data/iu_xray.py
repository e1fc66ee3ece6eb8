"""Open-i / IU X-ray (``indiana_reports.csv``): findings + impression, gold labels from the MeSH codes.

The MeSH column holds human-indexed terms, ``Term/qualifier/qualifier;Term/...``. They are not CheXpert
labels; :func:`mesh_to_chexpert` maps them onto the 14 CheXpert labels with the rules below (term = part
before the first ``/``, qualifiers after, case-insensitive; commas in terms are ignored, so
``Catheters, Indwelling`` is ``catheters indwelling``). The mapping is a reading of the indexers' codes,
not a radiologist's relabelling: every positive is a positive the indexer coded, and everything else is
"not mentioned" (MeSH codes do not record negations or uncertainty).
"""

from __future__ import annotations

import re
from pathlib import Path

from dprad.data.reports import ReadResult, Report, check_unique_ids, read_table, require_columns
from dprad.data.schemas import CHEXPERT14
from dprad.errors import DpradError

IU_COLUMNS = ("uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression")


def _norm(s: str) -> str:
    return " ".join(s.replace(",", " ").lower().split())


def _code_labels(term: str, quals: set[str]) -> set[str]:
    """CheXpert labels implied by one MeSH code (term + qualifiers)."""
    out: set[str] = set()
    enlarged = bool(quals & {"enlarged", "prominent"})
    # Enlarged Cardiomediastinum
    if (
        (term == "mediastinum" and "shift" not in quals)
        or term in {"aortic aneurysm", "pericardial effusion"}
        or (term in {"pulmonary artery", "aorta"} and enlarged)
        or (term == "lung" and "hilum" in quals and (enlarged or "lymph nodes" in quals))
        or (term == "lymph nodes" and quals & {"enlarged", "paratracheal"})
    ):
        out.add("Enlarged Cardiomediastinum")
    # Cardiomegaly
    if (
        term == "cardiomegaly"
        or (term == "cardiac shadow" and quals & {"enlarged", "borderline"})
        or (term in {"heart", "heart atria", "heart ventricles"} and "enlarged" in quals)
    ):
        out.add("Cardiomegaly")
    # Lung Opacity
    if (
        term
        in {"opacity", "airspace disease", "infiltrate", "pulmonary fibrosis", "lung diseases interstitial"}
        or (term == "density" and (not quals or quals & {"lung", "thorax"}))
        or (term == "markings" and {"lung", "interstitial"} <= quals)
        or (term == "cicatrix" and "pleura" not in quals)
        or (term == "lung" and "interstitial" in quals)
        or (term == "thickening" and "bronchovascular" in quals)
    ):
        out.add("Lung Opacity")
    # Lung Lesion
    if (
        (term == "nodule" and not quals & {"calcified", "breast", "heart", "thorax"})
        or (term == "mass" and "breast" not in quals)
        or term == "cavitation"
        or (term == "cysts" and "lung" in quals)
    ):
        out.add("Lung Lesion")
    if term in {"pulmonary edema", "pulmonary congestion", "heart failure"}:
        out.add("Edema")
    if term == "consolidation":
        out.add("Consolidation")
    if term == "pneumonia":
        out.add("Pneumonia")
    if term == "pulmonary atelectasis":
        out.add("Atelectasis")
    if term in {"pneumothorax", "hydropneumothorax", "hemopneumothorax"}:
        out.add("Pneumothorax")
    if term in {"pleural effusion", "hydropneumothorax"}:
        out.add("Pleural Effusion")
    if (term in {"thickening", "cicatrix", "calcinosis"} and "pleura" in quals) or (
        term == "pleura" and "blunted" not in quals
    ):
        out.add("Pleural Other")
    if term == "fractures bone":
        out.add("Fracture")
    if term in {
        "catheters indwelling",
        "implanted medical device",
        "tube inserted",
        "medical device",
        "stents",
    }:
        out.add("Support Devices")
    return out


def mesh_to_chexpert(mesh: str, problems: str) -> dict[str, int] | None:
    """CheXpert labels (positives only) from one row's MeSH and Problems; ``None`` for ``No Indexing``."""
    if _norm(problems) == "no indexing":
        return None
    if _norm(problems) == "normal":
        return {"No Finding": 1}
    found: set[str] = set()
    for code in mesh.split(";"):
        parts = [_norm(p) for p in code.split("/")]
        if not parts[0]:
            continue
        found |= _code_labels(parts[0], set(parts[1:]))
    return {name: 1 for name in CHEXPERT14.labels if name in found}


_FEMALE_STRICT = re.compile(r"\b(female|woman|girl|lady|yof)\b", re.I)
_MALE_STRICT = re.compile(r"\b(male|man|boy|gentleman|yom)\b", re.I)


def sex_from_indication(indication: str) -> str:
    """``F`` / ``M`` when the indication states it (female/woman/girl/lady/yof vs male/man/boy/gentleman/yom)."""
    f = bool(_FEMALE_STRICT.search(indication))
    m = bool(_MALE_STRICT.search(indication))
    if f and not m:
        return "F"
    if m and not f:
        return "M"
    return "unknown"


def _clean(s: str) -> str:
    s = " ".join(s.split())
    return "" if s.lower() in {"", "none.", "none"} else s


def read_iu_xray(path: str | Path) -> ReadResult:
    path = Path(path)
    df = read_table(path, fmt="csv")
    require_columns(df, IU_COLUMNS, path=path)
    ids = [str(u).strip() for u in df["uid"]]
    for row, uid in enumerate(ids, start=1):
        if not uid:
            raise DpradError(f"{path}: row {row}: column 'uid': empty id")
    check_unique_ids(ids, path=path, column="uid")
    reports: list[Report] = []
    skipped: list[tuple[str, str]] = []
    no_index = 0
    for row, rec in enumerate(df.to_dict(orient="records"), start=1):
        uid = ids[row - 1]
        findings, impression = _clean(rec["findings"]), _clean(rec["impression"])
        text = " ".join(x for x in (findings, impression) if x)
        if not text:
            skipped.append((uid, "no findings and no impression"))
            continue
        labels = mesh_to_chexpert(rec["MeSH"], rec["Problems"])
        no_index += labels is None
        indication = _clean(rec["indication"])
        reports.append(
            Report(
                id=uid,
                # One study per uid; Open-i publishes no patient key, so each study is its own patient.
                patient_id=uid,
                text=text,
                sections={"indication": indication, "findings": findings, "impression": impression},
                attrs={"sex": sex_from_indication(indication), "site": "iu"},
                labels=labels,
            )
        )
    notes = [f"{no_index} reports are 'No Indexing' and carry no gold labels"] if no_index else []
    notes.append("Open-i has no patient key: each study is treated as its own patient")
    return ReadResult(reports=reports, skipped=skipped, notes=notes)
