"""The coder's audit trail: one JSON line per decision, appended to an owner-only file.

Written locally, never sent anywhere. It records what was suggested (codes, confidences), by
which model (base model, adapter folder and a hash of the adapter's files) and what the
coder decided; the dialogue itself is not copied, only its SHA-256, so the log can be matched
to its source without becoming a second copy of patient text.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from icd10_coder.codes import description
from icd10_coder.jsonl import append_jsonl
from icd10_coder.paths import private_folder

ACTIONS = ("accept", "override", "reject")
AUDIT_FILE = "decisions.jsonl"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def adapter_hash(adapter: Path | None) -> str | None:
    """SHA-256 over the adapter's config and weights (which exact adapter made the suggestions)."""
    if adapter is None:
        return None
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        path = adapter / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def record(folder: Path, *, action: str, code: str | None, dialogue: str, suggestions: list[dict[str, Any]],
           base_model: str, adapter: str | None, adapter_sha256: str | None,
           served_by: str | None = None) -> dict[str, Any]:
    """Append one decision to ``folder/decisions.jsonl`` (created owner-only) and return it."""
    if action not in ACTIONS:
        raise ValueError(f"unknown decision {action!r} (one of {', '.join(ACTIONS)})")
    if action != "reject" and not code:
        raise ValueError(f"{action} needs a code")

    entry = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": base_model, "adapter": adapter, "adapter_sha256": adapter_sha256, "served_by": served_by,
        "dialogue_sha256": sha256_text(dialogue),
        "suggestions": [{"code": s["code"], "confidence": s.get("confidence"),
                         "shortlist_probability": s.get("shortlist_probability")} for s in suggestions],
        "decision": {"action": action, "code": code, "description": description(code) if code else None},
    }
    private_folder(folder)
    append_jsonl(folder / AUDIT_FILE, entry, private=True)
    return entry
