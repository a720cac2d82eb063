"""The real-data experiment: choices on dev, test rows scored once at the end, honest tables.

Unit tests build scored rows by hand; the slow test runs a cheap slice of `make experiment-real`
(3 category folds, a few rows each, one training step) and checks the protocol from its journal and
files: no test or sibling row is taken out of a fold before every choice is written, and no test
dialogue is ever written to disk. It proves the wiring, not the numbers (those are in README).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, pipeline_env

from icd10_coder import experiment
from icd10_coder.experiment import Shortlisted


def scored(code: str, candidates: list[str], lls: list[float], retrieval: list[float] | None = None) -> Shortlisted:
    row = Shortlisted(code, "dialogue", code, tuple(candidates),
                      tuple(retrieval or [1 - i / 10 for i in range(len(candidates))]))
    row.loglikelihoods = {"baseline": lls, "finetuned": lls}
    row.token_counts = [5] * len(candidates)
    return row


def test_the_normalisation_is_chosen_on_dev_and_ties_go_to_per_character():
    # Summed log-likelihood favours the short wrong line; per character favours the gold's long description.
    long_gold, short_wrong = "J45.909", "R05.9"  # "Unspecified asthma, uncomplicated" vs "Cough, unspecified"
    rows = [scored(long_gold, [short_wrong, long_gold], [-20.0, -24.0])]
    picked = experiment.choose_normalisation(rows, "baseline")
    assert picked["value"] == "per_char" and picked["split"] == "dev"
    assert picked["dev_exact"]["sum"] == 0.0 and picked["dev_exact"]["per_char"] == 1.0
    tie = experiment.choose_normalisation([scored("A00.0", ["A00.0", "A00.1"], [-1.0, -2.0])], "baseline")
    assert tie["value"] == "per_char" and set(tie["dev_exact"].values()) == {1.0}


def outcomes_for(hits: dict[str, list[int]], folds: list[int]) -> list[dict]:
    rows = []
    for i, fold in enumerate(folds):
        rows.append({"id": f"r{i}", "fold": fold, "condition": "test", "gold": "A00.0", "chapter": "A",
                     "gold_in_shortlist": True,
                     "approaches": {a: {"exact_match": hits[a][i], "category_match": hits[a][i], "top3_match": 1}
                                    for a in experiment.APPROACHES}})
    return rows


def test_pooled_table_pairs_every_approach_with_retrieval_and_corrects_for_four_tests():
    folds = [0] * 10 + [1] * 10
    hits = {a: [0] * 20 for a in experiment.APPROACHES}
    hits["retrieval"] = [1] * 4 + [0] * 16
    hits["finetuned-choice"] = [1] * 4 + [1] * 10 + [0] * 6  # 10 more right, none lost
    table = experiment.pooled_table(outcomes_for(hits, folds), "test", folds=2)
    row = table["approaches"]["finetuned-choice"]
    assert row["exact"] == pytest.approx(0.7) and row["exact_fold_min"] == pytest.approx(0.4)  # fold 1: 4 of 10
    assert row["exact_fold_max"] == pytest.approx(1.0) and row["exact_fold_mean"] == pytest.approx(0.7)
    test = row["vs_retrieval"]
    assert (test["a_only"], test["b_only"]) == (0, 10)
    assert test["p_value"] == pytest.approx(2 / 2**10)
    assert test["p_holm"] == pytest.approx(min(1.0, 4 * test["p_value"]))  # smallest of four p-values
    assert row["exact_ci95"][0] < 0.7 < row["exact_ci95"][1]
    results = {"tables": {"test": table}, "best_model_approach": "finetuned-choice"}
    assert experiment.verdict(results).startswith("Target reached")
    results["best_model_approach"] = "baseline-choice"
    assert experiment.verdict(results).startswith("Target not reached")


def test_take_is_journalled_and_draws_the_same_rows_every_time(tmp_path):
    from icd10_coder.realdata import Fold, RealRow

    rows = tuple(RealRow(f"r{i}", "d", f"A0{i}.0") for i in range(8))
    fold = Fold(0, rows[:2], rows[2:4], (), rows[4:])
    journal = experiment.Journal(tmp_path / "journal.jsonl")
    settings = experiment.Settings(test_rows=2)
    first = experiment.take(fold, "test", settings, journal)
    assert first == experiment.take(fold, "test", settings, journal) and len(first) == 2
    assert [e["split"] for e in journal.events()] == ["test", "test"]


@pytest.mark.slow
def test_a_slice_makes_every_choice_on_dev_before_any_test_row_is_taken():
    from icd10_coder.realdata import REAL_FILES

    if not all(path.is_file() for path in REAL_FILES):
        pytest.skip("the shared real MedSynth files are not beside this checkout (../shared/data/)")
    workspace = Path(tempfile.mkdtemp(prefix="test-experiment-", dir=REPO / "outputs"))
    generated = REPO / "docs" / "generated" / "experiment-real.md"
    before = generated.read_bytes() if generated.is_file() else None
    try:
        result = subprocess.run(
            [sys.executable, "tools/experiment_real.py", "--workspace", str(workspace), "--train-rows", "2",
             "--dev-rows", "2", "--test-rows", "2", "--sibling-rows", "1", "--max-steps", "1", "--no-docs",
             "--retriever-variant", "tfidf (previous default)", "--retriever-variant", "tfidf + cue sentences"],
            cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=1500)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        report = workspace / "report"
        events = experiment.Journal(workspace / "journal.jsonl").events()
        names = [e["event"] for e in events]
        chosen_at = names.index("choices written")
        held_out = [i for i, e in enumerate(events) if e.get("split") in ("test", "sibling")]
        assert len(held_out) == 6 and min(held_out) > chosen_at  # 3 folds x 2 conditions, all after the choices
        assert names.count("trained") == 3
        choices = json.loads((report / "choices.json").read_text())
        for fold in choices["folds"].values():
            assert fold["retriever"]["split"] == "dev"
            for model in experiment.MODELS:
                assert fold[model]["normalisation"]["split"] == fold[model]["fusion_weight"]["split"] == "dev"
        assert choices["best_model_approach"]["split"].startswith("dev")
        results = json.loads((report / "results.json").read_text())
        assert results["tables"]["test"]["n"] == 6 and results["tables"]["sibling"]["n"] == 3
        assert set(results["tables"]["test"]["approaches"]) == set(experiment.APPROACHES)
        assert "Target" in (report / "report.md").read_text()
        # No test dialogue was ever written to disk (only ids and codes in outcomes.jsonl).
        from icd10_coder.realdata import load_real_rows

        by_id = {r.row_id: r.dialogue for r in load_real_rows()}
        outcomes = [json.loads(line) for line in (report / "outcomes.jsonl").read_text().splitlines()]
        snippets = [by_id[o["id"]][:300].encode() for o in outcomes]
        for path in workspace.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                data = path.read_bytes()
                assert not any(s in data for s in snippets), f"a test dialogue was written to {path}"
        assert (generated.read_bytes() if generated.is_file() else None) == before  # --no-docs kept the docs
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
