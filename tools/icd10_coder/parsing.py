"""Answer parsing: pull ICD-10-CM codes out of whatever a model wrote.

Models answer ``M25.562 - Pain in left knee``, ``**ICD-10:** m25562``, bullet lists,
description first, several codes... The parser finds every code-shaped token, in
order, normalises it (:func:`icd10_coder.codes.normalize_code`) and drops repeats.
It never raises: an answer without codes parses to an empty list.
"""

from __future__ import annotations

import re

from icd10_coder.codes import normalize_code, validity

# A letter, a digit, a letter or digit, then optionally up to four more characters,
# with or without a dot after the third. Not glued to other letters or digits, so
# "HbA1c", "ICD10" and "COVID-19" yield nothing.
_CODE_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])([A-Za-z][0-9][0-9A-Za-z](?:\.[0-9A-Za-z]{1,4}|[0-9A-Za-z]{1,4})?)\.?(?![A-Za-z0-9])"
)


def _plausible(code: str) -> bool:
    """Reject code-shaped words that are not codes.

    A bare three-character token (``B12`` in "vitamin B12", ``T2`` words) counts only
    when it is a real ICD-10-CM category; longer tokens need a digit in third place
    or a real category, as in ``C4A.0`` or ``O9A.1``.
    """
    category = code[:3]
    if len(code) == 3:
        return validity(category) != "unknown"
    return category[2].isdigit() or validity(category) != "unknown"


def extract_codes(text: str | None) -> list[str]:
    """All plausible ICD-10-CM codes in ``text``, canonical, first occurrence order."""
    found: list[str] = []
    for match in _CODE_TOKEN.finditer(text or ""):
        code = normalize_code(match.group(1))
        if code and _plausible(code) and code not in found:
            found.append(code)
    return found
