"""The rows prepare writes, one shape for every writer: axolotl training rows and lm-eval test rows.

``tools/prepare.py`` writes them from MedSynth; the real-data experiment writes the same rows for
its folds, so a model trains on and is scored with the very prompts everything else uses.
"""

from __future__ import annotations

from typing import Any, Protocol


class Row(Protocol):
    """What a record is made from (prepare's ``Example``; the experiment's shortlisted rows)."""

    row_id: str
    dialogue: str
    code: str
    validity: str
    candidates: tuple[str, ...]
    candidate_scores: tuple[float, ...]


def training_record(example: Row) -> dict[str, Any]:
    """axolotl chat_template format: system, user and the gold answer as assistant.

    ``dialogue`` and ``gold_code`` ride along (axolotl drops columns it does not use) for the
    retrieval index's nearest-neighbour part. The answer is always the gold code, also when
    it is missing from the row's shortlist: the list is a hint, not a cage. The shortlist
    itself rides along too, for the choice task on the validation split.
    """
    from icd10_coder.codes import description
    from icd10_coder.prompts import chat_messages, render_answer

    answer = render_answer(example.code, description(example.code) or "")
    return {"messages": chat_messages(example.dialogue, answer, list(example.candidates) or None),
            "id": example.row_id, "dialogue": example.dialogue, "gold_code": example.code,
            "candidates": list(example.candidates), "candidate_scores": list(example.candidate_scores)}


def evaluation_record(example: Row) -> dict[str, Any]:
    """What the lm-eval task reads: rendered prompts, gold code and where it sits in ICD-10-CM."""
    from icd10_coder.codes import description, hierarchy
    from icd10_coder.prompts import render_system, render_user

    place = hierarchy(example.code)
    return {
        "id": example.row_id,
        "system": render_system(),
        "user": render_user(example.dialogue, list(example.candidates) or None),
        "candidates": list(example.candidates),
        "candidate_scores": list(example.candidate_scores),
        "dialogue": example.dialogue,
        "gold_code": example.code,
        "gold_description": description(example.code),
        "gold_validity": example.validity,
        "category": place.category if place else None,
        "block": place.block if place else None,
        "chapter": place.chapter if place else None,
    }
