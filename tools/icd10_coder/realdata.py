"""The shared real MedSynth rows and the category folds every real-data measurement splits them by.

Three files in ``../shared/data/`` (CC BY 4.0, read in place, never copied into the checkout):
``medsynth_sample.jsonl`` (121 rows, chapters A-C), ``medsynth_spread.jsonl`` (684 rows, chapters
C-Z) and ``medsynth_more.jsonl`` (760 rows, chapters D-Z), one row per code, no code in two files
(17 categories are in two files: folds are drawn over all rows together): 1,565 real rows.

Folds are drawn **by category** (the first three characters of the code), so a test code never
has a sibling in training (the strict "unseen categories" condition). Within each fold:

- ``test``: the fold's categories (every category is tested in exactly one fold);
- ``dev``: a share of the other categories, never trained on: every design choice is made here;
- ``train``: the remaining categories' codes, except
- ``sibling``: one code from each training category that has several, held out of training:
  codes never trained on whose siblings were (the "unseen codes, seen siblings" condition).

The split is a pure function of the rows, the number of folds and the seed: the same inputs
give the same folds, so test rows can be materialised only at the end of an experiment.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from icd10_coder.codes import normalize_code
from icd10_coder.dialogue import clean_dialogue
from icd10_coder.jsonl import read_jsonl
from icd10_coder.paths import REPO_ROOT

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
REAL_FILES = (SHARED_DATA / "medsynth_sample.jsonl", SHARED_DATA / "medsynth_spread.jsonl",
              SHARED_DATA / "medsynth_more.jsonl")
# The embedded demo subset was drawn from the first two (it stays byte for byte what it was).
EMBEDDED_SOURCE_FILES = REAL_FILES[:2]


@dataclass(frozen=True)
class RealRow:
    """One real dialogue: cleaned text, canonical code, and where it came from."""

    row_id: str
    dialogue: str
    code: str

    @property
    def category(self) -> str:
        return self.code[:3]

    @property
    def chapter_letter(self) -> str:
        return self.code[0]


def load_real_rows(paths: tuple[Path, ...] = REAL_FILES) -> list[RealRow]:
    """Every row of the shared files, cleaned like prepare cleans (one turn per line, canonical code).

    Codes missing from the 2026 release (``S301XXA``, ``H4011X1``) are kept: they are real labels,
    and scoring compares code strings. Rows without a dialogue or a code-shaped label are an error.
    """

    rows: list[RealRow] = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the shared real MedSynth file is missing (see shared/data/README.md)")
        for number, record in enumerate(read_jsonl(path), start=1):
            code = normalize_code(str(record.get("ICD10") or ""))
            dialogue = clean_dialogue(str(record.get("Dialogue") or ""))
            if code is None or not dialogue:
                raise ValueError(f"{path.name} line {number}: no dialogue or no ICD-10 code")
            rows.append(RealRow(row_id=f"{path.stem}-{number}", dialogue=dialogue, code=code))
    return rows


@dataclass(frozen=True)
class Fold:
    """One split of the real rows (see the module docstring)."""

    index: int
    train: tuple[RealRow, ...]
    dev: tuple[RealRow, ...]
    sibling: tuple[RealRow, ...]
    test: tuple[RealRow, ...]

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in ("train", "dev", "sibling", "test")}


def category_folds(rows: list[RealRow], folds: int = 3, dev_share: float = 0.15, seed: int = 0) -> list[Fold]:
    """``folds`` category folds; ``dev_share`` of all categories (taken from the non-test ones) is dev."""
    if folds < 2:
        raise ValueError("at least 2 folds")
    by_category: dict[str, list[RealRow]] = defaultdict(list)
    for row in rows:
        by_category[row.category].append(row)
    categories = sorted(by_category)
    rng = random.Random(seed)
    rng.shuffle(categories)
    groups = [categories[i::folds] for i in range(folds)]
    result = []
    for index, test_categories in enumerate(groups):
        rest = [c for c in categories if c not in set(test_categories)]
        rest_rng = random.Random(f"{seed}-{index}")
        rest_rng.shuffle(rest)
        n_dev = max(1, round(len(categories) * dev_share))
        dev_categories, train_categories = rest[:n_dev], rest[n_dev:]
        train, sibling = [], []
        for category in sorted(train_categories):
            members = sorted(by_category[category], key=lambda r: r.code)
            if len(members) >= 2:
                held = rest_rng.randrange(len(members))
                sibling.append(members[held])
                members = members[:held] + members[held + 1:]
            train.extend(members)
        result.append(Fold(index=index, train=tuple(train),
                           dev=tuple(r for c in sorted(dev_categories) for r in by_category[c]),
                           sibling=tuple(sibling),
                           test=tuple(r for c in sorted(test_categories) for r in by_category[c])))
    return result


def subsample(rows: tuple[RealRow, ...] | list[RealRow], limit: int | None, seed: str) -> list[RealRow]:
    """At most ``limit`` rows, drawn reproducibly (all of them when ``limit`` is None), in code order."""
    chosen = list(rows)
    if limit is not None and len(chosen) > limit:
        chosen = random.Random(seed).sample(chosen, limit)
    return sorted(chosen, key=lambda r: r.code)


# ---------------------------------------------------------------- the embedded demo subset

# The offline default data of `prepare --demo` / `make demo`: real MedSynth rows drawn from the
# shared files (CC BY 4.0, attribution in its README), committed compressed (well under 1 MB).
EMBEDDED_DATA = REPO_ROOT / "data" / "medsynth-demo" / "medsynth_demo.jsonl.gz"
EMBEDDED_ROWS = 100
DEMO_MAX_PER_CATEGORY = 3


def embedded_subset(rows: list[RealRow], size: int = EMBEDDED_ROWS, seed: int = 0,
                per_category: int = DEMO_MAX_PER_CATEGORY) -> list[RealRow]:
    """``size`` rows in whole-category groups (up to ``per_category`` codes each), drawn round-robin over
    chapter letters so every chapter the shared files cover is in the demo; in code order.

    Whole categories keep siblings together, so the demo can split by category (codes never trained on,
    and no sibling trained either) as the real experiment does.
    """
    by_category: dict[str, list[RealRow]] = defaultdict(list)
    for row in rows:
        by_category[row.category].append(row)
    rng = random.Random(seed)
    by_letter: dict[str, list[str]] = defaultdict(list)
    for category in sorted(by_category):
        by_letter[category[0]].append(category)
    for categories in by_letter.values():
        rng.shuffle(categories)
    chosen: list[RealRow] = []
    while len(chosen) < size and any(by_letter.values()):
        for letter in sorted(by_letter):
            if not by_letter[letter] or len(chosen) >= size:
                continue
            members = sorted(by_category[by_letter[letter].pop()], key=lambda r: r.code)
            rng.shuffle(members)
            chosen.extend(members[:min(per_category, size - len(chosen))])
    return sorted(chosen, key=lambda r: r.code)


def write_embedded_rows(path: Path = EMBEDDED_DATA, size: int = EMBEDDED_ROWS, seed: int = 0) -> list[RealRow]:
    """Write the demo subset as gzip JSONL (``ID``, ``Dialogue``, ``ICD10`` as MedSynth writes them), byte-stable."""
    import gzip

    chosen = embedded_subset(load_real_rows(EMBEDDED_SOURCE_FILES), size, seed)
    lines = "".join(json.dumps({"ID": r.row_id, "Dialogue": r.dialogue, "ICD10": r.code.replace(".", "")},
                               ensure_ascii=False) + "\n" for r in chosen)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(lines.encode("utf-8"))
    return chosen


def read_embedded_rows(path: Path = EMBEDDED_DATA) -> list[dict[str, str]]:
    """The embedded demo rows, MedSynth-shaped (``ID``, ``Dialogue``, ``ICD10``)."""

    if not path.is_file():
        raise FileNotFoundError(f"{path}: the embedded demo data is missing (a clean checkout has it)")
    return read_jsonl(path)


if __name__ == "__main__":  # python -m icd10_coder.realdata: rebuild the embedded demo subset
    written = write_embedded_rows()
    print(f"{EMBEDDED_DATA}: {len(written)} rows, {len({r.category for r in written})} categories, "
          f"{EMBEDDED_DATA.stat().st_size:,} bytes")
