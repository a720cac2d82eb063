"""tools/predict.py: single, stdin and batch use; bad input; constrained decoding never invents codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import prepare_demo

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
        assert 0.0 <= code["confidence"] <= 1.0 and len(code["path"]) == 3  # chapter, block, category
    # Confidences are shares of one probability mass over the beams.
    assert sum(c["confidence"] for c in answer["codes"]) <= 1.0 + 1e-6


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
    prepared = prepare_demo(tmp_path / "prepared")
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
    prepared = prepare_demo(tmp_path / "prepared")
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
