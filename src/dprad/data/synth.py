"""A synthetic corpus of chest X-ray and chest CT reports with known labels.

It is the embedded default data for the demo and the tests. It is built so that no single keyword gives
a label away: every finding has several phrasings, and its words also appear negated ("no pleural
effusion"), uncertain ("cannot exclude pneumonia") and in history sentences ("history of pneumonia",
which is not a current finding). Sites write in different styles and see different prevalences, patients
have several reports with chronic findings that persist, and age / sex shift some prevalences.
Labels follow the CheXpert convention: 1 positive, 0 negated, -1 uncertain, absent = not mentioned.
The same model, written as a MIMIC-CXR tree at MIMIC-CXR's size, is :mod:`dprad.data.synth_mimic`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dprad.data.reports import Report
from dprad.data.schemas import CHEXPERT14, CTRATE18, LabelSchema

# label -> phrasings of the finding (nouns usable after "no", "possible", "history of")
CXR_TERMS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        "widened mediastinum",
        "mediastinal widening",
        "enlarged cardiomediastinal silhouette",
    ),
    "Cardiomegaly": (
        "cardiomegaly",
        "enlarged heart",
        "enlargement of the cardiac silhouette",
        "cardiac enlargement",
    ),
    "Lung Opacity": (
        "airspace opacity",
        "patchy opacities",
        "hazy opacity",
        "increased interstitial markings",
    ),
    "Lung Lesion": ("pulmonary nodule", "lung mass", "spiculated nodule", "nodular density"),
    "Edema": (
        "pulmonary edema",
        "interstitial edema",
        "vascular congestion",
        "pulmonary vascular congestion",
    ),
    "Consolidation": ("consolidation", "focal consolidation", "lobar consolidation"),
    "Pneumonia": ("pneumonia", "infectious process", "bronchopneumonia"),
    "Atelectasis": ("atelectasis", "subsegmental atelectasis", "linear atelectasis", "bibasilar atelectasis"),
    "Pneumothorax": ("pneumothorax", "apical pneumothorax", "small pneumothorax"),
    "Pleural Effusion": (
        "pleural effusion",
        "effusion",
        "layering pleural fluid",
        "pleural fluid",
    ),
    "Pleural Other": ("pleural thickening", "pleural plaque", "pleural scarring"),
    "Fracture": ("rib fracture", "fracture", "vertebral compression fracture"),
    "Support Devices": (
        "endotracheal tube",
        "right PICC line",
        "dual-lead pacemaker",
        "left chest port",
        "nasogastric tube",
    ),
}

CT_TERMS: dict[str, tuple[str, ...]] = {
    "Medical material": (
        "cardiac pacemaker",
        "vascular stent",
        "surgical clips",
        "sternotomy wires",
        "port catheter",
    ),
    "Arterial wall calcification": (
        "aortic wall calcification",
        "atherosclerotic calcification of the aorta",
        "calcified atheroma plaques in the aortic arch",
    ),
    "Cardiomegaly": ("cardiomegaly", "enlarged heart", "increased cardiac size"),
    "Pericardial effusion": ("pericardial effusion", "pericardial fluid"),
    "Coronary artery wall calcification": ("coronary artery calcification", "calcified coronary plaques"),
    "Hiatal hernia": ("hiatal hernia", "hiatus hernia", "sliding hiatal hernia"),
    "Lymphadenopathy": (
        "lymphadenopathy",
        "enlarged mediastinal lymph nodes",
        "pathologically enlarged hilar lymph nodes",
    ),
    "Emphysema": ("emphysema", "centrilobular emphysema", "paraseptal emphysematous changes"),
    "Atelectasis": ("atelectasis", "subsegmental atelectasis", "atelectatic changes"),
    "Lung nodule": ("pulmonary nodule", "solid nodule", "subpleural nodule"),
    "Lung opacity": ("ground-glass opacity", "ground glass densities", "patchy opacity"),
    "Pulmonary fibrotic sequela": ("fibrotic sequelae", "fibrotic bands", "parenchymal scarring"),
    "Pleural effusion": ("pleural effusion", "pleural fluid"),
    "Mosaic attenuation pattern": ("mosaic attenuation", "mosaic perfusion pattern"),
    "Peribronchial thickening": ("peribronchial thickening", "bronchial wall thickening"),
    "Consolidation": ("consolidation", "consolidative areas", "dense consolidation"),
    "Bronchiectasis": ("bronchiectasis", "bronchiectatic changes", "cylindrical bronchiectasis"),
    "Interlobular septal thickening": ("interlobular septal thickening", "septal thickening"),
}

CXR_PREVALENCE: dict[str, float] = {
    "Enlarged Cardiomediastinum": 0.04,
    "Cardiomegaly": 0.14,
    "Lung Opacity": 0.18,
    "Lung Lesion": 0.05,
    "Edema": 0.07,
    "Consolidation": 0.03,
    "Pneumonia": 0.04,
    "Atelectasis": 0.12,
    "Pneumothorax": 0.015,
    "Pleural Effusion": 0.12,
    "Pleural Other": 0.02,
    "Fracture": 0.03,
    "Support Devices": 0.18,
}
CT_PREVALENCE: dict[str, float] = {
    "Medical material": 0.10,
    "Arterial wall calcification": 0.28,
    "Cardiomegaly": 0.10,
    "Pericardial effusion": 0.07,
    "Coronary artery wall calcification": 0.24,
    "Hiatal hernia": 0.13,
    "Lymphadenopathy": 0.24,
    "Emphysema": 0.19,
    "Atelectasis": 0.24,
    "Lung nodule": 0.43,
    "Lung opacity": 0.38,
    "Pulmonary fibrotic sequela": 0.25,
    "Pleural effusion": 0.12,
    "Mosaic attenuation pattern": 0.07,
    "Peribronchial thickening": 0.10,
    "Consolidation": 0.16,
    "Bronchiectasis": 0.09,
    "Interlobular septal thickening": 0.07,
}
CHRONIC = {
    "Cardiomegaly",
    "Support Devices",
    "Medical material",
    "Emphysema",
    "Arterial wall calcification",
    "Coronary artery wall calcification",
    "Pulmonary fibrotic sequela",
    "Hiatal hernia",
    "Pleural Other",
}
AGE_RELATED = {
    "Cardiomegaly",
    "Arterial wall calcification",
    "Coronary artery wall calcification",
    "Emphysema",
    "Edema",
    "Pleural Effusion",
    "Lung nodule",
    "Fracture",
}

LOCATIONS = (
    "in the right lower lobe",
    "at the left lung base",
    "in the right upper lobe",
    "bilaterally",
    "in the lingula",
    "at both lung bases",
    "in the left upper lobe",
)
POSITIVE = (
    "There is {t} {loc}.",
    "{T} is noted {loc}.",
    "{T} {loc}.",
    "Findings consistent with {t}.",
    "Interval development of {t}.",
    "Persistent {t}.",
    "Redemonstrated {t} {loc}.",
)
NEGATIVE = (
    "No {t}.",
    "There is no {t}.",
    "No evidence of {t}.",
    "{T} is not seen.",
    "Without {t}.",
    "Negative for {t}.",
    "Previously seen {t} has resolved.",
    "No definite {t} is identified.",
)
UNCERTAIN = (
    "Cannot exclude {t}.",
    "Possible {t} {loc}.",
    "Findings may represent {t}.",
    "{T} is not excluded.",
    "Questionable {t}.",
    "{T} versus scarring.",
    "Probable {t} {loc}.",
)
HISTORY = ("History of {t}.", "Patient with prior {t}.", "Clinical history: {t}, follow-up requested.")
DEVICE_POSITIVE = (
    "{T} in place.",
    "There is a {t} in satisfactory position.",
    "{T} terminates appropriately.",
    "Stable appearance of {t}.",
)
DEVICE_NEGATIVE = ("No {t} is seen.", "Interval removal of the {t}.", "The {t} has been removed.")

CXR_NORMAL = (
    "The lungs are well expanded.",
    "The cardiomediastinal contours are unremarkable.",
    "Osseous structures are grossly intact.",
    "Heart size is within normal limits.",
    "The trachea is midline.",
    "Visualized upper abdomen is unremarkable.",
)
CT_NORMAL = (
    "Trachea and both main bronchi are patent.",
    "Thoracic aorta diameter is normal.",
    "The thyroid gland is unremarkable.",
    "Upper abdominal organs in the sections are unremarkable.",
    "Bone structures in the study area are natural.",
    "The esophagus is of normal calibre.",
)

SITES: dict[str, dict[str, object]] = {
    # name: style and a prevalence multiplier (sites see different case mixes)
    "site_a": {"style": "sections", "shift": 1.0},
    "site_b": {"style": "terse", "shift": 1.4},
    "site_c": {"style": "narrative", "shift": 0.7},
}


@dataclass(frozen=True)
class SynthConfig:
    modality: str = "cxr"  # "cxr" (chexpert14) or "ct" (ctrate18)
    n_patients: int = 1000
    mean_reports_per_patient: float = 1.6
    sites: tuple[str, ...] = ("site_a", "site_b", "site_c")
    prevalence: Mapping[str, float] = field(default_factory=dict)  # overrides of the defaults
    uncertain_rate: float = 0.15  # share of findings written as uncertain
    negation_rate: float = 0.3  # share of absent findings written as negated
    history_rate: float = 0.08  # share of absent findings mentioned as history only
    seed: int = 0
    # 0: the user stream (`dprad synth --seed S`); PUBLIC_STREAM: dprad's public corpus, which no
    # `dprad synth` option can produce, so that "public" data never coincide with a user's synthetic data
    stream: int = 0


PUBLIC_STREAM = 0x50554250  # "PUBP": the public corpus's own seed stream


def schema_for(modality: str) -> LabelSchema:
    return {"cxr": CHEXPERT14, "ct": CTRATE18}[modality]


def generate_reports(config: SynthConfig = SynthConfig()) -> list[Report]:
    """Deterministic for a given config (the seed is part of it)."""
    if config.modality not in {"cxr", "ct"}:
        raise ValueError(f"modality must be 'cxr' or 'ct', not {config.modality!r}")
    rng = np.random.default_rng(config.seed if config.stream == 0 else [config.stream, config.seed])
    schema = schema_for(config.modality)
    terms = CXR_TERMS if config.modality == "cxr" else CT_TERMS
    prevalence = {**(CXR_PREVALENCE if config.modality == "cxr" else CT_PREVALENCE), **config.prevalence}
    unknown = set(config.prevalence) - set(terms)
    if unknown:
        raise ValueError(f"prevalence given for labels not in {schema.name}: {sorted(unknown)}")
    reports: list[Report] = []
    for p in range(config.n_patients):
        pid = f"{config.modality}-p{p:05d}"
        site = config.sites[int(rng.integers(len(config.sites)))]
        sex = "F" if rng.random() < 0.5 else "M"
        age = int(np.clip(rng.normal(62, 16), 18, 98))
        frailty = rng.gamma(2.0, 0.5)  # latent, per patient: sicker patients have more findings
        chronic = {
            lab
            for lab in terms
            if lab in CHRONIC and rng.random() < _rate(prevalence[lab], site, age, frailty, lab)
        }
        for s in range(1 + int(rng.poisson(config.mean_reports_per_patient - 1))):
            labels: dict[str, int] = {}
            sentences: list[str] = []
            for lab in terms:
                present = lab in chronic or (
                    lab not in CHRONIC and rng.random() < _rate(prevalence[lab], site, age, frailty, lab)
                )
                term = str(rng.choice(terms[lab]))
                device = lab in {"Support Devices", "Medical material"}
                if present:
                    if not device and rng.random() < config.uncertain_rate:
                        labels[lab] = -1
                        sentences.append(_fill(rng, UNCERTAIN, term))
                    else:
                        labels[lab] = 1
                        sentences.append(_fill(rng, DEVICE_POSITIVE if device else POSITIVE, term))
                elif rng.random() < config.negation_rate:
                    labels[lab] = 0
                    sentences.append(_fill(rng, DEVICE_NEGATIVE if device else NEGATIVE, term))
                elif rng.random() < config.history_rate:
                    sentences.append(_fill(rng, HISTORY, term))  # history only: not a current finding
            if schema.no_finding:
                blocking = [
                    v for k, v in labels.items() if k not in schema.not_blocking_no_finding and v in (1, -1)
                ]
                if not blocking:
                    labels[schema.no_finding] = 1
            normal = CXR_NORMAL if config.modality == "cxr" else CT_NORMAL
            k = int(rng.integers(1, 4))
            sentences += [str(x) for x in rng.choice(normal, size=k, replace=False)]
            rng.shuffle(sentences)
            text = _render(rng, str(SITES[site]["style"]), sentences, labels, schema)
            reports.append(
                Report(
                    id=f"{pid}-s{s}",
                    patient_id=pid,
                    text=text,
                    sections={},
                    attrs={"sex": sex, "age": age, "site": site},
                    labels=labels,
                )
            )
    return reports


def _rate(base: float, site: str, age: int, frailty: float, label: str) -> float:
    r = base * float(SITES[site]["shift"]) * frailty  # type: ignore[arg-type]
    if label in AGE_RELATED:
        r *= 0.5 + (age - 18) / 60
    return min(r, 0.95)


def _fill(rng: np.random.Generator, templates: tuple[str, ...], term: str) -> str:
    t = str(rng.choice(templates))
    loc = str(rng.choice(LOCATIONS))
    return _capital(t.format(t=term, T=_capital(term), loc=loc))


def _capital(s: str) -> str:
    return s[:1].upper() + s[1:]


def _render(
    rng: np.random.Generator, style: str, sentences: list[str], labels: dict[str, int], schema: LabelSchema
) -> str:
    if style == "terse":
        return " ".join(_capital(s.removeprefix("There is ")) for s in sentences)
    if style == "narrative":
        return "Comparison is made with the prior study. " + " ".join(sentences)
    # "sections": the findings, then an impression that restates the first positive finding or says normal
    positives = [k for k, v in labels.items() if v == 1 and k != schema.no_finding]
    if positives:
        impression = "Abnormal study, see findings." if rng.random() < 0.5 else "Findings as above."
    else:
        impression = (
            "No acute cardiopulmonary process." if schema.name == "chexpert14" else "No acute pathology."
        )
    return f"FINDINGS: {' '.join(sentences)} IMPRESSION: {impression}"
