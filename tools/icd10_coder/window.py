"""Evidence windows: the part of a dialogue that carries the diagnosis, for a prompt ~4x shorter.

A MedSynth dialogue runs to ~1,000-1,500 tokens, most of it history taking and small talk; the
doctor names or explains the diagnosis in a few sentences. The window keeps the sentences that
(1) match a diagnostic cue pattern (``dialogue.CUE_PATTERN``: "consistent with", "you have", ...)
and (2) are nearest, under the retriever's dense encoder, to any code on the dialogue's shortlist,
in that order of preference, until ``budget`` tokens are used; the kept sentences are shown in
dialogue order with their speaker. The SLM then reads ~300-400 tokens instead of the whole dialogue:
training and scoring cost scale with prompt length on a CPU.

The window depends only on the dialogue and the retriever's own shortlist (never on the gold code),
so training, dev, test and served prompts are made the same way.
"""

from __future__ import annotations

from icd10_coder.dialogue import CUE_PATTERN

WINDOW_TOKENS = 384  # the prompt variant's default budget (data cards and adapter records hold the value used)
CHARS_PER_TOKEN = 4.0  # SmolLM2's tokenizer on English dialogue: ~4.2 characters a token


def tokens(text: str) -> int:
    """A tokenizer-free estimate of a text's length in tokens (what the budget counts)."""
    return max(1, round(len(text) / CHARS_PER_TOKEN))


def evidence_window(units: list[tuple[str, str]], similarity: list[float], budget: int = WINDOW_TOKENS) -> str:
    """``units``: (speaker, sentence) in dialogue order; ``similarity``: each sentence's best dense similarity to
    the shortlist. Returns the chosen sentences, one per line as ``Speaker: sentence``, in dialogue order."""

    if len(units) != len(similarity):
        raise ValueError(f"{len(units)} sentences but {len(similarity)} similarities")
    preference = sorted(range(len(units)),
                        key=lambda i: (not CUE_PATTERN.search(units[i][1]), -similarity[i], i))
    chosen: list[int] = []
    used = 0
    for index in preference:
        cost = tokens(units[index][1]) + 3  # the speaker tag and the line break
        if used + cost > budget and chosen:
            continue
        chosen.append(index)
        used += cost
    return "\n".join(f"{units[i][0]}: {units[i][1]}" if units[i][0] else units[i][1] for i in sorted(chosen))
