"""The Retrieval approach as an lm-eval model (``model: icd10-retrieval``): no language model.

Its "answer" to each test dialogue is the top-ranked retrieval codes in the project's answer
format (best first, then up to two alternatives), so the ``icd10_medsynth`` task parses and
scores it exactly like the model approaches. The floor every model must beat.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lm_eval.models  # noqa: F401  (lm-eval's own models first: its registry loads them only while empty)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from icd10_coder.codes import description
from icd10_coder.datacard import card_retriever
from icd10_coder.prompts import DEFAULT_MAX_ALTERNATIVES, render_answer
from icd10_coder.retrieval import RetrievalSettings, load_or_fit, read_training_pairs

BATCH = 64


def effective_settings(record: dict | None, neighbours: int | None, encoder: str | None) -> RetrievalSettings:
    """The retriever ``record`` (or the defaults) with the explicitly given ``neighbours`` and ``encoder``."""
    settings = RetrievalSettings.from_record(record) if record else RetrievalSettings()
    changes: dict[str, object] = {}
    if neighbours is not None:
        changes["neighbours"] = int(neighbours)
    if encoder is not None:
        changes["encoder"] = str(encoder)
    return replace(settings, **changes)


@register_model("icd10-retrieval")
class RetrievalLM(LM):
    """Answers with the retriever's top codes; ``train``: prepared train.jsonl for the neighbour part;
    ``retriever_card``: a prepared data card whose shortlist retriever is used (``tools/run_eval.py`` passes the
    evaluated data's, so Retrieval ranks as the shortlist did), else ``RetrievalSettings()``; ``neighbours`` and
    ``encoder`` (a fine-tuned query encoder folder, tools/train_encoder.py; "" for the base encoder) change it
    where given."""

    def __init__(self, train: str | None = None, cache_dir: str | None = None,
                 answers: int = 1 + DEFAULT_MAX_ALTERNATIVES, retriever_card: str | None = None,
                 neighbours: int | None = None, encoder: str | None = None, **_: object) -> None:
        super().__init__()
        settings = effective_settings(card_retriever(Path(retriever_card)) if retriever_card else None, neighbours,
                                      encoder)
        use_train = settings.neighbours and train and Path(train).is_file()
        pairs = read_training_pairs(Path(train)) if use_train else None
        self.retriever = load_or_fit(Path(cache_dir) if cache_dir else None, settings, pairs)
        self.answers = int(answers)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        dialogues = [request.doc["dialogue"] for request in requests]
        replies: list[str] = []
        for first in tqdm(range(0, len(dialogues), BATCH), desc="retrieval", unit="batch", disable=disable_tqdm):
            for ranked in self.retriever.shortlist(dialogues[first:first + BATCH], self.answers):
                replies.append("\n".join(render_answer(code, description(code) or "") for code, _ in ranked))
        return replies

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("icd10-retrieval only answers generate_until tasks (icd10_medsynth)")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("icd10-retrieval only answers generate_until tasks (icd10_medsynth)")

    # The task renders chat prompts; retrieval reads the dialogue from the document instead.
    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return json.dumps(chat_history)

    @property
    def tokenizer_name(self) -> str:
        return "icd10-retrieval"

    def chat_template(self, chat_template: bool | str = False) -> str:
        return ""
