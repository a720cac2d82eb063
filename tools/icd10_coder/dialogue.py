"""Dialogue text: clean-up (one turn per line, one way of naming the speaker), sentences, diagnostic cues.

MedSynth mixes ``[doctor]:``, ``[doctor] ``, ``[Doctor]``, ``**Doctor:**``, other speakers
(``[mother]``), turns run together without line breaks, and stray Markdown code fences.
prepare (training/evaluation data) and predict (a doctor's input) both clean through
here, so a model sees the same shape of text in training and in use.
"""

from __future__ import annotations

import re

# [doctor]: / [Doctor] / [patient's mother]: ... and **Doctor:** / **Doctor**: forms.
_BRACKET_TAG = re.compile(r"\[\s*([A-Za-z][A-Za-z' ]{0,30}?)\s*\]\s*:?\s*")
_BOLD_TAG = re.compile(
    r"\*\*\s*([A-Za-z][A-Za-z' ]{0,30}?)\s*:\s*\*\*\s*"  # **Doctor:**
    r"|\*\*\s*([A-Za-z][A-Za-z' ]{0,30}?)\s*\*\*\s*:\s*"  # **Doctor**:
)
_FENCE = re.compile(r"```[A-Za-z]*")
_SPACES = re.compile(r"[ \t\r\f\v]+")


def clean_dialogue(text: str) -> str:
    """Return the dialogue as ``Speaker: words`` lines; '' when nothing is left."""
    text = _FENCE.sub("\n", text or "")

    def as_turn(match: re.Match[str]) -> str:
        speaker = next(g for g in match.groups() if g)
        return f"\n{speaker.strip().capitalize()}: "

    text = _BOLD_TAG.sub(as_turn, text)
    text = _BRACKET_TAG.sub(as_turn, text)
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line and not re.fullmatch(r"[A-Za-z' ]+:", line))


# Sentences where a doctor names or explains a diagnosis (MedSynth: usually after the examination).
CUE_PATTERN = re.compile(
    r"\b(diagnos\w*|consistent with|you have|you've got|looks like|suggest\w*|indicat\w*|confirm\w*|"
    r"likely|impression|assessment|condition called|known as|caused by|due to|results? show\w*)\b",
    re.IGNORECASE)
SENTENCE_BREAK = re.compile(r"(?<=[.?!])\s+|\n")

_SPEAKER = re.compile(r"^([A-Za-z' ]{1,30}):\s*")


def speaker_sentences(dialogue: str) -> list[tuple[str, str]]:
    """(speaker, sentence without its tag) for every sentence of at least three words, in dialogue order; the
    speaker of a turn's later sentences is the turn's ("" when the dialogue has no tags)."""
    found = []
    for line in dialogue.split("\n"):
        tag = _SPEAKER.match(line.strip())
        speaker = tag.group(1) if tag else ""
        for sentence in SENTENCE_BREAK.split(line):
            text = _SPEAKER.sub("", sentence.strip())
            if len(text.split()) >= 3:
                found.append((speaker, text))
    return found


def sentences(dialogue: str) -> list[str]:
    """The dialogue's sentences without speaker tags, at least three words each (the dense queries)."""
    return [text for _, text in speaker_sentences(dialogue)] or [dialogue]
