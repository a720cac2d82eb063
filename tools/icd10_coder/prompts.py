"""Render the Jinja templates in ``prompts/``: the single source of prompt text.

Nothing in Python holds prompt wording; this module only loads and fills templates,
so training data, the lm-eval task, the LLM baseline and ``predict`` see the same bytes.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from icd10_coder.codes import description
from icd10_coder.paths import REPO_ROOT

DEFAULT_MAX_ALTERNATIVES = 2
# Written by tools/train.py into an adapter folder: which prompt variant (plain, or with the
# retrieval shortlist) the adapter was trained on; tools/predict.py prompts it the same way.
PROMPT_RECORD = "icd10_prompt.json"


def prompts_dir() -> Path:
    """``prompts/`` of the checkout, or ``$ICD10_PROMPTS_DIR`` to try a variant without editing."""
    return Path(os.environ.get("ICD10_PROMPTS_DIR", REPO_ROOT / "prompts"))


@lru_cache(maxsize=8)
def _environment(directory: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


def _render(name: str, **variables: object) -> str:
    return _environment(str(prompts_dir())).get_template(name).render(**variables)


def render_system(max_alternatives: int = DEFAULT_MAX_ALTERNATIVES) -> str:
    return _render("system.j2", max_alternatives=max_alternatives)


def render_user(dialogue: str, candidates: list[str] | None = None, excerpt: bool = False) -> str:
    """The user message; ``candidates`` (codes, best first) adds the shortlist block; ``excerpt``: ``dialogue`` is
    an evidence window (:mod:`icd10_coder.window`), not the whole dialogue."""
    if not dialogue or not dialogue.strip():
        raise ValueError("dialogue is empty")

    listed = [{"code": code, "description": description(code) or ""} for code in candidates or []]
    return _render("user.j2", dialogue=dialogue, candidates=listed, excerpt=excerpt)


def render_answer(code: str, description: str) -> str:
    return _render("answer.j2", code=code, description=description)


def render_diagnosis_question(dialogue: str) -> str:
    """The question that asks a model to name the diagnosis in words (retrieval by query rewriting)."""
    return _render("diagnosis_phrase.j2", dialogue=dialogue)


def chat_messages(dialogue: str, answer: str | None = None, candidates: list[str] | None = None,
                  excerpt: bool = False) -> list[dict[str, str]]:
    """System + user (+ assistant) messages in the OpenAI / Hugging Face chat format."""
    messages = [
        {"role": "system", "content": render_system()},
        {"role": "user", "content": render_user(dialogue, candidates, excerpt)},
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def prompt_openings(tokenizer: Any) -> list[list[int]]:
    """Token ids every chat prompt starts with, under ``tokenizer``'s chat template: the system prompt and the user
    message up to the dialogue, for the whole dialogue and for an evidence window. The last token before the
    dialogue is left out (a tokeniser may merge it with the dialogue's first word). A scorer caches their
    keys/values once (:class:`icd10_coder.choice.PromptOpenings`)."""
    marker = "\u2063dialogue\u2063"  # invisible separators: no dialogue contains them
    openings = []
    for excerpt in (False, True):
        text = tokenizer.apply_chat_template(chat_messages(marker, candidates=["A00.0"], excerpt=excerpt),
                                             add_generation_prompt=True, tokenize=False)
        openings.append(tokenizer(text[: text.index(marker)], add_special_tokens=False)["input_ids"][:-1])
    return openings
