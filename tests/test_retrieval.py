"""Retrieval (no model) and the shortlist: ranking, neighbours, cache, prepare --shortlist, the
lm-eval approach, predict's prompt-variant record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import prepare_templated

import report
import run_eval
from icd10_coder import approach, reporting
from icd10_coder.codes import normalize_code
from icd10_coder.dialogue import clean_dialogue
from icd10_coder.offline import subprocess_env
from icd10_coder.prompts import PROMPT_RECORD
from icd10_coder.retrieval import RetrievalSettings, Retriever, cache_key, load_or_fit, recall_at
from icd10_coder.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
CODES_ONLY = RetrievalSettings(neighbours=0)
# Word matching alone: a dialogue sharing no word with any code text gets no candidate (dense always finds some).
WORDS_ONLY = RetrievalSettings(neighbours=0, query_parts=("whole",), dense_weight=0.0)


@pytest.fixture(scope="module")
def retriever() -> Retriever:
    return Retriever.fit(CODES_ONLY)


def test_the_described_code_ranks_first_and_ranking_is_deterministic(retriever):
    dialogue = ("Doctor: What brings you in?\nPatient: My knee hurts, the left one.\n"
                "Doctor: This is pain in the left knee.")
    first = retriever.shortlist([dialogue], 10)[0]
    assert first[0][0] == "M25.562" and len(first) == 10
    assert [score for _, score in first] == sorted((score for _, score in first), reverse=True)
    assert retriever.shortlist([dialogue], 10)[0] == first  # same input, same list


def test_training_neighbours_bring_in_their_codes_but_never_a_row_itself():
    marker = "zorblax quibbertine flumox"  # words no code text has: only the neighbour can match
    train = [(f"I have {marker}.", "A92.8"), ("my knee hurts", "M25.562")]
    retriever = Retriever.fit(RetrievalSettings(neighbours=2, query_parts=("whole",), dense_weight=0.0), train)
    assert retriever.shortlist([f"still {marker}"], 5)[0][0][0] == "A92.8"
    assert Retriever.fit(WORDS_ONLY).shortlist([f"still {marker}"], 5)[0] == []  # nothing matches: no guesses
    own = retriever.shortlist([train[0][0]], 5, exclude_self=[0])[0]
    assert "A92.8" not in [c for c, _ in own]  # the row's own gold code does not leak into its shortlist


def test_the_index_cache_is_reused_and_rebuilt_when_its_inputs_change(tmp_path):
    train = [("Patient: my knee hurts", "M25.562")]
    load_or_fit(tmp_path, CODES_ONLY, train)
    load_or_fit(tmp_path, CODES_ONLY, train)
    assert len(list(tmp_path.glob("index-*.joblib"))) == 1
    changed = [("Patient: my knee hurts badly", "M25.562")]
    assert cache_key(CODES_ONLY, train) != cache_key(CODES_ONLY, changed)
    load_or_fit(tmp_path, CODES_ONLY, changed)
    assert len(list(tmp_path.glob("index-*.joblib"))) == 2
    assert all(oct(p.stat().st_mode)[-3:] == "600" for p in tmp_path.glob("index-*.joblib"))


def test_fused_retriever_beats_descriptions_alone_on_real_dialogues(medsynth_sample):
    rows = [json.loads(line) for line in medsynth_sample.read_text().splitlines() if line.strip()]
    dialogues = [clean_dialogue(r["Dialogue"]) for r in rows]
    gold = [normalize_code(r["ICD10"]) for r in rows]

    def recall(settings: RetrievalSettings) -> dict:
        ranked = Retriever.fit(settings).shortlist(dialogues, 10)
        return recall_at([[c for c, _ in r] for r in ranked], gold, ks=(1, 10))["code"]

    baseline = recall(RetrievalSettings(views=("description",), ngram_max=2, neighbours=0))
    fused = recall(CODES_ONLY)
    assert fused[1] > baseline[1] and fused[10] >= baseline[10], (fused, baseline)


def test_prepare_shortlist_puts_candidates_in_every_split_and_keeps_the_gold_answer(tmp_path):
    out = prepare_templated(tmp_path / "prepared-shortlist", "--shortlist", "3")
    card = json.loads((out / "data_card.json").read_text())
    assert card["shortlist"]["k"] == 3 and set(card["shortlist"]["recall_at_k"]) == {"train", "val", "test"}
    assert "Shortlist in every prompt" in (out / "data_card.md").read_text()
    for split in ("train", "val"):
        for line in (out / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            user, answer = record["messages"][1]["content"], record["messages"][2]["content"]
            assert "Candidate codes" in user and answer.startswith(record["gold_code"] + " - ")
    tests = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert all(len(t["candidates"]) == 3 and t["candidates"][0] in t["user"] for t in tests)
    measured = sum(t["gold_code"] in t["candidates"] for t in tests) / len(tests)
    assert card["shortlist"]["recall_at_k"]["test"] == pytest.approx(measured, abs=1e-4)


def test_retrieval_is_an_approach_scored_by_the_same_task(tmp_path):
    space = Workspace.at(tmp_path / "ws")
    prepare_templated(space.prepared)
    result = subprocess.run([sys.executable, "tools/run_eval.py", "--workspace", str(space.root),
                             "recipes/eval/retrieval.yml"], cwd=REPO, env=subprocess_env(hub_offline=True),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [json.loads(line) for line in next((space.eval_dir / "retrieval").rglob(
        "samples_icd10_medsynth_[0-9]*.jsonl")).read_text().splitlines()]
    assert samples and all(s["resps"][0][0].count("\n") == 2 for s in samples)  # top code + 2 alternatives
    assert all(s["filtered_resps"][0] for s in samples)  # parsed like any model's answer
    assert (space.retrieval_cache).is_dir()
    summary_run = CliRunner().invoke(report.main, ["--workspace", str(space.root), "--no-mlflow"])
    assert summary_run.exit_code == 0, summary_run.output
    summary = json.loads((space.report_dir / "summary.json").read_text())
    assert summary["approaches"]["retrieval"]["status"] == "present"
    assert summary["approaches"]["retrieval"]["model"] == "icd10-retrieval"
    assert "Retrieval (no model)" in (space.report_dir / "report.md").read_text()


def test_retrieval_ranks_with_the_data_cards_retriever_unless_told_otherwise(tmp_path):
    from icd10_coder.lm_eval_retrieval import effective_settings

    space = Workspace.at(tmp_path / "ws")
    space.prepared_shortlist.mkdir(parents=True)
    recorded = RetrievalSettings(neighbours=0, dense_weight=4.0, encoder="outputs/encoders/x")
    (space.prepared_shortlist / "data_card.json").write_text(json.dumps({"shortlist": {"k": 3, "retriever":
                                                                                       recorded.as_record()}}))
    config = run_eval.load_config(REPO / "recipes/eval/retrieval.yml", (), None, None, False, None, space,
                                  shortlist=True)
    args = config["model_args"]
    assert args["retriever_card"] == str(space.prepared_shortlist / "data_card.json")
    assert args["encoder"] == "outputs/encoders/x" and "neighbours" not in args  # labelled by what it runs
    card = json.loads((space.prepared_shortlist / "data_card.json").read_text())["shortlist"]["retriever"]
    assert effective_settings(card, args.get("neighbours"), args["encoder"]) == recorded
    zero_shot = run_eval.load_config(REPO / "recipes/eval/retrieval.yml", ("encoder=",), None, None, False, None,
                                     space, shortlist=True)["model_args"]
    assert zero_shot["encoder"] == ""
    assert effective_settings(card, None, "") == RetrievalSettings(neighbours=0, dense_weight=4.0)
    assert effective_settings(None, 3, None) == RetrievalSettings(neighbours=3)  # no card: the defaults


def test_shortlist_runs_get_their_own_approach_names(tmp_path):
    space = Workspace.at(tmp_path / "ws")
    space.prepared_shortlist.mkdir(parents=True)
    config = run_eval.load_config(REPO / "recipes/eval/baseline-slm.yml", (), None, None, False, None, space,
                                  shortlist=True)
    assert config["output_path"] == str(space.eval_dir / "baseline-slm-shortlist")
    assert config["metadata"]["data_dir"] == str(space.prepared_shortlist)
    record = approach.record(name="baseline-slm-shortlist", config=config, shortlist=True, split="test",
                             data_card=None, adapter_dir=None, source_config="recipes/eval/baseline-slm.yml")
    assert approach.label(record) == "Baseline SLM + shortlist"  # from what ran, not from the folder's name
    assert reporting.label("retrieval") == "Retrieval (no model)"


def test_predict_refuses_to_prompt_an_adapter_unlike_its_training(tmp_path, embedded_model):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / PROMPT_RECORD).write_text(json.dumps({"prompt_variant": "shortlist", "shortlist_k": 5}))
    dialogue = tmp_path / "d.txt"
    dialogue.write_text("Doctor: What brings you in?\nPatient: my left knee hurts")
    result = subprocess.run([sys.executable, "tools/predict.py", str(dialogue), "--adapter", str(adapter),
                             "--no-shortlist"], cwd=REPO, env=subprocess_env(hub_offline=True), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0 and "trained on shortlist prompts" in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_with_shortlist_shows_it_in_json(tmp_path, embedded_model):
    dialogue = tmp_path / "d.txt"
    dialogue.write_text("Doctor: What brings you in?\nPatient: my left knee hurts.\nDoctor: pain in the left knee.")
    result = subprocess.run([sys.executable, "tools/predict.py", str(dialogue), "--adapter", "none", "--shortlist",
                             "--shortlist-k", "4", "--json", "--top-k", "1", "--workspace", str(tmp_path / "ws")],
                            cwd=REPO, env=subprocess_env(hub_offline=True), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert [c["code"] for c in answer["shortlist"]][0] == "M25.562" and len(answer["shortlist"]) == 4
    assert answer["codes"] and answer["codes"][0]["billable"]


def test_query_parts_pick_the_doctors_turns_and_the_sentences_that_name_a_diagnosis():
    from icd10_coder.dialogue import sentences
    from icd10_coder.retrieval import query_text

    dialogue = ("Doctor: How are you? I see you had a cold.\nPatient: My chest is tight.\n"
                "Doctor: Your symptoms are consistent with asthma. We'll start an inhaler.")
    assert query_text(dialogue, "doctor").splitlines() == [dialogue.splitlines()[0], dialogue.splitlines()[2]]
    assert query_text(dialogue, "cues") == "Doctor: Your symptoms are consistent with asthma."
    assert query_text("Patient: hello there", "cues") == "Patient: hello there"  # no cue: the whole dialogue
    assert "My chest is tight." in sentences(dialogue)  # speaker tags gone
    with pytest.raises(ValueError, match="unknown query part"):
        Retriever.fit(RetrievalSettings(neighbours=0, query_parts=("whole", "nurse")))


def test_dense_retrieval_finds_a_diagnosis_described_in_other_words_than_the_code_text():
    # No word of "Type 2 diabetes mellitus without complications" except "sugar"-free paraphrase: dense only.
    dialogue = ("Doctor: Your blood sugar tests came back high again.\n"
                "Doctor: This means your body no longer handles glucose well: adult-onset sugar disease.")
    dense = Retriever.fit(RetrievalSettings(neighbours=0, views=(), query_parts=("whole",), dense_weight=1.0))
    found = [code for code, _ in dense.shortlist([dialogue], 20)[0]]
    assert any(code.startswith(("E11", "R73", "E13")) for code in found[:10]), found


def test_a_dialogues_shortlist_does_not_depend_on_the_dialogues_scored_beside_it(medsynth_sample):
    """Evaluation shortlists a whole split at once, predict/app one dialogue: the served list must be the one
    the evaluation logged, so a dialogue's sentence vectors may not depend on its batch neighbours."""
    import numpy as np

    from icd10_coder.retrieval import clear_caches

    rows = [json.loads(line) for line in medsynth_sample.read_text().splitlines() if line.strip()][:12]
    dialogues = [clean_dialogue(r["Dialogue"]) for r in rows]
    retriever = Retriever.fit(RetrievalSettings(neighbours=0, views=(), query_parts=("whole",), dense_weight=1.0))
    clear_caches(dialogues_only=True)
    together = retriever.sentence_vectors(dialogues)
    lists = retriever.shortlist(dialogues, 10)
    for i, dialogue in enumerate(dialogues):
        clear_caches(dialogues_only=True)
        assert np.array_equal(retriever.sentence_vectors([dialogue])[0], together[i])
        assert retriever.shortlist([dialogue], 10)[0] == lists[i]


def test_the_default_retriever_is_the_variant_the_study_chose_on_dev():
    """RetrievalSettings() (codes only) equals the variant named in docs/generated/retrieval-study.md."""
    from dataclasses import replace

    from icd10_coder.retrieval_study import VARIANTS

    table = (REPO / "docs" / "generated" / "retrieval-study.md").read_text()
    chosen = table.split("Chosen on dev: **", 1)[1].split("**", 1)[0]
    assert VARIANTS[chosen] == replace(RetrievalSettings(), neighbours=0)


def test_the_record_of_the_rows_the_defaults_were_chosen_on_is_the_studys_dev_rows(tmp_path):
    """The study's table and its dev-row record describe the same rows; a test split is told which of its rows the
    defaults were chosen on."""
    import json

    from icd10_coder.realdata import REAL_FILES, category_folds, load_real_rows
    from icd10_coder.retrieval import DEFAULTS_CHOSEN_ON, defaults_chosen_on

    record = json.loads(DEFAULTS_CHOSEN_ON.read_text())
    table = (REPO / "docs" / "generated" / "retrieval-study.md").read_text()
    assert f"of the {record['rows']} real rows" in table
    files = [p for p in REAL_FILES if p.name in record["files"]]
    if all(p.is_file() for p in files):
        folds = category_folds(load_real_rows(tuple(files)), folds=record["folds"], seed=record["seed"])
        assert record["row_ids"] == sorted({r.row_id for f in folds for r in f.dev})
    (tmp_path / "study.json").write_text(json.dumps({**record, "row_ids": ["a-1", "a-2", "a-3"]}))
    found = defaults_chosen_on(["a-2", "b-1", "a-1", "a-2"], tmp_path / "study.json")
    assert found == {"test_rows": 3, "among_study_dev_rows": ["a-1", "a-2"], "study_dev_rows": 3,
                     "study_files": record["files"]}
    assert defaults_chosen_on(["a-1"], tmp_path / "absent.json") is None


def test_settings_travel_as_records_and_incomplete_records_are_refused(tmp_path):
    from icd10_coder.predictor import Shortlister

    assert RetrievalSettings.from_record(RetrievalSettings().as_record()) == RetrievalSettings()
    recorded = {**RetrievalSettings().as_record(), "dense_weight": 0.0, "query_parts": ["whole"], "neighbours": 0}
    settings = RetrievalSettings.from_record(recorded)
    assert settings.dense_weight == 0.0 and settings.query_parts == ("whole",)
    with pytest.raises(ValueError, match="unknown settings"):
        RetrievalSettings.from_record({**recorded, "rerank": True})
    old = {"views": ["description", "full"], "neighbours": 0, "neighbour_weight": 1.0, "ngram_max": 3}  # before dense
    with pytest.raises(ValueError, match=r"lacks \['category_weight', 'dense_weight', 'encoder'.*make prepare"):
        RetrievalSettings.from_record(old)
    shortlister = Shortlister(5, None, tmp_path, recorded)  # what predict and the app build for such an adapter
    dialogue = "Doctor: This is pain in the left knee."
    assert shortlister.settings == settings
    assert shortlister([dialogue]) == Retriever.fit(settings).shortlist([clean_dialogue(dialogue)], 5)


def test_the_study_scores_variants_on_dev_rows_only_and_names_the_best():
    from icd10_coder.realdata import Fold, RealRow
    from icd10_coder.retrieval_study import VARIANTS, best_variant, dev_recall, markdown_table

    knee = RealRow("dev-1", "Doctor: This is pain in the left knee, consistent with pain in left knee.", "M25.562")
    test = RealRow("test-1", "Doctor: You have asthma.", "J45.909")  # a test row: must never be ranked
    folds = [Fold(0, (), (knee,), (), (test,)), Fold(1, (), (), (), ())]
    chosen = {name: VARIANTS[name] for name in ("tfidf (previous default)", "tfidf on cue sentences only")}
    results = dev_recall(folds, chosen)
    for result in results.values():
        assert result["pooled"]["n"] == 1 and result["by_fold"][0]["n"] == 1  # the dev row, not the test row
        assert result["pooled"]["code"][1] == 1.0
    assert best_variant(results) == "tfidf (previous default)"  # a tie goes to the earlier, simpler variant
    table = markdown_table(results, "tfidf (previous default)")
    assert "**tfidf (previous default)** (default)" in table and table.count("\n") == 3
