"""`make demo` end to end, with networking removed: prepare -> train -> 3 evaluations -> report.

One demo run (~8 min on 2 cores) is shared by every test in this module. Where the
machine allows (root + util-linux `unshare`), it runs in a network namespace with only
loopback up, so the run itself proves nothing in the pipeline needs the network.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from icd10_coder.offline import subprocess_env
from icd10_coder.scoring import METRICS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = REPO / "outputs"
REPORT = OUTPUTS / "report"


def network_namespace_available() -> tuple[bool, str]:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False, "unshare/ip not installed"
    if os.geteuid() != 0:
        return False, "needs root for a network namespace"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"unshare -n refused: {probe.stderr.strip()}"
    return True, ""


@pytest.fixture(scope="module")
def demo_run(embedded_model):
    offline, why_not = network_namespace_available()
    command = [sys.executable, "tools/demo.py"]
    if offline:
        quoted = " ".join(f"'{c}'" for c in command)
        command = ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {quoted}"]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(hub_offline=True), capture_output=True, text=True,
                            timeout=1800)
    log = result.stdout + result.stderr
    (OUTPUTS / "demo-test.log").write_text(log)
    assert result.returncode == 0, log[-6000:]
    return {"offline": offline, "why_not": why_not, "log": log}


def summary() -> dict:
    return json.loads((REPORT / "summary.json").read_text())


def test_demo_ran_without_network(demo_run):
    if not demo_run["offline"]:
        pytest.skip(f"network namespace unavailable ({demo_run['why_not']}); demo ran with HF_HUB_OFFLINE only")
    assert "Demo finished" in demo_run["log"]


def test_report_has_all_three_approaches_with_every_metric(demo_run):
    approaches = summary()["approaches"]
    assert set(approaches) >= {"baseline-llm", "baseline-slm", "finetuned-slm"}
    for name in ("baseline-llm", "baseline-slm", "finetuned-slm"):
        info = approaches[name]
        assert info["status"] == "present" and info["n"] >= 5
        for metric in METRICS:
            m = info["metrics"][metric]
            assert m["ci95_low"] <= m["mean"] <= m["ci95_high"], (name, metric, m)
    assert summary()["data_card_sha256"] and summary()["paired_tests"]
    report = (REPORT / "report.md").read_text()
    assert "Finetuned SLM" in report and "McNemar" in report


def test_finetuned_beats_baseline_on_exact_match(demo_run):
    approaches = summary()["approaches"]
    finetuned = approaches["finetuned-slm"]["metrics"]["exact_match"]["mean"]
    baseline = approaches["baseline-slm"]["metrics"]["exact_match"]["mean"]
    assert finetuned > baseline, (finetuned, baseline)


def test_plots_are_real_pngs(demo_run):
    for name in ("metrics_by_approach.png", "accuracy_by_chapter.png", "confusions.png"):
        data = (REPORT / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def test_training_loss_went_down_and_mlflow_holds_every_run(demo_run):
    import mlflow

    from icd10_coder.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    experiment = client.get_experiment_by_name("icd10-medsynth")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    names = [r.info.run_name for r in runs]
    assert "train-demo-cpu" in names
    for approach in ("baseline-llm", "baseline-slm", "finetuned-slm"):
        assert f"eval-{approach}" in names
    train = next(r for r in runs if r.info.run_name == "train-demo-cpu")
    losses = [m.value for m in sorted(client.get_metric_history(train.info.run_id, "train/loss")
                                      or client.get_metric_history(train.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) >= 10
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    evaluation = next(r for r in runs if r.info.run_name == "eval-finetuned-slm")
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id, "report")}
    assert "report/report.md" in artifacts and "report/metrics_by_approach.png" in artifacts


def test_finetuned_eval_loaded_the_adapter_and_logs_parsed_codes(demo_run):
    results = next((OUTPUTS / "eval" / "finetuned-slm").rglob("results_*.json"))
    config = json.loads(results.read_text())["config"]
    assert "peft" in str(config["model_args"]) and "adapters/demo-cpu" in str(config["model_args"])
    samples = next((OUTPUTS / "eval" / "finetuned-slm").rglob("samples_icd10_medsynth_*.jsonl"))
    first = json.loads(samples.read_text().splitlines()[0])
    assert first["target"] == first["doc"]["gold_code"]
    assert isinstance(first["filtered_resps"][0], str) and isinstance(first["resps"][0][0], str)


def test_llm_baseline_went_through_the_local_server(demo_run):
    results = next((OUTPUTS / "eval" / "baseline-llm").rglob("results_*.json"))
    config = json.loads(results.read_text())["config"]
    assert config["model"] == "local-chat-completions"
    assert "127.0.0.1" in str(config["model_args"])


def test_files_with_dialogue_text_are_private(demo_run):
    sensitive = list((REPO / "data" / "prepared").glob("*.jsonl")) + list((OUTPUTS / "eval").rglob("samples_*.jsonl"))
    assert len(sensitive) >= 6
    for path in sensitive:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_adapter_merges_into_a_full_model_on_cpu(demo_run, tmp_path, embedded_model):
    """`axolotl merge-lora` on the demo adapter: the merged model gives the same logits as base + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = OUTPUTS / "adapters" / "demo-cpu"
    result = subprocess.run(
        [sys.executable, "-m", "axolotl.cli.merge_lora", "recipes/demo-cpu.yml", f"--lora_model_dir={adapter}",
         f"--output_dir={tmp_path}"], cwd=REPO, env=subprocess_env(hub_offline=True), capture_output=True, text=True,
        timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    merged_dir = tmp_path / "merged"
    assert (merged_dir / "config.json").is_file() and not (merged_dir / "adapter_config.json").exists()

    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    inputs = tokenizer("Doctor: What brings you in?\nPatient: my left knee hurts", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    with torch.no_grad():
        plain = base(**inputs).logits
        with_adapter = PeftModel.from_pretrained(base, adapter).eval()(**inputs).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()(**inputs).logits
    # The merged weights are stored in bf16 (the embedded model's dtype), so logits agree to
    # bf16 precision, not exactly; the adapter's effect must be there all the same.
    adapter_effect = (plain - with_adapter).abs().mean()
    merge_error = (merged - with_adapter).abs().mean()
    assert adapter_effect > 0.05, adapter_effect
    assert merge_error < adapter_effect / 3, (merge_error, adapter_effect)
    assert (merged.argmax(-1) == with_adapter.argmax(-1)).float().mean() >= 0.9
