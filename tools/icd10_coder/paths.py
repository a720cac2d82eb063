"""Where things live in a checkout; every default path is derived here."""

from __future__ import annotations

import os
from pathlib import Path

# tools/icd10_coder/paths.py -> repository root (the package is installed editable).
REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = REPO_ROOT / "outputs"
PREPARED = REPO_ROOT / "data" / "prepared"
EMBEDDED_MODEL = Path(os.environ.get("ICD10_EMBEDDED_MODEL", OUTPUTS / "models" / "smollm2-135m-instruct"))
OFFLINE_ENV_FILE = REPO_ROOT / "tools" / "offline.env"


def make_private(folder: Path) -> None:
    """Owner-only access to a folder and everything in it: its files quote patient dialogues."""
    if not folder.is_dir():
        return
    os.chmod(folder, 0o700)
    for path in folder.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
