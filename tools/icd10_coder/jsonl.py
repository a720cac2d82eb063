"""JSON Lines, read and written one way everywhere: prepared splits, lm-eval samples, journals, audit logs.

Writes are atomic (a temporary file in the same folder, then a rename), so a run that stops half way
never leaves half a file; ``private=True`` makes the file owner-only from its first byte, for files
that quote patient dialogues. Errors name the file and the line.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def parse_jsonl(text: str, source: str) -> list[dict[str, Any]]:
    """Every non-blank line of ``text`` as a JSON object; ``source`` names it in errors."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source} line {number}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise ValueError(f"{source} line {number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file (``.gz`` read through gzip)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return parse_jsonl(handle.read(), str(path))
    return parse_jsonl(path.read_text(encoding="utf-8"), str(path))


def write_jsonl(path: Path, records: Iterable[dict[str, Any]], private: bool = False) -> Path:
    """Write ``records`` to ``path`` atomically, one JSON object a line (UTF-8 kept as is); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0o600
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        if not private:
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def append_jsonl(path: Path, record: dict[str, Any], private: bool = False) -> None:
    """Add one record at the end of ``path`` (created owner-only when ``private``): logs and journals."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600 if private else 0o666)
    with os.fdopen(handle, "a", encoding="utf-8") as out:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, for a moment, in every thread)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        return 0o022
