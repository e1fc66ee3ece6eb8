"""A synthetic corpus in MIMIC-CXR's layout, at MIMIC-CXR's size and shape.

``write_mimic_cxr(MimicSynthConfig(n_patients=65_379, n_studies=227_835), out)`` writes

- ``out/files/pXX/pXXXXXXXX/sXXXXXXXX.txt``: one free-text report per study, with the real reports'
  headers (``FINAL REPORT``, ``EXAMINATION``, most with ``INDICATION``, some with ``TECHNIQUE`` and
  ``COMPARISON``), then ``FINDINGS`` and ``IMPRESSION`` (80 %), ``IMPRESSION`` only (15 %) or neither
  heading (5 %: the reader then keeps the whole text, as it does for the real ones);
- ``out/mimic-cxr-2.0.0-chexpert.csv``: ``subject_id, study_id`` and the 14 CheXpert labels in the real
  file's (alphabetical) column order, cells ``1.0`` / ``0.0`` / ``-1.0`` / blank (not mentioned).

Text and labels come from the same model as :mod:`dprad.data.synth` (its finding phrasings, sentence
templates, prevalences, chronic findings that persist over a patient's studies, age-related findings,
negation, uncertainty and history-only mentions); a label is the generator's truth for its sentence
(positive 1.0, uncertain -1.0, negated 0.0, not mentioned blank; ``No Finding`` 1.0 when nothing blocks it).
The random draws are made in blocks (the per-sentence draws of :func:`dprad.data.synth.generate_reports`
would take minutes at this size), so the corpus is not the table generator's corpus for the same seed;
it is a pure function of the config all the same, and draws from its own seed stream.

Studies per patient: every patient has one study, and the rest are shared out with a multinomial over
per-patient Gamma(0.35) rates: a negative-binomial-like count, skewed like MIMIC-CXR's, summing exactly to
``n_studies``. Measured at MIMIC-CXR's size (65,379 patients, 227,835 studies): 48 % of patients have one
study, 63 % one or two, median 2, 8 % ten or more, at most 71.

Report length (findings + impression, the text the reader keeps): target median 55 words, right-skewed.
Why: MIMIC-CXR's findings + impression are about 50-60 words at the median with a right-skewed tail; the
nearest real corpus at hand, IU X-ray (``indiana_reports.csv``: 3,826 reports with findings or impression),
measures median 34 words, mean 38, p90 63 (1.85 x median), p99 109 (3.2 x), max 230, log-sd 0.51. So the
shape is IU X-ray's and the scale MIMIC-CXR's. Each study draws a target from a log-normal (median 48,
log-sd 0.51) and its findings are padded with normal-anatomy sentences up to it; a report whose findings
alone are longer keeps them all, which lifts the low end. Measured on 20,909 generated studies (the text
the reader keeps): median 55 words, mean 62, p10 34, p90 98 (1.8 x median), p99 164 (3.0 x), max about 300.

Ids: subject ids are unique 8-digit numbers from 10000000 (``p10`` ... ``p18``), study ids unique
8-digit numbers from 50000000, shuffled over studies; the tree is written to a hidden temporary folder
beside ``out`` and renamed onto ``out`` at the end, so a killed run leaves no half tree under that name.
Files are written as they are generated and the CSV is streamed: MIMIC-CXR's size took 45 s wall and
180 MB peak RSS (``dprad synth --layout mimic-cxr --patients 65379 --studies 227835``, 2 shared CPU cores).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dprad.data.schemas import CHEXPERT14
from dprad.data.synth import (
    CHRONIC,
    CXR_PREVALENCE,
    CXR_TERMS,
    DEVICE_NEGATIVE,
    DEVICE_POSITIVE,
    HISTORY,
    LOCATIONS,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    _capital,
    _rate,
)
from dprad.errors import DpradError

CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
CSV_LABELS = tuple(sorted(CHEXPERT14.labels))  # the real file's column order
CSV_VALUE = {1: "1.0", 0: "0.0", -1: "-1.0"}
MIMIC_PATIENTS, MIMIC_STUDIES = 65_379, 227_835
MIMIC_STREAM = 0x4D494D43  # "MIMC": this layout's own seed stream
MAX_IDS = 9_000_000  # 8-digit ids from 10000000 (subjects) and 50000000 (studies)

EXAMINATIONS = (
    "CHEST (PA AND LAT)",
    "CHEST (PORTABLE AP)",
    "CHEST (PA AND LAT)",
    "CHEST (SINGLE VIEW)",
    "CHEST PORT. LINE PLACEMENT",
)
SYMPTOMS = (
    "cough",
    "shortness of breath",
    "chest pain",
    "fever and cough",
    "hypoxia",
    "dyspnea on exertion",
    "weakness",
    "tachycardia",
    "sepsis, evaluate for source",
    "preoperative evaluation",
    "evaluate for interval change",
    "fall, chest wall pain",
    "productive cough for one week",
    "new oxygen requirement",
)
TECHNIQUES = (
    "Chest PA and lateral",
    "Portable AP upright view of the chest",
    "Single frontal view of the chest",
    "PA and lateral views of the chest",
)
COMPARISONS = ("___", "None.", "Chest radiograph from ___.", "Prior study of ___.", "___ and ___.")
# normal-anatomy sentences that pad findings to the drawn length: no finding's phrasing appears in them
PADDING = (
    "The lungs are clear.",
    "The hila are unremarkable.",
    "The cardiomediastinal contours are within normal limits.",
    "Heart size is normal.",
    "The aorta is mildly tortuous.",
    "The trachea is midline.",
    "Osseous structures are grossly intact.",
    "The visualized upper abdomen is unremarkable.",
    "The lungs are well expanded.",
    "Pulmonary vasculature is within normal limits.",
    "The costophrenic angles are sharp.",
    "The diaphragms are well defined bilaterally.",
    "There is mild degenerative change of the thoracic spine.",
    "Soft tissues of the chest wall are unremarkable.",
    "The mediastinal contours are stable compared to the prior study.",
    "Lung volumes are slightly low, which accentuates the bronchovascular markings.",
    "The patient is rotated slightly to the right, limiting assessment of the mediastinum.",
    "Calcification of the aortic knob is noted.",
    "Surgical clips are seen in the right upper quadrant.",
    "Clips project over the left axilla from prior lymph node dissection.",
    "Mild elevation of the right hemidiaphragm is unchanged.",
    "The hilar contours are normal in size and configuration.",
    "There is no free air beneath the diaphragms.",
    "Both lungs are hyperinflated with flattening of the diaphragms.",
    "The bony thorax is demineralized.",
    "Overlying EKG leads obscure part of the left hemithorax.",
    "Granulomatous calcification is seen in the right hilum.",
    "The lateral view confirms the appearance on the frontal view.",
    "Evaluation of the lung apices is limited by overlying soft tissue.",
    "The upper lungs are clear on this single view.",
    "Compared to the prior study, there is no relevant change.",
    "Thoracic kyphosis is exaggerated, limiting the lateral view.",
    "Dense breast tissue projects over both lower lungs.",
    "Right-sided aortic arch is again seen, a normal variant.",
    "The study is slightly underpenetrated, which limits detail at the bases.",
    "Cervical spine fusion hardware is partially imaged.",
)
PADDING_WORDS = tuple(len(s.split()) for s in PADDING)
NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute intrathoracic process.",
    "Normal chest radiograph.",
    "No acute cardiopulmonary abnormality.",
    "No radiographic evidence of acute disease.",
)

# uniforms per study: 6 per finding, then the layout, the headers, the impression, padding order, shuffle
_PER_LABEL = 6
_N_LABELS = len(CXR_TERMS)
_HEAD = _PER_LABEL * _N_LABELS
_LAYOUT, _EXAM, _IND, _SYM, _TECH, _TECH_K, _COMP, _COMP_K, _IMP, _IND_FORM = range(_HEAD, _HEAD + 10)
_PAD = _HEAD + 10
_SHUF = _PAD + len(PADDING)
_WIDTH = _SHUF + _N_LABELS + len(PADDING)
_BLOCK = 1024  # patients per block of draws


@dataclass(frozen=True)
class MimicSynthConfig:
    n_patients: int = 1000
    n_studies: int | None = None  # default: MIMIC-CXR's ratio, 227,835 / 65,379 per patient
    seed: int = 0
    prevalence: Mapping[str, float] = field(default_factory=dict)  # overrides of CXR_PREVALENCE
    uncertain_rate: float = 0.15
    negation_rate: float = 0.3
    history_rate: float = 0.08
    # the padding target's log-normal: median 48 gives a measured median of 55 words (module docstring)
    median_words: float = 48.0
    words_sigma: float = 0.51  # IU X-ray's log-sd of findings + impression words, measured

    @property
    def studies(self) -> int:
        if self.n_studies is not None:
            return self.n_studies
        return max(self.n_patients, round(self.n_patients * MIMIC_STUDIES / MIMIC_PATIENTS))


@dataclass(frozen=True)
class Study:
    subject_id: int
    study_id: int
    text: str  # the whole report file
    labels: dict[str, int]  # CheXpert convention: 1 / 0 / -1, absent = not mentioned


@dataclass(frozen=True)
class MimicCorpus:
    root: Path
    patients: int
    studies: int


def check_config(config: MimicSynthConfig) -> None:
    """ValueError naming the option at fault (the command turns it into a one-line error)."""
    if config.n_patients < 1:
        raise ValueError(f"--patients {config.n_patients} must be at least 1")
    if config.studies < config.n_patients:
        raise ValueError(f"--studies {config.studies} must be at least --patients ({config.n_patients})")
    if config.studies > MAX_IDS:
        raise ValueError(f"--studies {config.studies} is more than the {MAX_IDS:,} 8-digit study ids")
    unknown = set(config.prevalence) - set(CXR_TERMS)
    if unknown:
        raise ValueError(f"--prevalence given for labels not in chexpert14: {sorted(unknown)}")


def studies_per_patient(n_patients: int, n_studies: int, rng: np.random.Generator) -> np.ndarray:
    """One study each, the rest shared out over Gamma(0.35) rates: skewed like MIMIC-CXR's, exact total."""
    rates = rng.gamma(0.35, 1.0, n_patients)
    extra = rng.multinomial(n_studies - n_patients, rates / rates.sum())
    return 1 + extra


def _unique_ids(n: int, start: int, rng: np.random.Generator) -> np.ndarray:
    """n sorted unique ids in [start, start + MAX_IDS): random gaps averaging MAX_IDS / n."""
    gaps = rng.integers(1, max(2, 2 * MAX_IDS // n), n)
    ids = start + np.cumsum(gaps)
    return np.minimum(ids, start + MAX_IDS - n + np.arange(n))  # stays 8-digit whatever the gaps


def generate_studies(config: MimicSynthConfig = MimicSynthConfig()) -> Iterator[Study]:
    """The corpus's studies, patient by patient, each patient's studies by study id; deterministic."""
    check_config(config)
    rng = np.random.default_rng([MIMIC_STREAM, config.seed])
    prevalence = {**CXR_PREVALENCE, **config.prevalence}
    counts = studies_per_patient(config.n_patients, config.studies, rng)
    subjects = _unique_ids(config.n_patients, 10_000_000, rng)
    study_ids = rng.permutation(_unique_ids(config.studies, 50_000_000, rng))
    labels = list(CXR_TERMS)
    first = 0
    for lo in range(0, config.n_patients, _BLOCK):
        hi = min(lo + _BLOCK, config.n_patients)
        n = int(counts[lo:hi].sum())
        u_patient = rng.random((hi - lo, _N_LABELS + 1)).tolist()
        ages = np.clip(rng.normal(62, 16, hi - lo), 18, 98).astype(int).tolist()
        frailty = rng.gamma(2.0, 0.5, hi - lo).tolist()
        targets = rng.lognormal(np.log(config.median_words), config.words_sigma, n).tolist()
        u_study = rng.random((n, _WIDTH)).tolist()
        k = 0
        for i in range(hi - lo):
            up, age, frail = u_patient[i], ages[i], frailty[i]
            sex = "F" if up[-1] < 0.5 else "M"
            rates = [_rate(prevalence[lab], "site_a", age, frail, lab) for lab in labels]
            chronic = [lab in CHRONIC and up[j] < rates[j] for j, lab in enumerate(labels)]
            c = int(counts[lo + i])
            ids = sorted(study_ids[first : first + c].tolist())
            first += c
            for sid in ids:
                text, truth = _study(u_study[k], targets[k], labels, rates, chronic, sex, config)
                k += 1
                yield Study(int(subjects[lo + i]), sid, text, truth)


def _study(
    u: list[float],
    target: float,
    labels: list[str],
    rates: list[float],
    chronic: list[bool],
    sex: str,
    config: MimicSynthConfig,
) -> tuple[str, dict[str, int]]:
    truth: dict[str, int] = {}
    said: list[str] = []  # labelled sentences (and history-only mentions)
    strong: list[str] = []  # positive or uncertain: what an impression restates
    for j, lab in enumerate(labels):
        u0, u1, u2, u3, u4, u5 = u[_PER_LABEL * j : _PER_LABEL * (j + 1)]
        terms = CXR_TERMS[lab]
        term = terms[int(u3 * len(terms))]
        device = lab == "Support Devices"
        templates: tuple[str, ...]
        if chronic[j] or (lab not in CHRONIC and u0 < rates[j]):
            if not device and u1 < config.uncertain_rate:
                truth[lab], templates = -1, UNCERTAIN
            else:
                truth[lab], templates = 1, DEVICE_POSITIVE if device else POSITIVE
        elif u1 < config.negation_rate:
            truth[lab], templates = 0, DEVICE_NEGATIVE if device else NEGATIVE
        elif u2 < config.history_rate:
            templates = HISTORY
        else:
            continue
        loc = LOCATIONS[int(u5 * len(LOCATIONS))]
        sentence = _capital(templates[int(u4 * len(templates))].format(t=term, T=_capital(term), loc=loc))
        said.append(sentence)
        if truth.get(lab) in (1, -1):
            strong.append(sentence)
    if not any(v in (1, -1) for k, v in truth.items() if k not in CHEXPERT14.not_blocking_no_finding):
        truth["No Finding"] = 1
    layout = "both" if u[_LAYOUT] < 0.80 else ("impression" if u[_LAYOUT] < 0.95 else "neither")
    impression = strong[:2] if strong else [NORMAL_IMPRESSIONS[int(u[_IMP] * len(NORMAL_IMPRESSIONS))]]
    body = said if layout != "both" else said + impression
    words = sum(len(s.split()) for s in body)
    pad_order = sorted(range(len(PADDING)), key=lambda p: u[_PAD + p])
    for p in pad_order:
        if words >= target:
            break
        said.append(PADDING[p])
        words += PADDING_WORDS[p]
    keys = u[_SHUF : _SHUF + len(said)]
    findings = [s for _, s in sorted(zip(keys, said, strict=True), key=lambda ks: ks[0])]
    return _layout_text(u, layout, findings, impression, sex), truth


def _layout_text(u: list[float], layout: str, findings: list[str], impression: list[str], sex: str) -> str:
    lines = ["                                 FINAL REPORT"]
    lines.append(f" EXAMINATION:  {EXAMINATIONS[int(u[_EXAM] * len(EXAMINATIONS))]}")
    if u[_IND] < 0.9:
        symptom = SYMPTOMS[int(u[_SYM] * len(SYMPTOMS))]
        who = f"___{sex}" if u[_IND_FORM] < 0.6 else f"___-year-old {'woman' if sex == 'F' else 'man'}"
        lines += ["", f" INDICATION:  {who} with {symptom}"]
    if u[_TECH] < 0.5:
        lines += ["", f" TECHNIQUE:  {TECHNIQUES[int(u[_TECH_K] * len(TECHNIQUES))]}"]
    if u[_COMP] < 0.7:
        lines += ["", f" COMPARISON:  {COMPARISONS[int(u[_COMP_K] * len(COMPARISONS))]}"]
    if layout == "both":
        lines += ["", " FINDINGS:", "", *_wrap(findings), "", " IMPRESSION:", "", *_wrap(impression)]
    elif layout == "impression":
        lines += ["", " IMPRESSION:", "", *_wrap(findings)]
    else:
        lines += ["", *_wrap(findings)]
    return "\n".join(lines) + "\n"


def _wrap(sentences: list[str], width: int = 78) -> list[str]:
    """Lines of at most ``width`` characters, each starting with a space, as the real reports are wrapped."""
    lines: list[str] = []
    line = ""
    for word in " ".join(sentences).split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = ""
        line = f"{line} {word}"
    if line:
        lines.append(line)
    return lines


def csv_row(study: Study) -> str:
    cells = (CSV_VALUE[v] if (v := study.labels.get(lab)) is not None else "" for lab in CSV_LABELS)
    return f"{study.subject_id},{study.study_id},{','.join(cells)}\n"


def write_mimic_cxr(config: MimicSynthConfig, out: str | Path) -> MimicCorpus:
    """Write the tree and the labels CSV under ``out`` (a new or empty folder), atomically by rename."""
    out = Path(out)
    check_config(config)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DpradError(f"--out {out}: already exists and is not an empty folder; give a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        files = tmp / "files"
        files.mkdir()
        groups: set[str] = set()
        subject_dir, last_subject, patients, studies = "", -1, 0, 0
        with open(tmp / CHEXPERT_CSV, "w", encoding="utf-8", newline="") as csv:
            csv.write(f"subject_id,study_id,{','.join(CSV_LABELS)}\n")
            for study in generate_studies(config):
                if study.subject_id != last_subject:
                    subject = str(study.subject_id)
                    group = f"{files}/p{subject[:2]}"
                    if group not in groups:
                        os.mkdir(group)
                        groups.add(group)
                    subject_dir = f"{group}/p{subject}"
                    os.mkdir(subject_dir)
                    last_subject, patients = study.subject_id, patients + 1
                with open(f"{subject_dir}/s{study.study_id}.txt", "w", encoding="utf-8") as fh:
                    fh.write(study.text)
                csv.write(csv_row(study))
                studies += 1
        if out.exists():
            out.rmdir()  # empty: checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MimicCorpus(root=out, patients=patients, studies=studies)
