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

from icd10_coder import experiment, serving
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


def outcomes_for(hits: dict[str, list[int]], folds: list[int], slm: list[bool] | None = None) -> list[dict]:
    rows = []
    for i, fold in enumerate(folds):
        scored = slm[i] if slm else True
        approaches = experiment.APPROACHES if scored else experiment.RETRIEVAL_APPROACHES
        rows.append({"id": f"r{i}", "fold": fold, "gold": "A00.0", "chapter": "A", "slm": scored,
                     "gold_in_shortlist": {a: True for a in experiment.RETRIEVAL_APPROACHES},
                     "approaches": {a: {"exact_match": hits[a][i], "category_match": hits[a][i], "top3_match": 1}
                                    for a in approaches}})
    return rows


def test_pooled_table_pairs_every_approach_with_retrieval_and_corrects_for_five_tests():
    folds = [0] * 10 + [1] * 10
    hits = {a: [0] * 20 for a in experiment.APPROACHES}
    hits["retrieval"] = [1] * 4 + [0] * 16
    hits["finetuned-choice"] = [1] * 4 + [1] * 10 + [0] * 6  # 10 more right, none lost
    table = experiment.pooled_table(outcomes_for(hits, folds), "slm", folds=2)
    row = table["approaches"]["finetuned-choice"]
    assert row["exact"] == pytest.approx(0.7) and row["exact_fold_min"] == pytest.approx(0.4)  # fold 1: 4 of 10
    assert row["exact_fold_max"] == pytest.approx(1.0) and row["exact_fold_mean"] == pytest.approx(0.7)
    test = row["vs_retrieval"]
    assert (test["a_only"], test["b_only"]) == (0, 10)
    assert test["p_value"] == pytest.approx(2 / 2**10)
    assert test["p_holm"] == pytest.approx(min(1.0, 5 * test["p_value"]))  # smallest of five p-values
    assert row["exact_ci95"][0] < 0.7 < row["exact_ci95"][1]
    every = experiment.pooled_table(outcomes_for(hits, folds), "every", folds=2)
    assert set(every["approaches"]) == set(experiment.RETRIEVAL_APPROACHES)
    results = {"tables": {"every": every, "slm": table}, "settings": {"shortlist_k": 10}}
    assert experiment.verdict(results).startswith("Accuracy target reached")  # +50 points, p 0.005
    hits["finetuned-choice"] = [1] * 4 + [1] * 10 + [0] * 6
    hits["finetuned-choice"][:4] = [0, 0, 0, 0]  # 4 lost, 10 won: +30 points but p > 0.05 after Holm
    table = experiment.pooled_table(outcomes_for(hits, folds), "slm", folds=2)
    assert experiment.verdict({"tables": {"every": every, "slm": table},
                               "settings": {"shortlist_k": 10}}).startswith("Accuracy target not reached")


def test_the_every_row_table_counts_rows_the_slm_never_scored():
    folds = [0] * 6
    hits = {a: [1, 1, 0, 0, 0, 0] for a in experiment.APPROACHES}
    outcomes = outcomes_for(hits, folds, slm=[True, False, True, False, False, False])
    assert experiment.pooled_table(outcomes, "every", folds=1)["n"] == 6
    slm = experiment.pooled_table(outcomes, "slm", folds=1)
    assert slm["n"] == 2 and slm["approaches"]["finetuned-fused"]["exact"] == pytest.approx(0.5)


def test_the_prompt_is_chosen_on_dev_by_the_zero_shot_choice_and_ties_go_to_the_window():
    window = [scored("A00.0", ["A00.0", "A00.1"], [-1.0, -9.0]), scored("A00.1", ["A00.0", "A00.1"], [-1.0, -9.0])]
    whole = [scored("A00.0", ["A00.0", "A00.1"], [-1.0, -9.0]), scored("A00.1", ["A00.0", "A00.1"], [-9.0, -1.0])]
    picked = experiment.choose_prompt({"window": window, "whole": whole})
    assert picked["value"] == "whole" and picked["dev_exact"] == {"window": 0.5, "whole": 1.0}
    assert experiment.choose_prompt({"window": whole, "whole": whole})["value"] == "window"


def test_take_is_journalled_draws_the_same_rows_every_time_and_trains_on_the_siblings_too(tmp_path):
    from icd10_coder.realdata import Fold, RealRow

    rows = tuple(RealRow(f"r{i}", "d", f"A0{i}.0") for i in range(8))
    fold = Fold(0, rows[:2], rows[2:4], rows[4:5], rows[5:])
    journal = experiment.Journal(tmp_path / "journal.jsonl")
    first = experiment.take(fold, "test", 2, 0, journal)
    assert first == experiment.take(fold, "test", 2, 0, journal) and len(first) == 2
    assert {r.row_id for r in experiment.take(fold, "train", None, 0, journal)} == {"r0", "r1", "r4"}
    assert [e["split"] for e in journal.events()] == ["test", "test", "train"]


GENERATED = REPO / "docs" / "generated"


def tool(*arguments: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *arguments], cwd=REPO, env=pipeline_env(), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def slice_run():
    """A cheap slice of the experiment in its own workspace (removed afterwards); the docs must not change."""
    from icd10_coder.realdata import REAL_FILES

    if not all(path.is_file() for path in REAL_FILES):
        pytest.skip("the shared real MedSynth files are not beside this checkout (../shared/data/)")
    workspace = Path(tempfile.mkdtemp(prefix="test-experiment-", dir=REPO / "outputs"))
    before = {path.name: path.read_bytes() for path in GENERATED.iterdir()}
    try:
        tool("tools/experiment_real.py", "--workspace", str(workspace), "--lora-rows", "2", "--dev-rows", "3",
             "--prompt-choice-rows", "2", "--slm-test-rows", "2", "--test-rows", "3", "--max-steps", "1",
             "--encoder-epochs", "0.05", "--no-docs")
        yield workspace
        assert {path.name: path.read_bytes() for path in GENERATED.iterdir()} == before  # --no-docs kept the docs
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


@pytest.mark.slow
def test_a_slice_makes_every_choice_on_dev_before_any_test_row_is_taken(slice_run):
    workspace = slice_run
    report = workspace / "report"
    events = experiment.Journal(workspace / "journal.jsonl").events()
    names = [e["event"] for e in events]
    chosen_at = names.index("choices written")
    held_out = [i for i, e in enumerate(events) if str(e.get("split", "")).startswith("test")]
    assert len(held_out) == 6 and min(held_out) > chosen_at  # 3 folds x (every row, SLM rows), after choices
    assert names.count("trained") == names.count("encoder trained") == 3
    choices = json.loads((report / "choices.json").read_text())
    for fold in choices["folds"].values():
        for key in ("retriever_variants", "retrieval_encoder", "shortlist", "prompt"):
            assert fold[key]["split"] == "dev"
        assert set(fold["retriever_variants"]["dev"]) == set(experiment.retriever_variants("x"))
        for model in experiment.MODELS:
            assert fold[model]["normalisation"]["split"] == fold[model]["fusion_weight"]["split"] == "dev"
    assert choices["best_model_approach"]["split"].startswith("dev")
    results = json.loads((report / "results.json").read_text())
    every, slm = results["tables"]["every"], results["tables"]["slm"]
    assert every["n"] == sum(s["test"] for s in results["fold_sizes"]) and slm["n"] == 6
    assert set(slm["approaches"]) == set(experiment.APPROACHES)
    text = (report / "report.md").read_text()
    assert "Accuracy target" in text
    # The report counts the test rows the default retriever's form was chosen on (the retrieval study's dev rows).
    from icd10_coder.retrieval import DEFAULTS_CHOSEN_ON

    study = set(json.loads(DEFAULTS_CHOSEN_ON.read_text())["row_ids"])
    tested = [json.loads(line)["id"] for line in (report / "outcomes.jsonl").read_text().splitlines()]
    assert f"{len(study & set(tested))} of these {len(tested)} test rows" in text
    # The LoRA's training lists all hold the gold code; the dev lists are the retriever's.
    for fold in range(3):
        prepared = workspace / f"fold-{fold}" / "prepared-shortlist"
        for line in (prepared / "train.jsonl").read_text().splitlines():
            row = json.loads(line)
            assert row["gold_code"] in row["candidates"]
    # No fold wrote its own test dialogues to disk, and the report holds only ids and codes (a row tested in one
    # fold is a training row of the others, so it may appear in their folders).
    from icd10_coder.realdata import load_real_rows

    by_id = {r.row_id: r.dialogue for r in load_real_rows()}
    outcomes = [json.loads(line) for line in (report / "outcomes.jsonl").read_text().splitlines()]
    snippets = {fold: [by_id[o["id"]][:300].encode() for o in outcomes if o["fold"] == fold] for fold in range(3)}
    for path in workspace.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            top = path.relative_to(workspace).parts[0]
            own = snippets[int(top[5:])] if top.startswith("fold-") else sum(snippets.values(), [])
            data = path.read_bytes()
            assert not any(s in data for s in own), f"a test dialogue was written to {path}"


@pytest.mark.slow
def test_rescoring_calibrating_and_the_serving_model_reuse_what_the_experiment_chose(slice_run, tmp_path):
    """The test stage redone with the same fold models gives the same outcomes; the out-of-fold rows calibrate;
    the serving model trains on real rows with that scoring, records what it was fitted with, and is refused
    once its adapter changes."""
    from icd10_coder.dialogue_input import PredictionError
    from icd10_coder.loading import load_suggester
    from icd10_coder.workspace import Workspace

    report = slice_run / "report"
    outcomes = (report / "outcomes.jsonl").read_text()
    scores = [json.loads(line) for line in (report / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 6 and all(set(s["loglikelihoods"]) == set(experiment.MODELS) for s in scores)
    assert all(len(s["loglikelihoods"]["finetuned"]) == len(s["candidates"]) for s in scores)
    assert not any("dialogue" in s for s in scores)  # codes and numbers only
    tool("tools/experiment_real.py", "--workspace", str(slice_run), "--rescore-test", "--no-docs")
    assert (report / "outcomes.jsonl").read_text() == outcomes
    assert json.loads((report / "results.json").read_text())["rescored"]["minutes"] >= 0
    best = json.loads((report / "choices.json").read_text())["best_model_approach"]["value"]
    model = best.split("-")[0]
    tool("tools/calibrate.py", "--experiment", str(slice_run), "--model", model, "--resamples", "100", "--no-docs")
    calibrated = json.loads((report / "calibration.json").read_text())
    assert calibrated["rows"] == 6 and calibrated["methods"]["temperature"]["n"] == 6
    assert (report / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    serving_space = Workspace.at(REPO / "outputs" / f"test-serving-{tmp_path.name}")
    described = REPO / "docs" / "generated" / "serving-model.md"
    before = described.read_text()
    try:
        tool("tools/serving_model.py", "--experiment", str(slice_run), "--workspace", str(serving_space.root),
             "--rows", "12", "--max-steps", "1", "--encoder-epochs", "0.05")
        assert described.read_text() == before  # a slice describes nothing a user is served
        record = json.loads(serving_space.serving_file.read_text())
        assert record["trained_on"]["rows"] == 12 and record["approach"] == f"serving-{best}"
        lines = serving.describe_serving_model(record)
        assert "trained on 12 real rows" in lines[0] and record["trained_on"]["machine"] in lines[1]
        picked = calibrated["methods"][calibrated["picked"]]
        assert f"top-1 right {picked['accuracy']:.3f} on 6 out-of-fold rows" in lines[3]
        assert record["calibration"] == calibrated["scoring"]["calibration"]
        assert record["fusion_weight"] == calibrated["scoring"]["fusion_weight"]
        # Hashed: the data card always, the encoder when the chosen shortlist uses the fine-tuned one, the adapter
        # when the best approach is finetuned (a slice may choose either).
        assert "data_card" in record["fitted_with"]
        assert ("encoder" in record["fitted_with"]) == bool(record["retriever"]["encoder"])
        assert ("adapter" in record["fitted_with"]) == (model == "finetuned")
        card = json.loads((serving_space.prepared_shortlist / "data_card.json").read_text())
        assert card["splits"]["train"] == 12 and record["retriever"] == card["shortlist"]["retriever"]
        suggester = load_suggester(None, None, device="cpu", workspace=serving_space,
                                   serving_file=serving_space.serving_file)
        result = suggester.suggest(["Doctor: Any pain?\nPatient: My left knee hurts."], 3)[0]
        assert "trained on 12 real rows" in result["served_by"] and result["codes"]
        changed = next(REPO / item["path"] for item in record["fitted_with"].values())
        changed.write_bytes(changed.read_bytes() + b" ")
        with pytest.raises(PredictionError, match="tools/serving_model.py"):
            load_suggester(None, None, device="cpu", workspace=serving_space, serving_file=serving_space.serving_file)
    finally:
        shutil.rmtree(serving_space.root, ignore_errors=True)


@pytest.mark.slow
def test_choices_made_again_on_every_dev_row_rank_the_recorded_test_scores_as_scoring_them_again_would(slice_run):
    """--rechoose-dev scores every dev row (both prompts zero-shot, the fold's LoRA), keeps the run's own choices
    as 'earlier', takes no test row, and ranks the recorded test scores: the same outcomes as scoring the test
    rows again with the models under the new choices."""
    report = slice_run / "report"
    before = [json.loads(line) for line in (report / "outcomes.jsonl").read_text().splitlines()]
    first_choices = json.loads((report / "choices.json").read_text())
    journal = experiment.Journal(slice_run / "journal.jsonl")
    events_before = len(journal.events())
    tool("tools/experiment_real.py", "--workspace", str(slice_run), "--rechoose-dev", "--no-docs")
    choices = json.loads((report / "choices.json").read_text())
    assert choices["earlier"]["folds"] == {fold: {key: picked[key] for key in ("prompt", *experiment.MODELS)}
                                           for fold, picked in first_choices["folds"].items()}
    assert choices["earlier"]["best_model_approach"] == first_choices["best_model_approach"]
    for fold, picked in choices["folds"].items():
        dev_rows = picked["retriever_variants"]["rows"]
        assert picked["prompt"]["rows"] == dev_rows and picked["prompt"]["split"] == "dev"
        assert picked["prompt"]["value"] == first_choices["folds"][fold]["prompt"]["value"]  # what the LoRA learned
        for model in experiment.MODELS:
            assert picked[model]["normalisation"]["rows"] == picked[model]["fusion_weight"]["rows"] == dev_rows
    dev_scores = [json.loads(line) for line in (report / "dev_scores.jsonl").read_text().splitlines()]
    assert len(dev_scores) == sum(p["retriever_variants"]["rows"] for p in choices["folds"].values())
    assert all(len(s["whole_baseline"]) == len(s["loglikelihoods"]["finetuned"]) == len(s["candidates"])
               for s in dev_scores)
    assert not any("dialogue" in s for s in dev_scores)
    new_events = journal.events()[events_before:]
    assert not any(str(e.get("split", "")).startswith("test") for e in new_events)  # no test row taken
    after = [json.loads(line) for line in (report / "outcomes.jsonl").read_text().splitlines()]
    for old, new in zip(before, after, strict=True):
        for approach in experiment.RETRIEVAL_APPROACHES:
            assert new["approaches"][approach] == old["approaches"][approach]
    results = json.loads((report / "results.json").read_text())
    assert results["rechosen"]["minutes"] >= 0 and "--rechoose-dev" in (report / "report.md").read_text()
    reranked = (report / "outcomes.jsonl").read_text()
    tool("tools/experiment_real.py", "--workspace", str(slice_run), "--rescore-test", "--no-docs")
    assert (report / "outcomes.jsonl").read_text() == reranked
