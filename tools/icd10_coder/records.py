"""The rows prepare writes, one shape for every writer: axolotl training rows and lm-eval test rows.

``tools/prepare.py`` writes them from MedSynth; the real-data experiment writes the same rows for
its folds, so a model trains on and is scored with the very prompts everything else uses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from icd10_coder.codes import description, hierarchy
from icd10_coder.prompts import chat_messages, render_answer, render_system, render_user


class PrepareError(ValueError):
    """A problem with the input; reported with the file name, nothing written."""


@dataclass
class Example:
    """One kept row, cleaned and normalised."""

    row_id: str
    dialogue: str
    code: str
    validity: str
    group: str = field(default="")  # hash of the dialogue: identical dialogues share a split
    candidates: tuple[str, ...] = ()  # retrieval shortlist shown in the prompt (prepare --shortlist)
    candidate_scores: tuple[float, ...] = ()  # the retriever's score per candidate (fusion: tools/fuse.py)
    window: str = ""  # the evidence window shown instead of the dialogue (prepare --evidence-window)


class Row(Protocol):
    """What a record is made from (prepare's ``Example``; the experiment's shortlisted rows)."""

    row_id: str
    dialogue: str
    code: str
    validity: str
    candidates: tuple[str, ...]
    candidate_scores: tuple[float, ...]
    window: str  # the evidence window the prompt shows instead of the dialogue ("" = the whole dialogue)


def training_record(example: Row) -> dict[str, Any]:
    """axolotl chat_template format: system, user and the gold answer as assistant.

    ``dialogue`` and ``gold_code`` ride along (axolotl drops columns it does not use) for the
    retrieval index's nearest-neighbour part. The answer is always the gold code; a training
    row's shortlist holds it (:func:`gold_on_list`), a validation row's is the retriever's as
    it came. The shortlist rides along too, for the choice task on the validation split.
    """

    answer = render_answer(example.code, description(example.code) or "")
    return {"messages": chat_messages(example.window or example.dialogue, answer, list(example.candidates) or None,
                                      excerpt=bool(example.window)),
            "id": example.row_id, "dialogue": example.dialogue, "gold_code": example.code,
            "candidates": list(example.candidates), "candidate_scores": list(example.candidate_scores)}


def evaluation_record(example: Row) -> dict[str, Any]:
    """What the lm-eval task reads: rendered prompts, gold code and where it sits in ICD-10-CM."""

    place = hierarchy(example.code)
    return {
        "id": example.row_id,
        "system": render_system(),
        "user": render_user(example.window or example.dialogue, list(example.candidates) or None,
                            excerpt=bool(example.window)),
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


def gold_on_list(candidates: tuple[str, ...], scores: tuple[float, ...], gold: str,
                 rng: random.Random) -> tuple[tuple[str, ...], tuple[float, ...], bool]:
    """A training row's shortlist with its gold code on it: unchanged when the retriever found the gold code,
    else the gold code put at a random position (the last candidate drops off, so K stays K; it takes the
    score of the candidate whose place it takes). Returns the list, its scores and whether it was changed.

    Choice by likelihood can only pick a listed code: a training prompt whose answer is not on its list
    teaches the model to write a code it will never be offered (half the rows with a top-10 list).
    Only training lists are changed; dev and test lists stay exactly as the retriever made them.
    """
    if gold in candidates or not candidates:
        return candidates, scores, False
    position = rng.randrange(len(candidates))
    codes, values = list(candidates[:-1]), list(scores[:-1])
    codes.insert(position, gold)
    values.insert(position, scores[min(position, len(scores) - 1)])
    return tuple(codes), tuple(values), True
