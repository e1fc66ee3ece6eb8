"""The rule teacher: mention vocabularies per label + the ConText-style engine in ``context.py``.

Why our own engine rather than medspaCy's ConText: the trigger logic needed here is about eighty lines,
runs with nothing but ``re``, and labels 10,000 reports in seconds; medspaCy brings spaCy and its model
pipeline for the same negation / uncertainty / history decisions (measured in the issue note).

Vocabularies follow the published CheXpert labeller's observations and CT-RATE's label definitions; they
were written from radiology usage, not fitted to the benchmark files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dprad.data.schemas import CHEXPERT14, CTRATE18, LabelSchema
from dprad.errors import DpradError
from dprad.labeling.context import Mention, Status, classify, combine, sentences


@dataclass(frozen=True)
class LabelRule:
    label: str
    mentions: tuple[str, ...]  # regular expressions (lower-case text)
    veto: tuple[str, ...] = ()  # a mention is dropped when one of these occurs in its clause
    veto_window: int = 40  # characters either side of the mention searched for a veto


@dataclass(frozen=True)
class RuleSet:
    schema: LabelSchema
    rules: tuple[LabelRule, ...]
    # abnormalities outside the schema that still make a report abnormal (block No Finding)
    other_findings: tuple[str, ...] = ()

    # compiled once at construction, read-only (a frozen value holds no mutable cache)
    _compiled: Mapping[str, tuple[re.Pattern[str], re.Pattern[str] | None, int]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        out: dict[str, tuple[re.Pattern[str], re.Pattern[str] | None, int]] = {}
        for r in self.rules:
            veto = re.compile("|".join(f"(?:{v})" for v in r.veto)) if r.veto else None
            out[r.label] = (re.compile(r"\b(?:" + "|".join(r.mentions) + r")"), veto, r.veto_window)
        if self.other_findings:
            out["__other__"] = (re.compile(r"\b(?:" + "|".join(self.other_findings) + r")"), None, 0)
        object.__setattr__(self, "_compiled", MappingProxyType(out))

    def compiled(self) -> Mapping[str, tuple[re.Pattern[str], re.Pattern[str] | None, int]]:
        return self._compiled


def find_mentions(text: str, rules: RuleSet) -> list[Mention]:
    out: list[Mention] = []
    low = " ".join(text.lower().split())
    for si, sent in enumerate(sentences(low)):
        for label, (pattern, veto, window) in rules.compiled().items():
            for m in pattern.finditer(sent):
                if veto is not None:
                    lo, hi = max(0, m.start() - window), min(len(sent), m.end() + window)
                    if veto.search(sent[lo:hi]):
                        continue
                out.append(
                    Mention(label, si, m.start(), m.end(), m.group(0), classify(sent, m.start(), m.end()))
                )
    return out


def label_text(text: str, rules: RuleSet) -> dict[str, int]:
    """CheXpert-style labels for one report: 1 / 0 / -1, absent = not mentioned."""
    mentions = find_mentions(text, rules)
    by_label: dict[str, list[Status]] = {}
    for m in mentions:
        if m.status is not None:
            by_label.setdefault(m.label, []).append(m.status)
    labels: dict[str, int] = {}
    for lab in rules.schema.labels:
        v = combine(by_label.get(lab, []))
        if v is not None:
            labels[lab] = int(v)
    nf = rules.schema.no_finding
    if nf is not None:
        labels.pop(nf, None)
        blocking = [
            k for k, v in labels.items() if v in (1, -1) and k not in rules.schema.not_blocking_no_finding
        ]
        other = combine(by_label.get("__other__", []))
        if not blocking and other not in (Status.POSITIVE, Status.UNCERTAIN):
            labels[nf] = 1
    return labels


# ---------------------------------------------------------------------------------------------------------
CHEXPERT_RULES = RuleSet(
    schema=CHEXPERT14,
    rules=(
        LabelRule(
            "Enlarged Cardiomediastinum",
            (
                r"(?:widen\w*|enlarg\w*|prominen\w*|wide) (?:of )?(?:the )?(?:superior )?mediastin\w*",
                r"mediastin\w* (?:contour |silhouette |shadow )?(?:is |are |appears )?(?:\w+ )?(?:widen\w*|enlarg\w*|prominen\w*)",
                r"cardiomediastinal (?:silhouette|contour)s? (?:is |are |appears )?(?:\w+ )?(?:enlarg\w*|widen\w*|prominen\w*)",
                r"enlarged cardiomediastin\w*",
                r"(?:enlarg\w*|prominen\w*|full(?:ness)?) (?:of )?(?:the )?(?:right |left |bilateral )?hil(?:a|um|ar)\b",
                r"hil(?:a|um|ar) (?:\w+ )?(?:are |is )?(?:enlarg\w*|prominen\w*|fullness)",
                r"(?:enlarg\w*|prominen\w*|dilat\w*) (?:of )?(?:the )?(?:central )?pulmonary arter\w*",
                r"pulmonary arter\w* (?:are |is )?(?:\w+ )?(?:enlarg\w*|prominen\w*|dilat\w*)",
                r"aortic aneurysm",
                r"aneurysm\w*",
                r"pericardial effusion",
                r"lymphadenopathy",
                r"adenopathy",
                r"enlarged (?:\w+ )?lymph nodes?",
            ),
        ),
        LabelRule(
            "Cardiomegaly",
            (
                r"cardiomegaly",
                r"cardiac enlargement",
                r"enlarge\w* (?:of )?(?:the )?(?:heart|cardiac)",
                r"(?:heart|cardiac) (?:size |silhouette |shadow |contour )?(?:is |are |appears |remains )?(?:\w+ )?(?:\w+ )?(?:enlarg\w*|increased|large|borderline|prominent)",
                r"enlarged (?:heart|cardiac)",
                r"(?:borderline|mildly enlarged|upper limits of normal) (?:heart|cardiac)",
                r"(?:heart|cardiac) (?:size )?(?:is )?(?:at the )?upper limits? of normal",
            ),
            veto=(r"\b(?:normal|not)\b [^.]{0,12}(?:enlarg|size)",),
        ),
        LabelRule(
            "Lung Opacity",
            (
                r"opacit\w*",
                r"opacification",
                r"infiltrat\w*",
                r"airspace (?:disease|process)",
                r"air space (?:disease|process)",
                r"densit(?:y|ies)",
                r"interstitial (?:markings?|prominence|opacit\w*|disease|changes?|pattern|thickening|lung disease)",
                r"(?:increased|prominent|coarse\w*|chronic) (?:interstitial |lung |pulmonary |bronchovascular )?markings?",
                r"fibros\w*",
                r"fibrotic",
                r"scar\w*",
                r"cicatri\w*",
                r"haz(?:y|iness)",
                r"ground[- ]glass",
                r"reticul\w*",
                r"peribronchial (?:thickening|cuffing)",
                r"bronchovascular (?:crowding|thickening)",
                r"streaky",
            ),
            veto=(
                r"pleural (?:scar|thicken)",
                r"apical (?:pleural )?(?:cap|scar)",
                r"bone|breast|soft tissue|nipple",
            ),
        ),
        LabelRule(
            "Lung Lesion",
            (
                r"nodul\w*",
                r"mass(?:es)?\b",
                r"lesions?\b",
                r"cavit\w*",
                r"cyst\w*",
                r"neoplasm\w*",
                r"tumou?r\w*",
                r"carcinoma",
                r"malignan\w*",
                r"metasta\w*",
            ),
            veto=(
                r"calcifi\w*",
                r"granulom\w*",
                r"breast|nipple|osseous|bone|lytic|sclerotic|skin|soft tissue|liver|hepatic|renal|thyroid",
            ),
        ),
        LabelRule(
            "Edema",
            (
                r"edema",
                r"oedema",
                r"(?:vascular|venous) congestion",
                r"congestion",
                r"congestive heart failure",
                r"heart failure",
                r"\bchf\b",
                r"cephalization",
                r"kerley",
                r"vascular (?:redistribution|engorgement)",
            ),
            veto=(r"soft tissue", r"subcutaneous"),
        ),
        LabelRule("Consolidation", (r"consolidat\w*",)),
        LabelRule("Pneumonia", (r"pneumonia\w*", r"pneumonitis", r"infecti\w*", r"bronchopneumonia")),
        LabelRule("Atelectasis", (r"atelecta\w*", r"collapse\w*")),
        LabelRule("Pneumothorax", (r"pneumothora\w*", r"hydropneumothora\w*", r"hemopneumothora\w*")),
        LabelRule(
            "Pleural Effusion",
            (
                r"pleural effusions?",
                r"effusions?\b",
                r"pleural fluid",
                r"hydropneumothora\w*",
                r"fluid (?:in|within) the (?:\w+ )?pleural",
            ),
            veto=(r"pericardial",),
        ),
        LabelRule(
            "Pleural Other",
            (
                r"pleural (?:thickening|plaques?|scar\w*|calcifi\w*|reaction|fibrosis)",
                r"pleural[- ]parenchymal scar\w*",
                r"fibrothorax",
                r"(?:thicken\w*|calcifi\w*|scarring) of the pleura",
                r"apical (?:pleural )?cap",
            ),
        ),
        LabelRule("Fracture", (r"fractur\w*", r"\bfx\b")),
        LabelRule(
            "Support Devices",
            (
                r"pacemaker",
                r"pacer",
                r"\bicd\b",
                r"defibrillator",
                r"(?:central|venous|picc|jugular|subclavian|swan|port|arterial|midline) (?:\w+ )?(?:line|catheter)",
                r"\bpicc\b",
                r"catheter\w*",
                r"(?:endotracheal|tracheostomy|feeding|chest|nasogastric|enteric|orogastric|ng|og|et|dobhoff|gastric) tubes?",
                r"\btubes?\b",
                r"stents?\b",
                r"port-?a-?cath",
                r"\bport\b",
                r"(?:cardiac |loop )?(?:recorder|monitor device)",
                r"(?:valve|valvular) (?:replacement|prosthe\w*)",
                r"prosthetic valve",
                r"leads?\b(?! to)",
                r"(?:medical |implanted |cardiac )device",
                r"vp shunt",
                r"shunt",
                r"generator",
                r"(?:neuro|spinal cord )?stimulator",
                r"tip (?:\w+ ){0,5}(?:svc|superior vena cava|cavoatrial|cavo-atrial|caval[- ]atrial|right atrium|atriocaval)",
            ),
            veto=(r"\bno\b [^.]{0,30}device", r"tube feeding"),
        ),
    ),
    other_findings=(
        r"granulom\w*",
        r"calcifi\w*",
        r"calcinosis",
        r"degenerat\w*",
        r"spondylo\w*",
        r"osteophyt\w*",
        r"scoliosis",
        r"kyphos\w*",
        r"emphysema\w*",
        r"\bcopd\b",
        r"chronic obstructive",
        r"hyperinflat\w*",
        r"hyperexpan\w*",
        r"overinflat\w*",
        r"hernia\w*",
        r"atheroscleros\w*",
        r"tortuous\w*",
        r"tortuosity",
        r"ectatic",
        r"eventration",
        r"elevat\w* (?:of )?(?:the )?(?:right |left )?(?:hemi)?diaphragm\w*",
        r"(?:hemi)?diaphragm\w* (?:is |are )?elevat\w*",
        r"deformit\w*",
        r"sternotomy",
        r"(?:surgical |vascular )?clips?\b",
        r"postoperative",
        r"post-?surgical",
        r"cholecystectomy",
        r"healed",
        r"lucenc\w*",
        r"low lung volumes?",
        r"hypoinflat\w*",
        r"hypoventilat\w*",
        r"(?:poor|shallow) inspiration",
        r"limited (?:by|evaluation|exam)",
        r"suboptimal",
        r"rotated",
        r"nipple shadow",
        r"bulla\w*",
        r"blunt\w*",
        r"flatten\w*",
        r"osteopen\w*",
        r"arthrit\w*",
        r"wires?\b",
        r"sutures?\b",
        r"surgical",
        r"abnormal\w*",
        r"thicken\w*",
        r"mastectom\w*",
        r"pectus",
        r"foreign bod\w*",
        r"(?:right |left )?(?:hemi)?thorax (?:is )?(?:small|volume loss)",
        r"volume loss",
        r"bronchiectas\w*",
        r"shift\w*",
        r"dextro\w*",
    ),
)

_ARTERY = r"(?:aort\w*|(?<!coronary )arter(?:y|ies|ial)|vascular (?:structures?|walls?)|carotid\w*|subclavian|brachiocephalic|iliac)"
_CALC = r"(?:calcifi\w*|atherom\w*|atheroscl\w*|plaques?)"

CTRATE_RULES = RuleSet(
    schema=CTRATE18,
    rules=(
        LabelRule(
            "Medical material",
            (
                r"pacemaker",
                r"pacing (?:wire|lead)s?",
                r"stents?\b",
                r"catheter\w*",
                r"\bport\b",
                r"port catheter",
                r"(?:surgical |metallic |vascular )clips?",
                r"clips?\b",
                r"prosthe\w*",
                r"sternotomy",
                r"sternal (?:wires?|sutures?)",
                r"(?:surgical|medical|metallic|foreign) (?:material|body|bodies)",
                r"valve replacement",
                r"(?:chest |drainage |endotracheal |nasogastric |tracheostomy )tubes?",
                r"drain\w*",
                r"graft\w*",
                r"(?:cardiac |implanted )?device",
                r"\bicd\b",
                r"defibrillator",
                r"cabg",
                r"bypass",
                r"cerclage",
                r"wires?\b",
                r"sutures?\b",
            ),
            veto=(r"drainage (?:pattern|area)", r"lymphatic drain"),
        ),
        LabelRule(
            "Arterial wall calcification",
            (
                rf"{_ARTERY}[^.;]{{0,40}}{_CALC}",
                rf"{_CALC}[^.;]{{0,50}}{_ARTERY}",
                r"atheroscleros\w*",
                r"atherosclerotic",
            ),
        ),
        LabelRule(
            "Cardiomegaly",
            (
                r"cardiomegaly",
                r"cardiac enlargement",
                r"enlarge\w* (?:of )?(?:the )?heart",
                r"heart (?:size |dimensions? |contour )?(?:is |are |was |were )?(?:\w+ )?(?:enlarg\w*|increased)",
                r"(?:increased|enlarged) (?:heart|cardiac)",
                r"(?:cardiothoracic|cardio-thoracic) (?:index|ratio) (?:\w+ )?increased",
                r"increase in the cardiothoracic (?:index|ratio)",
                r"\bctr\b (?:is )?(?:\w+ )?increased",
                r"in favou?r of the heart",
            ),
            veto=(r"\bnormal\b",),
        ),
        LabelRule(
            "Pericardial effusion",
            (
                r"pericardial (?:effusion|fluid)",
                r"(?:effusion|fluid) (?:in|within) the pericard\w*",
                r"pericardial effusion-thickening",
                r"pericardial thickening-effusion",
            ),
        ),
        LabelRule(
            "Coronary artery wall calcification",
            (
                r"coronar\w*[^.;]{0,40}(?:calcifi\w*|atherom\w*|atheroscl\w*|plaques?)",
                r"(?:calcifi\w*|atherom\w*|atheroscl\w*|plaques?)[^.;]{0,40}coronar\w*",
            ),
        ),
        LabelRule(
            "Hiatal hernia",
            (
                r"hiat\w* hernia",
                r"hernia[^.;]{0,20}hiat\w*",
                r"herniat\w* of the stomach",
                r"paraesophageal hernia",
            ),
        ),
        LabelRule(
            "Lymphadenopathy",
            (
                r"lymphadenopath\w*",
                r"adenopath\w*",
                r"lymphadenomegal\w*",
                r"\blap\b",
                r"(?:enlarged|pathologic\w*|patholog\w* (?:size|sized|dimension\w*)|conglomerat\w*|bulky|increased) (?:\w+ )?(?:\w+ )?lymph nodes?",
                r"lymph nodes?[^.;]{0,80}(?:enlarg\w*|pathologic\w*|patholog\w* (?:size|dimension)|short axis|increased (?:in )?size|reaching|measuring|largest|\d+ ?x ?\d+ ?mm)",
            ),
        ),
        LabelRule("Emphysema", (r"emphysem\w*", r"bulla\w*", r"bullous", r"blebs?\b")),
        LabelRule("Atelectasis", (r"atelecta\w*", r"collapse\w*")),
        LabelRule(
            "Lung nodule",
            (r"nodul\w*", r"micronodul\w*", r"pulmonary (?:mass|lesion)", r"\bmass(?:es)?\b(?! effect)"),
            veto=(
                r"thyroid|liver|hepatic|renal|kidney|adrenal|breast|lymph|spleen|pancrea|calcified (?:granuloma|nodule)",
            ),
        ),
        LabelRule(
            "Lung opacity",
            (
                r"opacit\w*",
                r"ground[- ]glass",
                r"densit(?:y|ies) (?:increase\w*|areas?)",
                r"(?:increased|increase in) (?:\w+ )?densit\w*",
                r"infiltrat\w*",
                r"consolidat\w*",
            ),
            veto=(r"bone|osseous|sclerotic|breast|liver|hepatic|thyroid|fat\b",),
        ),
        LabelRule(
            "Pulmonary fibrotic sequela",
            (
                r"fibrot\w*",
                r"fibros\w*",
                r"sequela\w*",
                r"fibroatelecta\w*",
                r"(?:parenchymal |fibrous |linear )?bands?\b",
                r"scar\w*",
                r"traction",
            ),
            veto=(r"pleural (?:thickening|effusion)", r"(?:myocardial|liver|hepatic)"),
        ),
        LabelRule(
            "Pleural effusion",
            (
                r"pleural effusions?",
                r"(?:effusion|fluid)[^.;]{0,25}pleura\w*",
                r"pleural fluid",
                r"pleural effusion-thickening",
                r"pleural thickening-effusion",
                r"effusions?\b",
            ),
            veto=(r"pericard\w*",),
        ),
        LabelRule("Mosaic attenuation pattern", (r"mosaic",)),
        LabelRule(
            "Peribronchial thickening",
            (
                r"peribronch\w* (?:\w+ )?thicken\w*",
                r"bronch\w* wall thicken\w*",
                r"thicken\w* (?:of )?(?:the )?(?:peri)?bronch\w* wall\w*",
                r"peribronchial",
            ),
        ),
        LabelRule("Consolidation", (r"consolidat\w*",)),
        LabelRule("Bronchiectasis", (r"bronchiecta\w*",)),
        LabelRule(
            "Interlobular septal thickening",
            (
                r"(?:interlobular )?sept\w* thicken\w*",
                r"thicken\w* (?:of )?(?:the )?(?:interlobular )?sept\w*",
                r"interlobular sept\w*",
            ),
        ),
    ),
)

BUILTIN_RULES = {"chexpert14": CHEXPERT_RULES, "ctrate18": CTRATE_RULES}


def rules_for(schema: LabelSchema) -> RuleSet:
    """The built-in rules for CheXpert-14 / CT-RATE-18, or rules from a user schema's ``terms`` lists."""
    if schema.name in BUILTIN_RULES and BUILTIN_RULES[schema.name].schema.labels == schema.labels:
        return BUILTIN_RULES[schema.name]
    missing = [lab for lab in schema.labels if lab != schema.no_finding and not schema.terms.get(lab)]
    if missing:
        raise DpradError(
            f"schema '{schema.name}': the rule teacher needs 'terms' (phrases) for every label; missing: {', '.join(missing)}"
        )
    return RuleSet(
        schema=schema,
        rules=tuple(
            LabelRule(lab, tuple(_phrase(t) for t in schema.terms[lab]))
            for lab in schema.labels
            if lab != schema.no_finding
        ),
    )


def _phrase(term: str) -> str:
    """A user phrase as a regex: case-insensitive words, flexible whitespace, plural-tolerant ending."""
    words = [re.escape(w) for w in term.lower().split()]
    return r"\s+".join(words) + r"\w*"
