"""Figures in README/GUIDE come from files a command wrote, never typed by hand.

A command writes its table to ``docs/generated/NAME.md``; README.md and GUIDE.md show it between
``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``. :func:`sync_docs` copies each file
into those blocks; a test fails when a block differs from its file (``tests/test_generated_docs.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

from icd10_coder.paths import REPO_ROOT

GENERATED_DIR = REPO_ROOT / "docs" / "generated"
DOCS = (REPO_ROOT / "README.md", REPO_ROOT / "GUIDE.md")


def block_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated:{re.escape(name)} -->\n)(.*?)(<!-- /generated:{re.escape(name)} -->)",
                      re.DOTALL)


def blocks(text: str) -> dict[str, str]:
    """Every generated block of a document: name -> its content."""
    return {m.group(1): m.group(2) for m in re.finditer(
        r"<!-- generated:([\w.-]+) -->\n(.*?)<!-- /generated:\1 -->", text, re.DOTALL)}


def write_generated(name: str, content: str, folder: Path = GENERATED_DIR, docs: tuple[Path, ...] = DOCS) -> Path:
    """Write ``folder/NAME.md`` and copy it into every document block of that name."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.md"
    path.write_text(content.rstrip("\n") + "\n", encoding="utf-8")
    sync_docs(folder, docs)
    return path


def sync_docs(folder: Path = GENERATED_DIR, docs: tuple[Path, ...] = DOCS) -> None:
    """Replace each document block by its generated file (blocks without a file are left as they are)."""
    for doc in docs:
        if not doc.is_file():
            continue
        text = doc.read_text(encoding="utf-8")
        for name in blocks(text):
            source = folder / f"{name}.md"
            if source.is_file():
                content = source.read_text(encoding="utf-8")
                text = block_pattern(name).sub(lambda m, c=content: m.group(1) + c + m.group(3), text)
        doc.write_text(text, encoding="utf-8")
