"""Choice by likelihood, fusion with retrieval, and training rows that teach choosing (issue: beat the lookup)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import prepare_templated

import fuse
import run_eval
from icd10_coder import approach, calibration, choice, reporting
from icd10_coder.paths import EMBEDDED_MODEL, display_path
from icd10_coder.retrieval import RetrievalSettings
from icd10_coder.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
TASKS = str(REPO / "tasks")


# ---------------------------------------------------------------- ranking and fusion


def test_rank_orders_by_score_and_keeps_list_order_on_ties():
    assert choice.rank(["A00.0", "B00.0", "C00.0"], [-2.0, -1.0, -1.0]) == ["B00.0", "C00.0", "A00.0"]


def test_per_char_scores_do_not_punish_long_descriptions():
    short, long = "E11.9", "E11.65"  # "...without complications" vs "...with hyperglycemia": different lengths
    lines = choice.answer_lines([short, long])
    per_char = choice.per_char([-len(lines[0]) * 0.5, -len(lines[1]) * 0.5], [short, long])
    assert per_char == [pytest.approx(-0.5), pytest.approx(-0.5)]


def test_fusion_weight_zero_is_the_retriever_and_one_the_model():
    model, retrieval = [-3.0, -1.0, -2.0], [0.05, 0.01, 0.03]
    candidates = ["A", "B", "C"]
    assert choice.rank(candidates, choice.fused_scores(model, retrieval, 0.0)) == ["A", "C", "B"]
    assert choice.rank(candidates, choice.fused_scores(model, retrieval, 1.0)) == ["B", "C", "A"]
    with pytest.raises(ValueError):
        choice.fused_scores(model, retrieval, 1.5)


def test_choose_weight_picks_the_best_validation_weight_and_breaks_ties_towards_an_even_mix():
    # Row 1: the model is right, the retriever wrong; row 2: both right. Only weights > ~0.5 get row 1.
    rows = [(["A", "B"], [-1.0, -2.0], [0.01, 0.05], "A"), (["A", "B"], [-1.0, -2.0], [0.05, 0.01], "A")]
    weight, curve = choice.choose_weight(rows)
    assert curve[0.0] == 0.5 and curve[1.0] == 1.0 and curve[weight] == 1.0
    assert weight == min((w for w, v in curve.items() if v == 1.0), key=lambda w: (abs(w - 0.5), w))
    flat, _ = choice.choose_weight([(["A"], [-1.0], [0.1], "A")])
    assert flat == 0.5
    with pytest.raises(ValueError):
        choice.choose_weight([])


def test_choice_results_are_scored_like_an_answer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("task_utils", REPO / "tasks" / "icd10_medsynth" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"gold_code": "E11.9", "candidates": ["E11.65", "E11.9", "I10"]}
    lines = choice.answer_lines(doc["candidates"])
    results = [(-2.0 * len(lines[0]), False), (-0.1 * len(lines[1]), True), (-3.0 * len(lines[2]), False)]
    scores = utils.process_choice_results(doc, results)
    assert scores["exact_match"] == 1 and scores["top3_match"] == 1 and scores["parse_failure_rate"] == 0
    assert utils.process_choice_results({**doc, "gold_code": "I10"}, results)["exact_match"] == 0
    with pytest.raises(ValueError, match="shortlist"):
        utils.choice_lines({"id": "x", "candidates": []})


def test_one_prompt_pass_gives_the_same_loglikelihoods_as_full_passes(embedded_model):
    """The prefix-cached scorer behind icd10-hf-choice against the plain computation, on the real model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32).eval()
    prompt = "Doctor: your sugar is high. Patient: I am thirsty. Code:"
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    continuations = [tokenizer(line, add_special_tokens=False)["input_ids"]
                     for line in choice.answer_lines(["E11.9", "I10", "R63.1", "J06.9"])]
    continuations.append(tokenizer(" E", add_special_tokens=False)["input_ids"])  # one token: no packed step
    assert len(continuations[-1]) == 1 and len({len(tokens) for tokens in continuations}) > 2
    packed = choice.continuation_loglikelihoods(model, context, continuations)
    opening = choice.PromptOpenings.compute(model, [context[:6], context[:4]])
    assert len(opening.split(context)[1]) == len(context) - 6  # the longest opening it starts with
    assert opening.split(context[:5] + [0] + context[6:])[1] == context[4:5] + [0] + context[6:]
    assert opening.split([context[0] + 1] + context[1:]) == (None, [context[0] + 1] + context[1:])
    from_opening = choice.continuation_loglikelihoods(model, context, continuations, openings=opening)
    assert opening.split(context)[0].get_seq_length() == 6  # each use starts from an untouched copy
    for (total, greedy), (opened, opened_greedy), tokens in zip(packed, from_opening, continuations, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([context + tokens])).logits[0]
        logprobs = torch.log_softmax(logits[len(context) - 1:-1].float(), dim=-1)
        expected = float(sum(logprobs[i, t] for i, t in enumerate(tokens)))
        assert total == pytest.approx(expected, abs=1e-3) and opened == pytest.approx(expected, abs=1e-3)
        assert greedy == opened_greedy == all(int(logprobs[i].argmax()) == t for i, t in enumerate(tokens))


def test_predict_scores_the_same_tokens_and_loglikelihoods_as_the_lm_eval_choice_task(embedded_model):
    """lm-eval moves the prompt's trailing newline into each answer and splits a joint tokenisation; predict must
    score exactly that, or served and evaluated scores drift apart (to 1e-5 on a real demo dialogue)."""
    from icd10_coder.lm_eval_choice import PrefixCachedHFLM
    from icd10_coder.predictor import Predictor, prompt_messages
    from icd10_coder.realdata import read_embedded_rows

    dialogue = read_embedded_rows()[0]["Dialogue"][:1500]
    candidates = ["E11.9", "I10", "R63.1", "J06.9"]
    lm = PrefixCachedHFLM(pretrained=str(embedded_model), device="cpu", dtype="float32", batch_size=1)
    context = lm.apply_chat_template(prompt_messages(dialogue, candidates, excerpt=False))
    assert context.endswith("\n")  # the generation prompt: the newline lm-eval moves into the answer
    lines = choice.answer_lines(candidates)
    pairs = [lm._encode_pair(context, line) for line in lines]  # what lm-eval's loglikelihood() scores
    evaluated = lm._loglikelihood_tokens([((context, line), c, k) for line, (c, k) in zip(lines, pairs, strict=True)],
                                         disable_tqdm=True)
    served = Predictor(embedded_model, None, constrain=False, device="cpu").candidate_loglikelihoods(dialogue,
                                                                                                    candidates)
    assert [count for _, count in served] == [len(k) for _, k in pairs]
    assert [total for total, _ in served] == pytest.approx([total for total, _ in evaluated], abs=1e-5)
    for excerpt in (False, True):  # both run the prompt from the cached system prompt on, whole dialogue or window
        context_ids = pairs[0][0] if not excerpt else lm._encode_pair(
            lm.apply_chat_template(prompt_messages(dialogue, candidates, excerpt=True)), lines[0])[0]
        cache, rest = lm.openings.split(context_ids)
        assert cache is not None and lm.tokenizer.decode(rest).startswith("\nDoctor:")  # the last "\n": left out


# ---------------------------------------------------------------- data that teaches choosing


@pytest.fixture(scope="module")
def choose_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("choose")
    ranked = prepare_templated(root / "prepared-shortlist", "--shortlist", "5", "--shortlist-neighbours", "0")
    taught = prepare_templated(root / "prepared-choose", "--shortlist", "5", "--shortlist-neighbours", "0", "--choose")
    return ranked, taught


def rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_choose_rows_always_hold_the_gold_in_shuffled_order_and_test_rows_stay_ranked(choose_data):
    ranked, taught = choose_data
    for split in ("train", "val"):
        original, teaching = rows(ranked, split), rows(taught, split)
        assert all(r["gold_code"] in r["candidates"] for r in teaching)
        assert all(len(r["candidates"]) == len(r["candidate_scores"]) for r in teaching)
        assert any(a["candidates"] != b["candidates"] for a, b in zip(original, teaching, strict=True))
        for row in teaching:  # the prompt shows the list the row carries
            assert all(code in row["messages"][1]["content"] for code in row["candidates"])
    assert (ranked / "test.jsonl").read_bytes() == (taught / "test.jsonl").read_bytes()
    card = json.loads((taught / "data_card.json").read_text())
    assert card["shortlist"]["choose"]["rows"] == len(rows(taught, "train")) + len(rows(taught, "val"))


def test_choose_needs_a_shortlist(tmp_path):
    import prepare

    result = CliRunner().invoke(prepare.main, ["--demo", "--choose", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "--choose needs --shortlist" in result.output


def test_choice_tasks_load_test_and_validation_rows(choose_data):
    from lm_eval.tasks import TaskManager

    ranked, _ = choose_data
    manager = TaskManager(include_path=TASKS, metadata={"data_dir": str(ranked)})
    tasks = manager.load_task_or_group(["icd10_medsynth_choice", "icd10_medsynth_choice_val"])
    test_task, val_task = tasks["icd10_medsynth_choice"], tasks["icd10_medsynth_choice_val"]
    doc = next(iter(test_task.test_docs()))
    assert test_task.OUTPUT_TYPE == "multiple_choice"
    assert test_task.doc_to_choice(doc) == choice.answer_lines(doc["candidates"])
    val_doc = next(iter(val_task.test_docs()))
    assert val_doc["user"].startswith("Dialogue:") and val_doc["candidates"] and val_doc["system"]
    assert len(list(val_task.test_docs())) == len(rows(ranked, "val"))


# ---------------------------------------------------------------- run configs, fusion tool, report


def test_run_eval_routes_choice_configs(tmp_path, choose_data):
    ranked, _ = choose_data
    space = Workspace.at(tmp_path / "ws")
    config = REPO / "recipes" / "eval" / "baseline-slm-choice.yml"
    with pytest.raises(Exception, match="--shortlist"):
        run_eval.load_config(config, (), None, None, False, workspace=space)
    with pytest.raises(Exception, match="choice task"):
        run_eval.load_config(REPO / "recipes" / "eval" / "baseline-slm.yml", (), None, ranked, False,
                             workspace=space, split="val")
    val = run_eval.load_config(config, (), None, None, False, workspace=space, shortlist=True, split="val",
                               name="finetuned-slm-choose-choice")
    assert val["tasks"] == ["icd10_medsynth_choice_val"] and val["model"] == "icd10-hf-choice"
    assert val["output_path"] == str(space.validation_dir / "finetuned-slm-choose-choice-shortlist")
    test = run_eval.load_config(config, (), None, ranked, False, workspace=space, shortlist=True)
    assert test["tasks"] == ["icd10_medsynth_choice"] and test["output_path"].endswith("baseline-slm-choice-shortlist")


def test_folder_names_alone_label_only_the_four_families():
    assert reporting.label("retrieval") == "Retrieval (no model)" and reporting.label("baseline-llm") == "Baseline LLM"
    assert reporting.label("finetuned-slm-shortlist") == "finetuned-slm-shortlist"  # no parsing of names


def write_choice_log(folder: Path, task: str, docs: list[dict], model_scores: list[list[float]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"samples_{task}_2026-11-29T10-00-00.jsonl").open("w") as handle:
        for doc, scores in zip(docs, model_scores, strict=True):
            lines = choice.answer_lines(doc["candidates"])
            resps = [[str(s * len(line)), "False"] for s, line in zip(scores, lines, strict=True)]
            handle.write(json.dumps({"doc_id": doc["id"], "doc": doc, "filtered_resps": resps}) + "\n")
    if task != fuse.VAL_TASK:
        (folder / "results_2026-11-29T10-00-00.json").write_text(json.dumps({"results": {task: {}}}))


def test_fuse_chooses_the_weight_on_validation_and_applies_it_to_test_once(tmp_path):
    space = Workspace.at(tmp_path / "ws")
    name = "finetuned-slm-choice-shortlist"

    def doc(i: int, gold: str) -> dict:
        return {"id": f"row-{i}", "gold_code": gold, "candidates": ["E11.9", "I10", "R63.1"],
                "candidate_scores": [0.05, 0.03, 0.01], "chapter": "4"}

    # Validation: the model is right where the retriever is wrong, so fusion leans on the model.
    val_docs = [doc(i, "I10") for i in range(4)]
    write_choice_log(space.validation_dir / name / "m", fuse.VAL_TASK, val_docs, [[-3.0, -0.5, -2.0]] * 4)
    test_docs = [doc(10, "I10"), doc(11, "E11.9")]
    write_choice_log(space.eval_dir / name / "m", "icd10_medsynth_choice_unseen", test_docs,
                     [[-3.0, -0.5, -2.0], [-0.2, -3.0, -2.0]])
    refused = CliRunner().invoke(fuse.main, [name, "--workspace", str(space.root)])
    assert refused.exit_code != 0 and "has no approach.json" in refused.output  # what was fused must say what it is
    approach.write(space.eval_dir / name, approach.record(
        name=name, config={"model": "icd10-hf-choice", "model_args": {"pretrained": "m", "peft": "a"},
                           "tasks": ["icd10_medsynth_choice_unseen"]},
        shortlist=True, split="test", data_card=None, adapter_dir=None, source_config="recipes/eval/x.yml"))
    result = CliRunner().invoke(fuse.main, [name, "--workspace", str(space.root)])
    assert result.exit_code == 0, result.output
    fused = space.eval_dir / (name + fuse.FUSED_SUFFIX)
    record = json.loads((fused / "fusion.json").read_text())
    # Any weight above 1/3 gets all four right; the tie rule takes the even mix.
    assert record["weight"] == 0.5 and record["validation_rows"] == 4
    curve = record["validation_exact_match_by_weight"]
    assert curve["0.0"] == 0.0 and curve["0.3"] == 0.0 and curve["0.35"] == 1.0
    loaded = reporting.load_approach(fused, reporting.UNSEEN_TASK)
    assert loaded is not None and loaded.n == 2 and loaded.per_item("exact_match") == {"row-10": 1, "row-11": 1}
    assert loaded.label == "Finetuned SLM + shortlist (choice by likelihood, fused with retrieval)"


def test_fuse_refuses_without_validation_scores(tmp_path):
    result = CliRunner().invoke(fuse.main, ["baseline-slm-choice-shortlist", "--workspace", str(tmp_path / "ws")])
    assert result.exit_code != 0 and "--split val" in result.output


# ---------------------------------------------------------------- the served score and its calibration


def test_score_shortlist_on_a_hand_worked_list():
    """Summed log-likelihoods [-4, -1, -2] min-max to [0, 1, 2/3]; retrieval [0.9, 0.1, 0.5] to [1, 0, 1/2]."""
    candidates, lls, retrieval = ["E11.9", "I10", "J06.9"], [-4.0, -1.0, -2.0], [0.9, 0.1, 0.5]

    def scored(weight: float, temperature: float = 1.0) -> list:
        return choice.score_shortlist(candidates, lls, retrieval,
                                      choice.Scoring("sum", weight, calibration.Calibrator(temperature=temperature)))

    assert [s.code for s in scored(0.0)] == ["E11.9", "J06.9", "I10"]  # the retriever's order
    assert [s.code for s in scored(1.0)] == ["I10", "J06.9", "E11.9"]  # the model's order
    # Weight 1/2: E11.9 and I10 both 0.5, J06.9 2/3 x 1/2 + 1/2 x 1/2 = 0.5833; the tie keeps the list's order.
    half = scored(0.5)
    assert [s.code for s in half] == ["J06.9", "E11.9", "I10"]
    assert [s.fused for s in half] == [pytest.approx(0.583333), 0.5, 0.5]
    # Weight 1, temperature 1/2: softmax of [0, 2, 4/3] = 0.6065 / 0.3114 / 0.0821.
    assert [round(s.probability, 4) for s in scored(1.0, 0.5)] == [0.6065, 0.3114, 0.0821]
    # A higher temperature spreads the probability: the top candidate gets less.
    cold = choice.score_shortlist(candidates, lls, retrieval, choice.Scoring("per_char", 0.5, calibration.Calibrator(
        temperature=0.05)))
    warm = choice.score_shortlist(candidates, lls, retrieval, choice.Scoring("per_char", 0.5, calibration.Calibrator(
        temperature=1.0)))
    assert cold[0].probability > warm[0].probability > 0.25


def test_fitted_temperature_follows_how_often_the_top_candidate_is_right():
    confident = [([1.0, 0.1, 0.0], True)] * 20  # the top always right: as sharp as the grid allows
    assert calibration.fit_temperature(confident) == min(calibration.TEMPERATURE_GRID)
    hopeless = [([1.0, 0.9, 0.8, 0.0], False)] * 20  # never right: as flat as the grid allows
    assert calibration.fit_temperature(hopeless) == max(calibration.TEMPERATURE_GRID)
    # Right 40% of the time with the same margins: the fitted top probability is near 0.4.
    mixed = [([1.0, 0.5, 0.2, 0.0], True)] * 8 + [([1.0, 0.5, 0.2, 0.0], False)] * 12
    temperature = calibration.fit_temperature(mixed)
    top = max(calibration.probabilities([1.0, 0.5, 0.2, 0.0], temperature))
    assert top == pytest.approx(0.4, abs=0.03)
    with pytest.raises(ValueError):
        calibration.fit_temperature([])


def test_scoring_record_round_trips():
    scoring = choice.Scoring("sum", 0.35, calibration.Calibrator(temperature=0.125))
    assert choice.Scoring.from_record(json.loads(json.dumps(scoring.as_record()))) == scoring


def test_the_served_record_is_the_best_on_dev_and_a_tie_goes_to_the_finetuned_one(tmp_path):
    from icd10_coder import serving

    def record(name: str, exact: float, adapter: str | None) -> dict:
        return serving.scoring_record(approach=name, base_model="m", adapter=adapter,
                                      shortlist={"k": 10, "retriever": RetrievalSettings().as_record()},
                                      scoring=choice.Scoring().as_record(),
                                      dev={"split": "val", "rows": 9, "exact_match": exact}, test_calibration={},
                                      data_card=None, refit="this test")

    weights = tmp_path / "adapters" / "x" / "adapter_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    base, tuned = record("baseline-fused", 0.5, None), record("finetuned-fused", 0.5, str(weights.parent))
    assert serving.best_on_dev([base, tuned])["approach"] == "finetuned-fused"
    assert serving.best_on_dev([record("baseline-fused", 0.6, None), tuned])["approach"] == "baseline-fused"
    with pytest.raises(ValueError):
        serving.best_on_dev([])
    path = serving.write_serving(tmp_path / "serving.json", tuned, [base, tuned])
    read = serving.read_record(path)
    assert read["compared_on_dev"] == {"baseline-fused": 0.5, "finetuned-fused": 0.5}
    assert choice.Scoring.from_record(read) == choice.Scoring()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    serving.write_record(tuned, tmp_path, adapter)
    assert serving.read_record(adapter) == tuned == serving.read_record(tmp_path / "scoring.json")
    (tmp_path / "old.json").write_text(json.dumps({**tuned, "version": 0}))
    with pytest.raises(ValueError, match="run tools/fuse.py again"):
        serving.read_record(tmp_path / "old.json")


def test_approach_records_name_what_ran_without_reading_folder_names(tmp_path):
    from icd10_coder import approach

    def rec(model: str, model_args: dict, tasks: list[str], shortlist: bool) -> dict:
        return approach.record(name="anything", config={"model": model, "model_args": model_args, "tasks": tasks},
                               shortlist=shortlist, split="test", data_card=None, adapter_dir=None,
                               source_config="recipes/eval/x.yml")

    retrieval = rec("icd10-retrieval", {"neighbours": 0}, ["icd10_medsynth"], True)
    assert retrieval["family"] == "retrieval" and approach.label(retrieval) == "Retrieval (no model)"
    llm = rec("local-chat-completions", {"model": "m", "base_url": "http://127.0.0.1:1/v1"}, ["icd10_medsynth"], True)
    assert approach.label(llm) == "Baseline LLM + shortlist"
    stand_in = rec("local-chat-completions", {"model": display_path(EMBEDDED_MODEL)}, ["icd10_medsynth"], True)
    assert approach.label(stand_in).startswith("Baseline LLM stand-in (the embedded SLM")  # the demo's: marked
    tuned = rec("icd10-hf-choice", {"pretrained": "m", "peft": "a"}, ["icd10_medsynth_choice"], True)
    assert tuned["adapter"] == "a" and approach.label(tuned) == "Finetuned SLM + shortlist (choice by likelihood)"
    fused = approach.fused(tuned, "other-name", {"fusion_weight": 0.5})
    assert approach.label(fused) == "Finetuned SLM + shortlist (choice by likelihood, fused with retrieval)"
    plain = rec("hf", {"pretrained": "m"}, ["icd10_medsynth"], False)
    assert approach.label(plain) == "Baseline SLM" and plain["scorer"].startswith("generation")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")

    def adapter_sha256() -> str | None:
        return approach.record(name="x", config={"model": "hf", "model_args": {"peft": "adapter"}}, shortlist=True,
                               split="test", data_card=None, adapter_dir=adapter, source_config="")["adapter_sha256"]

    from icd10_coder.audit import adapter_hash

    before = adapter_sha256()
    assert before == adapter_hash(adapter)  # the same identity the app's audit log records
    (adapter / "icd10_scoring.json").write_text("{}")  # fuse writes it later: the adapter stays the same one
    assert adapter_sha256() == before
    (adapter / "adapter_model.safetensors").write_bytes(b"other weights")
    assert before != adapter_sha256()
    nothing = approach.record(name="x", config={}, shortlist=False, split="test", data_card=tmp_path / "missing",
                              adapter_dir=None, source_config="")
    assert nothing["adapter_sha256"] is None and nothing["data_card_sha256"] is None
