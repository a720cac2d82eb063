"""Stage 8: what the workbench serves: calibration, seconds per suggestion, evidence, search."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from icd10_coder import calibration
from icd10_coder.audit import adapter_hash
from icd10_coder.benchmarks.common import median
from icd10_coder.codes import search
from icd10_coder.evidence import evidence
from icd10_coder.jsonl import read_jsonl
from icd10_coder.loading import load_suggester
from icd10_coder.local_server import free_port, local_server
from icd10_coder.offline import subprocess_env
from icd10_coder.paths import display_path
from icd10_coder.realdata import REAL_FILES, load_real_rows, read_embedded_rows
from icd10_coder.workspace import DEMO_WORKSPACE, Workspace

WARM_UP = "Doctor: What brings you in today?\nPatient: My left knee has been painful and swollen for a week."


def bench_app(work: Path, real_dialogues: int, adapter_arg: str | None = None,
              base_model: str | None = None, page_dialogues: int = 10) -> dict[str, Any]:
    """What the workbench serves (the serving model, else make demo's choice, or ``adapter_arg``): its calibration
    (ECE, reliability bins, band accuracy) on held-out real dialogues (none for the serving model: it trained on
    every real row), seconds per suggestion by the predictor and on the page, evidence coverage, search latency."""

    splits: dict[str, list[tuple[str, str]]] = {}
    demo_test = Workspace.at(DEMO_WORKSPACE).prepared_shortlist / "test.jsonl"
    if demo_test.is_file():  # the served approach's own held-out test rows
        rows = read_jsonl(demo_test)
        splits["demo test"] = [(r["dialogue"], r["gold_code"]) for r in rows]
    if all(path.is_file() for path in REAL_FILES):  # shared real rows the demo never saw (its 100 codes left out)
        embedded = {row["ICD10"] for row in read_embedded_rows()}
        unseen = [r for r in load_real_rows() if r.code.replace(".", "") not in embedded]
        chosen = random.Random(0).sample(unseen, min(real_dialogues, len(unseen)))
        splits["real"] = [(r.dialogue, r.code) for r in chosen]
    result: dict[str, Any] = {"evidence": {}, "calibration": {}}
    for name, pairs in splits.items():
        covered = sum(bool(evidence(d, g)) for d, g in pairs)
        result["evidence"][name] = {"n": len(pairs), "gold_with_evidence": round(covered / len(pairs), 4)}
    suggester = load_suggester(base_model, adapter_arg, device="cpu", workspace=Workspace.at(work / "app"))
    served = (suggester.record or {}).get("approach") or "generation (no scoring record)"
    trained_on = (suggester.record or {}).get("trained_on")
    if trained_on:  # the serving model learned from every real row: none of these is held out from it
        result["calibration_skipped"] = (f"{served} trained on {trained_on['rows']} real rows, these among them; "
                                         "its calibration is measured out of fold (make calibrate)")
        splits = {name: pairs for name, pairs in splits.items() if name == "real"}
    for name, pairs in splits.items():
        outcomes, seconds = [], []
        for dialogue, gold in tqdm(pairs, desc=f"calibration ({name})", unit="dialogue", file=sys.stderr):
            started = time.perf_counter()
            codes = suggester.suggest([dialogue], 5)[0]["codes"]
            seconds.append(time.perf_counter() - started)
            if trained_on:
                continue
            if codes and codes[0]["confidence"] is not None:  # generation has no calibrated confidence to measure
                outcomes.append((codes[0]["confidence"], codes[0]["code"] == gold))
            elif not codes:
                outcomes.append((0.0, False))
        result["calibration"][name] = {
            **({} if trained_on else calibration.measure(outcomes)), "n": len(pairs), "served": served,
            "base_model": display_path(suggester.base_model),
            "adapter": display_path(suggester.adapter) if suggester.adapter else None,
            "adapter_sha256": adapter_hash(suggester.adapter), "s_per_suggestion_median": round(median(seconds), 2),
            "note": "top suggestion's confidence vs exact match"}
    del suggester
    if "real" in splits:
        result["page"] = page_seconds([d for d, _ in splits["real"]][:page_dialogues], work / "app-page",
                                      adapter_arg, base_model)
    queries = ["diabetis type 2", "E11.9", "pain in left knee", "pneumonia", "fracture of femur"]
    times = []
    for _ in range(3):
        started = time.perf_counter()
        for query in queries:
            search(query)
        times.append((time.perf_counter() - started) / len(queries))
    result["search_ms_median"] = round(median(times) * 1000, 1)
    return result


class SuggestButton:
    """The page's "Suggest codes" button as the browser's script presses it: the inputs posted to Gradio's queue,
    the answer read from the event stream as it arrives (gradio_client instead checks for it every 50 ms)."""

    def __init__(self, url: str):
        import httpx

        self.url = url
        config = httpx.get(url + "config", timeout=30).json()
        self.event = next(d for d in config["dependencies"] if d.get("api_name") == "on_suggest")

    def press(self, dialogue: str) -> list[Any]:
        """The handler's outputs for ``dialogue`` (no file uploaded)."""
        import json
        import uuid

        import httpx

        session = uuid.uuid4().hex[:11]
        joined = httpx.post(self.url + "gradio_api/queue/join", timeout=30, json={
            "data": [dialogue, None], "fn_index": self.event["id"], "session_hash": session, "event_data": None,
            "trigger_id": self.event["targets"][0][0]})
        joined.raise_for_status()
        with httpx.stream("GET", self.url + "gradio_api/queue/data", params={"session_hash": session},
                          timeout=120) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message["msg"] == "process_completed":
                    if not message.get("success"):
                        raise RuntimeError(f"the page's Suggest button failed: {message.get('output')}")
                    return message["output"]["data"]
        raise RuntimeError("the page's event stream ended before the suggestion")


def page_seconds(dialogues: list[str], workspace: Path, adapter_arg: str | None = None,
                 base_model: str | None = None, serving_file: Path | None = None) -> dict[str, Any]:
    """Seconds from pressing "Suggest codes" to the page's answer: ``tools/app.py`` started on a loopback port with
    the same served model, each dialogue sent to the Suggest button's handler as the browser's script sends it
    (queue, suggestion, evidence, table; :class:`SuggestButton`); one other dialogue first to warm up. The
    browser's own rendering is not included."""
    port = free_port()
    command = [sys.executable, "tools/app.py", "--port", str(port), "--workspace", str(workspace), "--device", "cpu"]
    command += ["--adapter", adapter_arg] if adapter_arg else []
    command += ["--base-model", base_model] if base_model else []
    command += ["--serving", str(serving_file)] if serving_file else []
    url = f"http://127.0.0.1:{port}/"
    seconds = []
    with local_server(command, url, workspace / "server.log", subprocess_env(hub_offline=True)):
        button = SuggestButton(url)
        button.press(WARM_UP)  # not a timed one: its retrieval would be memoised
        for dialogue in tqdm(dialogues, desc="the page's Suggest button", unit="dialogue", file=sys.stderr):
            started = time.perf_counter()
            status = button.press(dialogue)[0]
            seconds.append(time.perf_counter() - started)
            if "Cannot suggest" in status:
                raise RuntimeError(f"the page refused a real dialogue: {status}")
    return {"n": len(seconds), "s_per_suggestion_median": round(median(seconds), 2),
            "s_max": round(max(seconds), 2), "how": "tools/app.py on 127.0.0.1, the Suggest button's inputs posted "
                                                   "to Gradio's queue, the answer read from its event stream; "
                                                   "browser rendering not included"}
