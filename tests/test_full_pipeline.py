"""`make full` as a real run would use it, shrunk to minutes: no LLM endpoint, a marked dialogue.

The pipeline runs in a throw-away workspace (WORKSPACE=...) on the demo recipe for a few
steps. Nothing listens where the Baseline LLM config points, so the report must still
hold both SLMs, name the LLM missing with the reason, and show the unseen-code split as
its own table. Every dialogue carries a unique marker: afterwards it may appear only in
owner-only files inside the workspace — not in ~/.cache, the temp folder or the rest of
the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO, network_namespace_available, offline_command, pipeline_env

from icd10_coder.templated_data import templated_rows

pytestmark = pytest.mark.slow


def something_listens(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def files_containing(marker: bytes, roots: list[Path], since: float) -> list[Path]:
    """Regular files under ``roots`` changed since ``since`` whose bytes contain ``marker``."""
    found = []
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder) / name
                try:
                    info = path.lstat()
                    if not stat.S_ISREG(info.st_mode) or info.st_mtime < since or info.st_size > 512 * 2**20:
                        continue
                    if marker in path.read_bytes():
                        found.append(path)
                except OSError:
                    continue
    return found


@pytest.fixture
def workspace() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="test-full-", dir=REPO / "outputs"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_make_full_without_endpoint_reports_the_llm_missing_and_leaves_no_dialogue_copies(workspace, embedded_model):
    if not network_namespace_available()[0] and something_listens(8000):
        pytest.skip("a server listens on 127.0.0.1:8000 (the Baseline LLM config's endpoint)")
    marker = f"MARKER{uuid.uuid4().hex}"
    source = workspace / "marked.jsonl"
    with source.open("w") as handle:
        for row in templated_rows():
            handle.write(json.dumps({**row, "Dialogue": row["Dialogue"] + f"\n[patient] My pin is {marker}."}) + "\n")
    os.chmod(source, 0o600)
    started = time.time() - 2
    relative = workspace.relative_to(REPO)
    command, _, _ = offline_command([
        "make", "-s", "full", f"WORKSPACE={relative}", "FULL_RECIPE=recipes/demo-cpu.yml",
        f"PREPARE_ARGS=--source {relative}/marked.jsonl --unseen-codes 0.25 --tokenizer none",
        "TRAIN_ARGS=--max_steps=3", "EVAL_ARGS=--limit 2"])
    result = subprocess.run(command, cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=1500)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]

    summary = json.loads((workspace / "report" / "summary.json").read_text())
    llm = summary["approaches"]["baseline-llm"]
    assert llm["status"] == "missing" and "not reachable" in llm["reason"], llm
    for name in ("baseline-slm", "finetuned-slm"):
        assert summary["approaches"][name]["status"] == "present" and summary["approaches"][name]["n"] == 2
        assert summary["unseen"]["approaches"][name]["status"] == "present"
    assert summary["unseen"]["approaches"]["baseline-llm"]["status"] == "missing"
    report = (workspace / "report" / "report.md").read_text()
    assert "missing: endpoint http://127.0.0.1:8000" in report and "Unseen codes" in report
    assert summary["approaches"]["finetuned-slm"]["model"].endswith(f"{relative}/adapters/demo-cpu")

    hits = files_containing(marker.encode(), [Path.home() / ".cache", Path(tempfile.gettempdir()), REPO], started)
    assert any(hit.is_relative_to(workspace / "eval") for hit in hits)  # the check can see copies
    for hit in hits:
        assert hit.is_relative_to(workspace), f"dialogue copy outside the workspace: {hit}"
        assert stat.S_IMODE(hit.stat().st_mode) & 0o077 == 0, f"readable by others: {hit}"
