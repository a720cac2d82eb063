"""ICD-10-CM code handling: the one place that knows what a code is.

MedSynth writes codes without a dot (``M25562``); models write them every way.
Everything downstream (prepare, the lm-eval task, predict, the report) compares
codes in one canonical form: dotted, upper case (``M25.562``), checked against the
ICD-10-CM release shipped by ``simple-icd-10-cm``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import simple_icd_10_cm as cm

Validity = Literal["billable", "parent", "unknown"]

# Letter, digit, then a letter or digit; up to four more after the dot. "U" codes
# (U07.1) and codes with letters in the second place (e.g. "O9A") are legal.
_CODE_SHAPE = re.compile(r"^[A-Z][0-9][0-9A-Z](?:\.?[0-9A-Z]{1,4})?$")


def normalize_code(raw: str) -> str | None:
    """Return the canonical dotted upper-case form of a code, or None if it is not code-shaped.

    Accepts ``m25562``, ``M25.562``, ``M25.562.`` and ``M25 562``; does not check that the
    code exists (see :func:`validity`).
    """
    text = re.sub(r"[\s.]", "", str(raw or "")).upper()
    if not _CODE_SHAPE.match(text):
        return None
    return text if len(text) <= 3 else f"{text[:3]}.{text[3:]}"


def _undotted(code: str) -> str:
    return code.replace(".", "")


@lru_cache(maxsize=65536)
def validity(code: str) -> Validity:
    """``billable`` for a leaf code, ``parent`` for a category or subcategory, ``unknown`` otherwise."""
    canonical = normalize_code(code)
    if canonical is None or not cm.is_valid_item(canonical):
        return "unknown"
    # Chapters and blocks are "valid items" too, but they are never code-shaped.
    return "billable" if cm.is_leaf(canonical) else "parent"


def is_billable(code: str) -> bool:
    return validity(code) == "billable"


@dataclass(frozen=True)
class Hierarchy:
    """Where a code sits in ICD-10-CM; unknown levels are None."""

    code: str
    category: str
    block: str | None
    chapter: str | None


@lru_cache(maxsize=65536)
def hierarchy(code: str) -> Hierarchy | None:
    """Category (first 3 characters), block (e.g. ``M20-M25``) and chapter (e.g. ``13``) of a code.

    A code that does not exist still gets its category; its block and chapter come
    from the nearest ancestor that exists (so a hallucinated ``M25.999`` still lands in
    block ``M20-M25``).
    """
    canonical = normalize_code(code)
    if canonical is None:
        return None
    category = canonical[:3]
    known = next(
        (c for c in _prefixes(canonical) if cm.is_valid_item(c)),
        None,
    )
    block = chapter = None
    if known is not None:
        for ancestor in cm.get_ancestors(known):
            if cm.is_block(ancestor) and block is None:
                block = ancestor
            elif cm.is_chapter(ancestor):
                chapter = ancestor
    return Hierarchy(code=canonical, category=category, block=block, chapter=chapter)


def _prefixes(canonical: str) -> list[str]:
    """The code and its shorter forms, longest first: M25.562, M25.56, M25.5, M25."""
    flat = _undotted(canonical)
    return [normalize_code(flat[:n]) or "" for n in range(len(flat), 2, -1)]


@lru_cache(maxsize=65536)
def description(code: str) -> str | None:
    """The official ICD-10-CM description, or None for an unknown code."""
    canonical = normalize_code(code)
    if canonical is None or not cm.is_valid_item(canonical):
        return None
    return cm.get_description(canonical)


@lru_cache(maxsize=64)
def chapter_title(chapter: str) -> str:
    """Human title of a chapter id such as ``13`` (or of a block id such as ``E08-E13``)."""
    return cm.get_description(chapter) if cm.is_valid_item(chapter) else chapter


@lru_cache(maxsize=1)
def billable_codes() -> tuple[str, ...]:
    """Every billable ICD-10-CM code, dotted, sorted (about 74,000)."""
    return tuple(sorted(c for c in (normalize_code(x) for x in cm.get_all_codes(True)) if c and is_billable(c)))


@lru_cache(maxsize=1)
def _search_index() -> tuple[tuple[str, ...], dict[str, frozenset[int]]]:
    """Every code (billable and parent) and an inverted index word -> code positions."""
    codes = tuple(sorted({c for c in (normalize_code(x) for x in cm.get_all_codes(True)) if c}))
    index: dict[str, set[int]] = {}
    for position, code in enumerate(codes):
        for word in re.findall(r"[a-z0-9]+", (description(code) or "").lower()):
            index.setdefault(word, set()).add(position)
    return codes, {word: frozenset(found) for word, found in index.items()}


def search(query: str, limit: int = 20) -> list[str]:
    """ICD-10-CM codes for a code or words typed by a coder, best first, billable codes first.

    A code (``E11.9``, ``e119``, ``E11``) lists itself and its descendants. Words match
    description words exactly, by prefix (``diab`` -> diabetes) or, for typos, by similarity
    (``diabetis`` -> diabetes, difflib ratio >= 0.8); a code ranks by the share of query words
    it matches, then billable before parent, then shorter description.
    """
    import difflib

    query = query.strip()
    if not query:
        return []
    codes, index = _search_index()
    canonical = normalize_code(query)
    if canonical is not None:
        flat = _undotted(canonical)
        found = [c for c in codes if _undotted(c).startswith(flat)]
        if found:
            return sorted(found, key=lambda c: (c != canonical, not is_billable(c), len(c), c))[:limit]
    words = [w for w in re.findall(r"[a-z0-9]+", query.lower()) if len(w) > 1 or w.isdigit()]
    if not words:
        return []
    vocabulary = list(index)
    scores: dict[int, float] = {}
    for word in words:
        matches = {v: 1.0 for v in vocabulary if v.startswith(word)} if len(word) >= 3 else {}
        if word in index:
            matches[word] = 1.0
        for close in difflib.get_close_matches(word, vocabulary, n=5, cutoff=0.8):
            matches.setdefault(close, difflib.SequenceMatcher(None, word, close).ratio())
        best: dict[int, float] = {}
        for match, weight in matches.items():
            for position in index[match]:
                best[position] = max(best.get(position, 0.0), weight)
        for position, weight in best.items():
            scores[position] = scores.get(position, 0.0) + weight
    ranked = sorted(scores, key=lambda p: (-scores[p], not is_billable(codes[p]), len(description(codes[p]) or ""),
                                           codes[p]))
    return [codes[p] for p in ranked[:limit]]
