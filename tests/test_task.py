"""The lm-eval task icd10_medsynth: found by --include_path, same prompt bytes on every path,
runs through the Python API and the real CLI, results hold every metric."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from conftest import prepare_templated

from icd10_coder.offline import subprocess_env
from icd10_coder.records import Example, training_record
from icd10_coder.scoring import METRICS

REPO = Path(__file__).resolve().parents[1]
TASKS = str(REPO / "tasks")


@pytest.fixture(scope="module")
def templated_data(tmp_path_factory) -> Path:
    return prepare_templated(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def shortlist_data(tmp_path_factory) -> Path:
    """Templated data whose prompts carry a top-5 retrieval shortlist."""
    return prepare_templated(tmp_path_factory.mktemp("prepared-shortlist"), "--shortlist", "5")


def first_test_row(data: Path) -> dict:
    return json.loads((data / "test.jsonl").read_text().splitlines()[0])


def task_manager(data: Path | None = None):
    """lm-eval's task index with the project's tasks; ``data``: the prepared folder they read."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=TASKS, metadata={"data_dir": str(data)} if data else None)


def test_task_is_found_through_include_path():
    assert "icd10_medsynth" in task_manager().all_tasks


class CaptureChatServer:
    """A real HTTP server on 127.0.0.1 that records chat-completions requests and answers a fixed code."""

    def __init__(self, answer: str):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append(json.loads(body))
                reply = json.dumps({"id": "x", "object": "chat.completion", "model": "capture",
                                    "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": answer}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/chat/completions"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.mark.parametrize("variant", ["plain", "shortlist"])
def test_prompt_is_byte_identical_for_training_lm_eval_and_the_llm_api(variant, templated_data, shortlist_data):
    """(a) axolotl training record, (b) the lm-eval task's chat context, (c) the API request body."""
    import lm_eval

    templated_data = shortlist_data if variant == "shortlist" else templated_data
    row = first_test_row(templated_data)
    example = Example(row_id=row["id"], dialogue=row["dialogue"], code=row["gold_code"], validity="billable",
                      candidates=tuple(row["candidates"]))
    training = training_record(example)["messages"]
    assert ("Candidate codes" in row["user"]) == (variant == "shortlist") and len(row["candidates"]) in (0, 5)

    task = task_manager(templated_data).load_task_or_group(["icd10_medsynth"])
    task = task["icd10_medsynth"] if "icd10_medsynth" in task else next(iter(task.values()))
    captured: list = []
    task.fewshot_context(row, 0, apply_chat_template=True,
                         chat_template=lambda messages, **_: captured.append(messages) or "")
    lm_eval_messages = captured[0]

    server = CaptureChatServer(answer=f"{row['gold_code']} - {row['gold_description']}")
    try:
        results = lm_eval.simple_evaluate(
            model="local-chat-completions",
            model_args=f"model=capture,base_url={server.url},tokenizer_backend=none,num_concurrent=1",
            tasks=["icd10_medsynth"], apply_chat_template=True, limit=1, task_manager=task_manager(templated_data),
            log_samples=False)
    finally:
        server.close()
    api_messages = server.requests[0]["messages"]

    for source in (lm_eval_messages, api_messages):
        assert [m["role"] for m in source] == ["system", "user"]
        assert source[0]["content"] == training[0]["content"] == row["system"]
        assert source[1]["content"] == training[1]["content"] == row["user"]
    assert server.requests[0]["temperature"] == 0 and server.requests[0]["max_tokens"] == 96

    # the gold answer through the API scores 1.0 on every match metric
    scores = results["results"]["icd10_medsynth"]
    for metric in METRICS:
        assert scores[f"{metric},parsed_codes"] == (0.0 if metric == "parse_failure_rate" else 1.0), metric


def test_python_api_with_the_embedded_model(templated_data, embedded_model):
    import lm_eval

    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={embedded_model},dtype=float32", tasks=["icd10_medsynth"],
        apply_chat_template=True, limit=2, device="cpu", task_manager=task_manager(templated_data),
        log_samples=True)
    scores = results["results"]["icd10_medsynth"]
    for metric in METRICS:
        assert 0.0 <= scores[f"{metric},parsed_codes"] <= 1.0
        assert f"{metric}_stderr,parsed_codes" in scores
    sample = results["samples"]["icd10_medsynth"][0]
    assert sample["target"] == sample["doc"]["gold_code"] and "filtered_resps" in sample


def test_real_lm_eval_cli(tmp_path, templated_data, embedded_model):
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={embedded_model},dtype=float32",
         "--include_path", "tasks", "--tasks", "icd10_medsynth", "--apply_chat_template", "--limit", "2",
         "--log_samples", "--output_path", str(tmp_path / "out"),
         "--metadata", json.dumps({"data_dir": str(templated_data)})],
        cwd=REPO, env=subprocess_env(hub_offline=True), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert {f"{m},parsed_codes" for m in METRICS} <= set(results["results"]["icd10_medsynth"])
    assert next((tmp_path / "out").rglob("samples_icd10_medsynth_*.jsonl")).is_file()


def test_missing_prepared_data_is_a_clear_error(tmp_path):
    sys.path.insert(0, str(REPO / "tasks" / "icd10_medsynth"))
    try:
        import utils as task_utils
    finally:
        sys.path.pop(0)
    with pytest.raises(FileNotFoundError, match="make prepare"):
        task_utils.load_prepared(data_dir=str(tmp_path))
