"""The shared real rows and their category folds: what the real-data protocol promises about its splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from icd10_coder.realdata import REAL_FILES, RealRow, category_folds, load_real_rows, subsample


@pytest.fixture(scope="module")
def rows() -> list[RealRow]:
    if not all(path.is_file() for path in REAL_FILES):
        pytest.skip("the shared real MedSynth files are not present")
    return load_real_rows()


def test_all_1565_real_rows_load_with_canonical_codes_including_ones_missing_from_the_release(rows):
    assert len(rows) == 1565 and len({r.code for r in rows}) == 1565  # one row per code, no code in two files
    assert {p.name for p in REAL_FILES} == {"medsynth_sample.jsonl", "medsynth_spread.jsonl", "medsynth_more.jsonl"}
    codes = {r.code for r in rows}
    assert {"H40.11X1", "H40.11X2"} <= codes  # not in the 2026 release: kept, not dropped
    assert all("\n" in r.dialogue and not r.dialogue.startswith("[") for r in rows[:20])  # cleaned: one turn a line


def test_category_folds_test_every_category_once_and_never_train_a_sibling_of_a_test_code(rows):
    folds = category_folds(rows, folds=3, seed=0)
    tested = Counter(r.category for fold in folds for r in fold.test)
    assert set(tested) == {r.category for r in rows}
    assert sum(len(f.test) for f in folds) == len(rows)  # every row tested exactly once
    for fold in folds:
        train = {r.category for r in fold.train}
        dev, test = {r.category for r in fold.dev}, {r.category for r in fold.test}
        assert not train & test and not dev & test and not train & dev
        sibling_codes = {r.code for r in fold.sibling}
        assert not sibling_codes & {r.code for r in fold.train}  # never trained on ...
        assert {r.category for r in fold.sibling} <= train  # ... but a sibling of theirs is
        assert len(fold.train) + len(fold.dev) + len(fold.sibling) + len(fold.test) == len(rows)


def test_folds_and_subsamples_are_reproducible_and_depend_on_the_seed(rows):
    def ids(folds):
        return [[r.row_id for r in f.test] for f in folds]

    assert ids(category_folds(rows, seed=0)) == ids(category_folds(rows, seed=0))
    assert ids(category_folds(rows, seed=0)) != ids(category_folds(rows, seed=1))
    fold = category_folds(rows)[0]
    assert subsample(fold.test, 10, "s") == subsample(fold.test, 10, "s")
    assert len(subsample(fold.test, 10, "s")) == 10 and subsample(fold.test, None, "s") == sorted(
        fold.test, key=lambda r: r.code)


def test_a_row_without_a_code_is_an_error_that_names_the_line(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"Dialogue": "[doctor] hello", "ICD10": "A047"}) + "\n"
                   + json.dumps({"Dialogue": "[doctor] hi", "ICD10": "not a code"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl line 2"):
        load_real_rows((bad,))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_real_rows((tmp_path / "absent.jsonl",))


def test_the_embedded_demo_data_is_small_attributed_and_rebuilt_from_the_shared_rows(tmp_path):
    from icd10_coder.realdata import EMBEDDED_DATA, EMBEDDED_ROWS, read_embedded_rows, write_embedded_rows

    assert EMBEDDED_DATA.stat().st_size < 1_000_000
    readme = (EMBEDDED_DATA.parent / "README.md").read_text()
    assert "CC BY 4.0" in readme and "arXiv:2508.01401" in readme and "Rezaie Mianroodi" in readme
    rows = read_embedded_rows()
    assert len(rows) == EMBEDDED_ROWS and len({r["ICD10"] for r in rows}) == EMBEDDED_ROWS
    assert len({r["ICD10"][0] for r in rows}) >= 20  # every chapter letter the shared files cover, or nearly
    if not all(path.is_file() for path in REAL_FILES):
        pytest.skip("the shared real files are absent: the rebuild cannot be compared")
    rebuilt = tmp_path / "demo.jsonl.gz"
    write_embedded_rows(rebuilt)
    assert rebuilt.read_bytes() == EMBEDDED_DATA.read_bytes()
