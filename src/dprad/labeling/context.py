"""A small ConText-style engine: find mentions sentence by sentence, then decide whether each is negated,
uncertain, or historical / hypothetical from trigger phrases in the mention's clause.

CheXpert's conventions on top: a label's value is positive if any mention is positive, else uncertain
if any is uncertain, else negative if any is negated; a negated uncertainty ("cannot exclude") is
uncertain. Why not medspaCy's ConText: see ``rules.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# ---- clause and sentence boundaries -------------------------------------------------------------------
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Za-z0-9])|\n+|(?<=\.)(?=[A-Z][a-z])")
TERMINATOR = re.compile(
    r"\b(?:but|however|although|though|except|whereas|while|yet|apart from|aside from|which|"
    r"there (?:is|are|has been|have been)|with|otherwise|consistent with|compatible with)\b|[;:]"
)

# ---- triggers -----------------------------------------------------------------------------------------
UNCERTAIN_PRE = re.compile(
    r"\b(?:possible|possibly|probable|probably|may|might|could|likely|suspect\w*|suspicious|concern\w*|"
    r"suggest\w*|question\w*|cannot (?:be )?exclude\w*|can not (?:be )?exclude\w*|cannot rule out|"
    r"can not rule out|not (?:be )?excluded|versus|vs|differential|consider\w*|equivocal|indeterminate|"
    r"uncertain|presum\w*|perhaps|either|r/o|rule out|evaluate for|assess for)\b"
)
UNCERTAIN_POST = re.compile(
    r"^\W*(?:\S+\s+){0,6}?(?:cannot be excluded|can not be excluded|not (?:be )?excluded|(?:is|are) suspected|"
    r"(?:is|are) (?:possible|questioned|likely|not ruled out)|may be present|could be present|versus|vs\b|"
    r"(?:is|are) (?:also )?considered)"
)
NEGATION_PRE = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|resolved|resolution of|resolving|"
    r"removal of|removed|clear of|rather than|ruled out|neither|nor|none|never|normal)\b"
)
NEGATION_POST = re.compile(
    r"^\W*(?:\S+\s+){0,8}?(?:(?:is|are|was|were|has been|have been)\s+)?(?:not|no longer)\s+"
    r"(?:\w+\s+)?(?:seen|identified|present|observed|detected|noted|visualized|visible|appreciated|evident|"
    r"demonstrated|monitored|found|seen)\b|"
    r"^\W*(?:\S+\s+){0,4}?(?:has|have)?\s*(?:resolved|cleared|been removed)\b|"
    r"^\W*(?:\S+\s+){0,3}?(?:is|are|was|were) (?:absent|negative|resolved)\b"
)
# uncertainty words that are only adjectives when a negation governs them: "no ... suspicious opacity",
# "no ... to suggest pneumonia" are negative, as in CheXpert
UNCERTAIN_WEAK = re.compile(
    r"\b(?:suspect\w*|suspicious|suggest\w*|concern\w*|question\w*|evaluate for|assess for)\b"
)
HISTORY_PRE = re.compile(
    r"\b(?:history of|hx of|h/o|previous|prior|known history|in the past|clinical history|indication)\b"
)


class Status(int, Enum):
    NEGATIVE = 0
    POSITIVE = 1
    UNCERTAIN = -1


@dataclass(frozen=True)
class Mention:
    label: str
    sentence: int
    start: int
    end: int
    text: str
    status: Status | None  # None: historical / hypothetical, not a current finding


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE.split(text) if s and s.strip()]


def clause_bounds(sentence: str, start: int, end: int) -> tuple[int, int]:
    """The clause around [start, end): from the last terminator before it to the first one after it."""
    left = 0
    for m in TERMINATOR.finditer(sentence, 0, start):
        left = m.end()
    right_m = TERMINATOR.search(sentence, end)
    return left, right_m.start() if right_m else len(sentence)


def classify(sentence: str, start: int, end: int) -> Status | None:
    left, right = clause_bounds(sentence, start, end)
    pre, post = sentence[left:start], sentence[end:right]
    neg = NEGATION_PRE.search(pre)
    unc = UNCERTAIN_PRE.search(pre)
    if (
        unc
        and neg
        and neg.start() < unc.start()
        and all(UNCERTAIN_WEAK.fullmatch(u.group(0)) for u in UNCERTAIN_PRE.finditer(pre))
    ):
        return Status.NEGATIVE
    if unc or UNCERTAIN_POST.search(post):
        return Status.UNCERTAIN
    if NEGATION_PRE.search(pre) or NEGATION_POST.search(post):
        return Status.NEGATIVE
    if HISTORY_PRE.search(sentence[:start]):  # history reaches across clauses: "Clinical history: X, ..."
        return None
    return Status.POSITIVE


def combine(statuses: list[Status]) -> Status | None:
    """Positive beats uncertain beats negative; no mention -> None (not mentioned)."""
    if Status.POSITIVE in statuses:
        return Status.POSITIVE
    if Status.UNCERTAIN in statuses:
        return Status.UNCERTAIN
    if Status.NEGATIVE in statuses:
        return Status.NEGATIVE
    return None
