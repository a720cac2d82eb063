"""Evidence: the sentences of a dialogue that support a suggested code, for a coder to check.

Method (simple, explainable, no model): a code's *terms* are the content words of its official
description, its inclusion terms (``simple-icd-10-cm``) and those of its category, minus stop
words and ICD boilerplate ("unspecified", "other", ...). Words are compared by their first five
letters, so "diabetic" matches "diabetes" and "fractured" matches "fracture". A sentence is
evidence when it contains at least one term; the sentences with the most distinct terms are
shown (up to three per code). ``make bench`` measures how often the gold code of a dialogue
gets at least one highlighted sentence (stage ``app``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from icd10_coder.codes import description, normalize_code

STEM = 5
MAX_SENTENCES = 3
# Words every second code description has: they would highlight every dialogue.
BOILERPLATE = frozenset({"unspecified", "other", "specified", "without", "with", "due", "type", "site", "part",
                         "initial", "encounter", "subsequent", "sequela", "condition", "disease", "disorder",
                         "classified", "elsewhere", "nos", "not", "and", "the", "for", "from", "left", "right",
                         "bilateral", "unilateral", "region", "level", "use", "additional", "code", "status"})
_WORD = re.compile(r"[A-Za-z][A-Za-z]+")
# Sentence ends, and dialogue turns ("[doctor]:", "Doctor:", "**Patient:**") start new sentences.
_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+|(?=\[(?:doctor|patient)\])|(?=\*{0,2}(?:Doctor|Patient)\*{0,2}:)", re.I)


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    text: str


def _stems(text: str) -> set[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = (w.lower() for w in _WORD.findall(text))
    return {w[:STEM] for w in words if len(w) > 2 and w not in ENGLISH_STOP_WORDS and w not in BOILERPLATE}


@lru_cache(maxsize=4096)
def code_terms(code: str) -> frozenset[str]:
    """The stems a sentence must share with ``code`` to count as evidence."""
    import simple_icd_10_cm as cm

    canonical = normalize_code(code)
    if canonical is None:
        return frozenset()
    texts = [description(canonical) or ""]
    for item in (canonical, canonical[:3]):
        if cm.is_valid_item(item):
            texts += cm.get_inclusion_term(item) + [cm.get_description(item)]
    return frozenset(_stems(" ".join(texts)))


def sentences(dialogue: str) -> list[Sentence]:
    """Sentences and turns of a dialogue with their character offsets."""
    found, start = [], 0
    for match in [*_SPLIT.finditer(dialogue), None]:
        end = match.start() if match else len(dialogue)
        text = dialogue[start:end]
        if text.strip():
            lead = len(text) - len(text.lstrip())
            found.append(Sentence(start + lead, start + len(text.rstrip()), text.strip()))
        if match:
            start = match.end()
    return found


def evidence(dialogue: str, code: str, limit: int = MAX_SENTENCES) -> list[tuple[Sentence, list[str]]]:
    """Up to ``limit`` sentences supporting ``code`` (most distinct terms first), with the words that matched."""
    terms = code_terms(code)
    scored = []
    for index, sentence in enumerate(sentences(dialogue)):
        words = sorted({w for w in _WORD.findall(sentence.text) if w.lower()[:STEM] in terms and len(w) > 2
                        and w.lower() not in BOILERPLATE})
        hits = {w.lower()[:STEM] for w in words}
        if hits:
            scored.append((-len(hits), index, sentence, words))
    return [(sentence, words) for _, _, sentence, words in sorted(scored)[:limit]]


def highlighted(dialogue: str, codes: list[str]) -> list[tuple[str, str | None]]:
    """The dialogue as (text, label) spans for a highlighting widget: each evidence sentence is
    labelled with the codes it supports, everything else unlabelled."""
    labels: dict[Sentence, list[str]] = {}
    for code in codes:
        for sentence, _ in evidence(dialogue, code):
            labels.setdefault(sentence, []).append(code)
    spans, position = [], 0
    for sentence in sorted(labels, key=lambda s: s.start):
        if sentence.start > position:
            spans.append((dialogue[position:sentence.start], None))
        spans.append((dialogue[sentence.start:sentence.end], ", ".join(labels[sentence])))
        position = sentence.end
    if position < len(dialogue):
        spans.append((dialogue[position:], None))
    return spans
