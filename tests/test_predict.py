"""tools/predict.py: single, stdin and batch use; bad input; constrained decoding never invents codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import prepare_templated

from icd10_coder.codes import is_billable
from icd10_coder.constrained import CodePrefixConstraint
from icd10_coder.offline import subprocess_env

REPO = Path(__file__).resolve().parents[1]
PREDICT = [sys.executable, str(REPO / "tools" / "predict.py")]
DIALOGUE = ("[doctor]: What brings you in today?[patient]: I'm always thirsty and I pee a lot. It has been going on "
            "for about a month.[doctor]: Based on what you describe, this is type 2 diabetes mellitus without "
            "complications.[patient]: Thank you, doctor.")


def predict(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*PREDICT, *args], input=stdin.encode() if isinstance(stdin, str) else stdin,
                          capture_output=True, env=subprocess_env(hub_offline=True), cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def dialogue_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("predict") / "dialogue.txt"
    path.write_text(DIALOGUE)
    return path


def test_single_file_human_readable(dialogue_file, embedded_model):
    result = predict(str(dialogue_file), "--adapter", "none", "--top-k", "2")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    out = result.stdout.decode()
    assert out.startswith("1. ") and "model answer:" in out and "[billable]" in out


def test_stdin_json_codes_are_valid_and_described(embedded_model):
    result = predict("-", "--adapter", "none", "--json", "--top-k", "3", stdin=DIALOGUE)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    answer = json.loads(result.stdout)
    assert 1 <= len(answer["codes"]) <= 3 and answer["raw_answer"]
    assert [c["rank"] for c in answer["codes"]] == list(range(1, len(answer["codes"]) + 1))
    for code in answer["codes"]:
        assert code["billable"] and is_billable(code["code"]) and code["description"]
        assert 0.0 <= code["beam_share"] <= 1.0 and len(code["path"]) == 3  # chapter, block, category
        assert code["confidence"] is None  # beam shares are not calibrated: no confidence, no band
    # Beam shares are shares of one probability mass over the beams.
    assert sum(c["beam_share"] for c in answer["codes"]) <= 1.0 + 1e-6
    assert "band" not in answer


def test_batch_jsonl_reports_progress_and_throughput(tmp_path, embedded_model):
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps({"dialogue": DIALOGUE.replace("month", m)}) for m in ("week", "year")))
    result = predict(str(batch), "--adapter", "none", "--json", "--top-k", "1")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["codes"] for line in lines)
    assert "dialogues/s" in result.stderr.decode()


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["-"], "   \n", "empty"),
    (["-"], b"\x00\x01binary\x00", "binary"),
    (["missing.txt"], None, "no such file"),
    (["-", "--adapter", "/nonexistent/adapter"], DIALOGUE, "adapter"),
    (["-"], '{"text": "no dialogue key"}\n', "no 'dialogue'"),
])
def test_bad_input_is_a_clear_error(args, stdin, message, embedded_model):
    result = predict(*args, stdin=stdin)
    assert result.returncode != 0
    err = result.stderr.decode()
    assert message in err and "Traceback" not in err, err


def test_constraint_allows_only_prefixes_of_billable_codes(embedded_model):
    from transformers import AutoTokenizer

    constraint = CodePrefixConstraint(AutoTokenizer.from_pretrained(embedded_model))
    texts = {i: constraint.tokenizer.decode([i]) for i in constraint.allowed_after("")}
    assert texts and all(any(code.startswith(t) for code in ("A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K",
                                                                 "L", "M", "N", "O", "P", "Q", "R", "S", "T", "U",
                                                                 "V", "W", "X", "Y", "Z")) for t in texts.values())
    after_e11 = {constraint.tokenizer.decode([i]) for i in constraint.allowed_after("E11")}
    assert "." in after_e11 and not {t for t in after_e11 if t[:1] == " "}  # E11 is not billable: no separator yet
    after_full = constraint.allowed_after("E11.9")
    assert constraint.tokenizer.eos_token_id in after_full  # complete billable code may end
    assert len(constraint.allowed_after("E11.9 - Type")) == len(constraint.tokenizer)  # description is free


@pytest.mark.slow
def test_constrained_mode_never_returns_an_invalid_code_on_the_demo_split(tmp_path, embedded_model):
    """Base model, no adapter: the least disciplined answerer, so the constraint does all the work."""
    prepared = prepare_templated(tmp_path / "prepared")
    rows = [json.loads(line) for line in (prepared / "test.jsonl").read_text().splitlines()]
    batch = tmp_path / "test.jsonl"
    batch.write_text("\n".join(json.dumps({"dialogue": r["dialogue"]}) for r in rows))
    result = predict(str(batch), "--adapter", "none", "--json", "--top-k", "3", "--constrain")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    answers = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(answers) == len(rows)
    for answer in answers:
        assert answer["codes"], answer
        assert all(c["billable"] for c in answer["codes"]), answer


def test_batched_generation_gives_the_same_answers_as_one_at_a_time(tmp_path, embedded_model):
    """Left-padded batches (what a GPU uses) must not change what the model answers."""
    prepared = prepare_templated(tmp_path / "prepared")
    rows = [json.loads(line) for line in (prepared / "test.jsonl").read_text().splitlines()][:4]
    batch = tmp_path / "four.jsonl"
    batch.write_text("\n".join(json.dumps({"dialogue": r["dialogue"]}) for r in rows))
    answers = {}
    for size in ("1", "4"):
        result = predict(str(batch), "--adapter", "none", "--json", "--top-k", "1", "--no-constrain",
                         "--device", "cpu", "--batch-size", size)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        answers[size] = [json.loads(line)["raw_answer"] for line in result.stdout.decode().splitlines()]
        assert "dialogues/s" in result.stderr.decode()
    assert len(answers["4"]) == 4 and answers["4"] == answers["1"]


@pytest.mark.parametrize(("args", "message"), [
    (("--device", "cuda"), "no CUDA GPU is visible"),
    (("--engine", "vllm"), "needs vLLM"),
])
def test_gpu_options_fail_clearly_without_a_gpu(dialogue_file, args, message):
    import importlib.util

    import torch

    if torch.cuda.is_available() or (args[0] == "--engine" and importlib.util.find_spec("vllm")):
        pytest.skip("this machine has what the option needs")
    result = predict(str(dialogue_file), "--adapter", "none", *args)
    assert result.returncode != 0 and message in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


# ---------------------------------------------------------------- the served default: a scoring record


def serving_file(folder: Path, weight: float = 0.5, temperature: float = 0.1) -> Path:
    """A serving record for the embedded base model as tools/fuse.py writes one (this test's own values)."""
    from icd10_coder import calibration, choice, serving
    from icd10_coder.paths import EMBEDDED_MODEL, display_path
    from icd10_coder.retrieval import RetrievalSettings

    record = serving.scoring_record(
        approach="baseline-slm-choice-shortlist-fused", base_model=display_path(EMBEDDED_MODEL), adapter=None,
        shortlist={"k": 4, "retriever": RetrievalSettings(neighbours=0).as_record()},
        scoring=choice.Scoring("per_char", weight, calibration.Calibrator(temperature=temperature)).as_record(),
        dev={"split": "val", "rows": 2, "exact_match": 0.5}, test_calibration=calibration.measure([(0.5, True)]),
        data_card=None, refit="this test")
    folder.mkdir(parents=True, exist_ok=True)
    return serving.write_serving(folder / "serving.json", record, [record])


def test_a_served_record_chooses_among_its_shortlist_with_calibrated_probabilities(tmp_path, embedded_model):
    """No generation: the record's K candidates, ranked by the scorer, probabilities over the list, a band."""
    from icd10_coder import calibration, choice
    from icd10_coder.dialogue_input import PredictionError
    from icd10_coder.loading import load_suggester
    from icd10_coder.realdata import read_embedded_rows
    from icd10_coder.workspace import Workspace

    path = serving_file(tmp_path / "ws")
    space = Workspace.at(tmp_path / "ws")
    suggester = load_suggester(None, None, device="cpu", workspace=space, serving_file=path)
    assert suggester.chooses and suggester.adapter is None and suggester.shortlister.k == 4
    dialogue = read_embedded_rows()[0]["Dialogue"]
    result = suggester.suggest([dialogue], 10)[0]
    shortlist = [c["code"] for c in result["shortlist"]]
    codes = [c["code"] for c in result["codes"]]
    assert len(shortlist) == 4 and sorted(codes) == sorted(shortlist) and result["raw_answer"] == ""
    confidences = [c["confidence"] for c in result["codes"]]
    assert sum(confidences) == pytest.approx(1.0, abs=1e-3) and confidences == sorted(confidences, reverse=True)
    assert result["band"] == calibration.band(confidences[0])
    assert result["not_sure"] == (result["band"] == calibration.NOT_SURE)
    # Derived independently: each candidate's answer line scored by a plain forward pass over prompt + line (no
    # prefix cache), then fused and softened by hand with the record's weight and temperature.
    import math

    import torch

    from icd10_coder.predictor import prompt_messages

    model, tokenizer = suggester.predictor.model, suggester.predictor.tokenizer
    prompt = tokenizer.apply_chat_template(prompt_messages(dialogue, shortlist), add_generation_prompt=True,
                                           tokenize=False)
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    per_char = []
    for line in choice.answer_lines(shortlist):
        tokens = tokenizer(line, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([context + tokens])).logits[0]
        logprobs = torch.log_softmax(logits[len(context) - 1:-1].float(), dim=-1)
        per_char.append(float(sum(logprobs[i, t] for i, t in enumerate(tokens))) / len(line))

    def minmax(values: list[float]) -> list[float]:
        return [(v - min(values)) / (max(values) - min(values)) for v in values]

    retrieval = [c["score"] for c in result["shortlist"]]
    weight, temperature = suggester.scoring.fusion_weight, suggester.scoring.temperature
    fused = [weight * m + (1 - weight) * r for m, r in zip(minmax(per_char), minmax(retrieval), strict=True)]
    exps = [math.exp(f / temperature) for f in fused]
    expected = sorted(zip(shortlist, (e / sum(exps) for e in exps), strict=True), key=lambda item: -item[1])
    assert codes == [code for code, _ in expected]
    assert confidences == pytest.approx([p for _, p in expected], abs=1e-3)
    with pytest.raises(PredictionError, match="--generate"):
        load_suggester(None, None, device="cpu", workspace=space, serving_file=path, shortlist=False)
    generating = load_suggester(None, None, device="cpu", workspace=space, serving_file=path, generate=True)
    assert not generating.chooses


def test_settings_other_than_the_evaluated_ones_are_refused_or_marked_not_evaluated(tmp_path, embedded_model):
    from icd10_coder.dialogue_input import PredictionError
    from icd10_coder.loading import load_suggester
    from icd10_coder.realdata import read_embedded_rows
    from icd10_coder.workspace import Workspace

    path, space = serving_file(tmp_path / "ws"), Workspace.at(tmp_path / "ws")
    with pytest.raises(PredictionError, match=r"--shortlist-k 6 \(evaluated with 4\).*--force"):
        load_suggester(None, None, device="cpu", workspace=space, serving_file=path, shortlist_k=6)
    with pytest.raises(PredictionError, match=r"--base-model .*other-model \(evaluated with .*--force"):
        load_suggester(str(tmp_path / "other-model"), None, device="cpu", workspace=space, serving_file=path)
    same = load_suggester(None, None, device="cpu", workspace=space, serving_file=path, shortlist_k=4)
    assert same.not_evaluated is None  # the record's own K is no override
    forced = load_suggester(None, None, device="cpu", workspace=space, serving_file=path, shortlist_k=6, force=True)
    result = forced.suggest([read_embedded_rows()[0]["Dialogue"]], 3)[0]
    assert len(result["shortlist"]) == 6
    assert result["not_evaluated"] == "not evaluated: --shortlist-k 6 (evaluated with 4)"


def test_a_record_whose_fitted_files_changed_is_refused_with_the_command_that_refits_it(tmp_path):
    from icd10_coder import calibration, choice, serving
    from icd10_coder.dialogue_input import PredictionError
    from icd10_coder.loading import load_suggester
    from icd10_coder.paths import EMBEDDED_MODEL, display_path
    from icd10_coder.retrieval import RetrievalSettings

    card = tmp_path / "prepared" / "data_card.json"
    card.parent.mkdir()
    card.write_text('{"shortlist": {"k": 4}}')
    record = serving.scoring_record(
        approach="baseline-slm-choice-shortlist-fused", base_model=display_path(EMBEDDED_MODEL), adapter=None,
        shortlist={"k": 4, "retriever": RetrievalSettings(neighbours=0).as_record()},
        scoring=choice.Scoring().as_record(), dev={"split": "val", "rows": 2, "exact_match": 0.5},
        test_calibration=calibration.measure([(0.5, True)]), data_card=display_path(card),
        refit="python tools/fuse.py baseline-slm-choice-shortlist --workspace ws")
    path = serving.write_serving(tmp_path / "serving.json", record, [record])
    card.write_text('{"shortlist": {"k": 5}}')  # prepared again after the record was fitted
    with pytest.raises(PredictionError, match=r"data_card .* changed .*run `python tools/fuse.py baseline-slm"):
        load_suggester(None, None, device="cpu", serving_file=path)


def test_predict_cli_serves_the_record_and_says_how_sure_it_is(tmp_path, embedded_model):
    from icd10_coder.realdata import read_embedded_rows

    path = serving_file(tmp_path / "ws")
    dialogue = tmp_path / "real.txt"
    dialogue.write_text(read_embedded_rows()[1]["Dialogue"])
    result = predict(str(dialogue), "--serving", str(path), "--workspace", str(tmp_path / "ws"), "--top-k", "3")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    out = result.stdout.decode()
    ranked = [line for line in out.splitlines() if line[:2] in ("1.", "2.", "3.")]
    assert len(ranked) == 3 and all("  confidence 0." in line or "confidence 1.00" in line for line in ranked)
    assert "choice by likelihood" in out
    assert "served by baseline-slm-choice-shortlist-fused; scoring chosen on val (2 rows); confidence: temperature" \
        in out
    assert ("not sure — search the codes" in out) != ("high confidence" in out or "medium confidence" in out)
