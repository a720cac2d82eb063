"""What a user hands the predictor: dialogue text or JSONL, from a file, stdin or the app, checked before any model
loads; every problem is a :class:`PredictionError` whose message is meant for the user."""

from __future__ import annotations

import sys
from pathlib import Path

from icd10_coder.jsonl import parse_jsonl

# A dialogue longer than this is refused: the model's context holds ~8k tokens and real
# MedSynth dialogues stay under ~10,000 characters.
MAX_DIALOGUE_CHARS = 100_000


class PredictionError(ValueError):
    """Bad input or set-up, with a message meant for the user."""


def read_dialogues(source: str) -> tuple[list[str], bool]:
    """Dialogues from a file or stdin ('-'); JSONL (one object with a dialogue per line) is a batch."""
    raw = sys.stdin.buffer.read() if source == "-" else _read_file(Path(source))
    return parse_dialogues(raw, source)


def parse_dialogues(raw: bytes, source: str) -> tuple[list[str], bool]:
    """Dialogue text or JSONL bytes -> (dialogues, is_batch); every problem a clear PredictionError."""
    if b"\0" in raw:
        raise PredictionError(f"{source}: looks like a binary file, expected dialogue text or JSONL")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PredictionError(f"{source}: not UTF-8 text ({err.reason})") from err
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and all(line.lstrip().startswith("{") for line in lines):
        try:
            records = parse_jsonl("\n".join(lines), source)
        except ValueError as err:
            raise PredictionError(str(err)) from err
        dialogues = []
        for number, record in enumerate(records, 1):
            value = record.get("dialogue", record.get("Dialogue"))
            if not isinstance(value, str) or not value.strip():
                raise PredictionError(f"{source}: line {number} has no 'dialogue' text")
            dialogues.append(check_length(value, f"{source}: line {number}"))
        return dialogues, True
    if not text.strip():
        raise PredictionError(f"{source}: the dialogue is empty")
    return [check_length(text, source)], False


def check_length(dialogue: str, source: str = "dialogue") -> str:
    if len(dialogue) > MAX_DIALOGUE_CHARS:
        raise PredictionError(f"{source}: {len(dialogue):,} characters is more than a dialogue "
                              f"({MAX_DIALOGUE_CHARS:,} at most); split it or check the file")
    return dialogue


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise PredictionError(f"{path}: no such file")
    return path.read_bytes()
