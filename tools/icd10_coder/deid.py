"""Rule-based PHI de-identification for users who bring real dialogues (``prepare --deidentify``).

Replaces names, dates (not bare years), ages over 89, phone/fax numbers, e-mail and web
addresses, record/ID numbers and street addresses with typed placeholders ([NAME],
[DATE], ...), following the HIPAA Safe Harbor identifier list where it applies to
dialogue text.

Why rules and not a library: Presidio's default recogniser needs a spaCy model that
cannot be installed offline here, and scrubadub finds names and addresses only with
NER models or libpostal; its offline detectors cover e-mail/URL/phone alone. Rules are
transparent, fast (10,000 dialogues in seconds) and measured: see tests/test_deid.py
(recall on planted identifiers, precision, clinical text preserved). They are a
safeguard, not a guarantee: review a sample before sharing anything.
"""

from __future__ import annotations

import re

_MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
           r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_NAME = r"(?:[A-Z]'|Mc|Mac)?[A-Z][a-z]+(?:-[A-Z]?[a-z]+)?"  # Lopez, O'Neil, McKay, Jean-Pierre
_FULL_NAME = rf"{_NAME}(?:\s+[A-Z]\.)?(?:\s+{_NAME})?"
# Capitalised words that follow "I'm", "this is" etc. without being names.
_NOT_NAMES = frozenset("""
    Not Just Here Fine Good Okay Ok Sorry Glad Happy Feeling Doing Having Taking Still Also Really So Very Worried
    Afraid Concerned Sure Doctor Nurse Patient The A An It That This Well Yes No Oh Hi Hello Thank Thanks Yeah Going
    Trying Always Never Usually Currently Allergic Diabetic Pregnant Retired Married Single Back Home Tired Ready
    Mr Mrs Ms Miss Mx Dr Prof Sir Madam Everyone Everybody Morning Afternoon Evening There
""".split())
_RELATIONS = (r"(?:wife|husband|son|daughter|mother|father|mom|dad|brother|sister|friend|neighbou?r|partner|"
              r"grandson|granddaughter|grandmother|grandfather|aunt|uncle|cousin|boss|colleague|caregiver)")

# Order matters: structured identifiers first, so their digits are not half-eaten by others.
_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("URL", re.compile(r"\b(?:https?://|www\.)[^\s<>\"'()\[\]]*[^\s<>\"'()\[\].,;:!?]", re.I)),
    ("ID", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),  # SSN shape
    ("ID", re.compile(
        r"(?P<keep>(?i:\b(?:MRN|medical record(?: number)?|record (?:number|no\.?)|chart (?:number|no\.?)|"
        r"account(?: number)?|"
        r"member ID|insurance ID|policy(?: number)?|patient ID|ID(?: number)?|license(?: number)?|"
        r"social security(?: number)?|SSN)\b)[\s:#]*(?:is\s+|of\s+)?)(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{3,}\b")),
    ("PHONE", re.compile(r"(?<!\w)(?:\+?1[\s.-]?)?\(?\b\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}\b")),
    ("ADDRESS", re.compile(
        r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|"
        r"Court|Ct|Way|Place|Pl|Terrace|Parkway|Pkwy|Circle|Cir)\b\.?(?:,?\s+(?:Apt|Apartment|Suite|Unit)\.?\s*\w+)?")),
    ("DATE", re.compile(rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b")),
    ("DATE", re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS}\.?(?:,?\s+\d{{4}})?\b")),
    ("DATE", re.compile(rf"\b{_MONTHS}\.?\s+\d{{4}}\b")),
    ("DATE", re.compile(r"\b\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})\b|\b\d{4}-\d{2}-\d{2}\b")),
    ("AGE", re.compile(r"\b(?:9\d|1[0-4]\d)(?=(?:\s*-?\s*|-)(?:years?|yrs?|y/?o)\b)", re.I)),
    ("AGE", re.compile(r"(?P<keep>(?i:\b(?:aged?|I'm|I am|turned|turning)\s+))(?:9\d|1[0-4]\d)\b")),
]
# Names need their context to be told apart from other capitalised words.
_NAME_RULES: list[re.Pattern[str]] = [
    re.compile(rf"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+({_FULL_NAME})"),
    re.compile(rf"(?i:\b(?:my name is|name's|call me|this is|I am|I'm|name:)\s+)({_FULL_NAME})"),
    re.compile(rf"(?i:\b(?:my|his|her|their|your)\s+{_RELATIONS}),?\s+({_FULL_NAME})"),
    re.compile(rf"(?i:\b(?:Doctor|Nurse)\s+)({_FULL_NAME})"),
    re.compile(rf"\b(?:Hi|Hello|Thanks|Thank you|Good morning|Good afternoon|Goodbye|Bye),?\s+({_FULL_NAME})\b"),
]


def _replace_names(text: str) -> tuple[str, set[str]]:
    """Replace names found in context; return the text and the name words found."""
    found: set[str] = set()

    def swap(match: re.Match[str]) -> str:
        kept: list[str] = []
        for word in match.group(1).split():  # stop at a word that is not a name ("I'm Sarah Fine")
            if word.strip(".") in _NOT_NAMES:
                break
            kept.append(word)
        if not kept:
            return match.group(0)
        name = " ".join(kept)
        found.update(w for w in kept if len(w.strip(".")) > 2)
        start = match.start(1) - match.start(0)
        whole = match.group(0)
        return whole[:start] + "[NAME]" + whole[start + len(name):]

    for rule in _NAME_RULES:
        text = rule.sub(swap, text)
    return text, found


def deidentify(text: str) -> str:
    """Return ``text`` with identifiers replaced by ``[TYPE]`` placeholders."""
    for kind, rule in _RULES:
        # A rule's (?P<keep>...) group is context ("MRN ", "aged ") and stays in the text.
        text = rule.sub(lambda m, kind=kind: (m.groupdict().get("keep") or "") + f"[{kind}]", text)
    text, names = _replace_names(text)
    # A name found once is removed everywhere in the dialogue ("Mr. Lee ... Lee said").
    for name in sorted(names, key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(name)}\b", "[NAME]", text)
    return text
