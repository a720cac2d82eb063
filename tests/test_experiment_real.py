"""A cheap slice of `make experiment-real`: the real-data pipeline on unseen codes, end to end.

The full run (~1 hour on 2 cores) is not a test; this slice trains the adapter that learns to
choose for one step and scores two validation and two unseen dialogues per approach, so it
proves the wiring, not the numbers (those are in README). The generating legs and the LoRA on
shortlist prompts are left out (``--no-generation --no-shortlist-lora``): they run through the
same tools (prepare, train.py, run_eval.py with --recipe) as ``make demo``, which the tests run.
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

pytestmark = pytest.mark.slow


@pytest.fixture
def workspace() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="test-experiment-", dir=REPO / "outputs"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_experiment_slice_reports_every_approach_on_unseen_codes(workspace, medsynth_sample, embedded_model):
    result = subprocess.run([sys.executable, "tools/experiment_real.py", "--workspace", str(workspace),
                             "--sample", str(medsynth_sample), "--epochs", "1", "--max-steps", "1", "--limit", "2",
                             "--no-generation", "--no-shortlist-lora"],
                            cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    summary = json.loads((workspace / "report" / "summary.json").read_text())
    unseen = summary["unseen"]["approaches"]
    for name in ("retrieval", "baseline-slm-choice-shortlist", "baseline-slm-choice-shortlist-fused",
                 "finetuned-slm-choose-choice-shortlist", "finetuned-slm-choose-choice-shortlist-fused"):
        assert unseen[name]["status"] == "present" and unseen[name]["n"] == 2, (name, unseen[name])
    # The generating legs and the LoRA on shortlist prompts (the same tools, make demo runs them) were left out.
    assert "baseline-slm-shortlist" not in unseen and unseen["baseline-slm"]["status"] == "missing"
    assert "finetuned-slm-choice-shortlist" not in unseen
    # Each fusion weight was chosen on the validation split, which holds no unseen code and no training code.
    for name in ("baseline-slm", "finetuned-slm-choose"):
        fusion = json.loads((workspace / "eval" / f"{name}-choice-shortlist-fused" / "fusion.json").read_text())
        assert 0.0 <= fusion["weight"] <= 1.0 and fusion["validation_rows"] == 2
        assert "eval-val" in fusion["chosen_on"]
    validation = {json.loads(line)["gold_code"]
                  for line in (workspace / "prepared" / "val.jsonl").read_text().splitlines()}
    # Unseen means unseen: no held-out code is a training code.
    train = {json.loads(line)["gold_code"]
             for line in (workspace / "prepared" / "train.jsonl").read_text().splitlines()}
    held_out = {json.loads(line)["gold_code"]
                for line in (workspace / "prepared" / "test_unseen.jsonl").read_text().splitlines()}
    assert held_out and not held_out & train and not validation & (train | held_out)
    # The adapter trained to choose saw every row's gold code among its candidates.
    assert all(json.loads(line)["gold_code"] in json.loads(line)["candidates"]
               for line in (workspace / "prepared-choose" / "train.jsonl").read_text().splitlines())
    assert any(t["a"] == "retrieval" for t in summary["unseen"]["paired_tests"])  # paired against the floor
    assert json.loads((workspace / "report" / "experiment.json").read_text())["settings"]["epochs"] == 1
