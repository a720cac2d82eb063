"""`make demo` end to end, with networking removed: prepare -> train -> 3 evaluations -> report.

One demo run (~10 min on 2 cores) is shared by every test in this module. It runs in its
own workspace (a throw-away folder under outputs/), while files planted in every path of
the real run must come through byte-identical, and `git status` must not change. Where
the machine allows (root + util-linux `unshare`), it runs in a network namespace with
only loopback up, so the run itself proves nothing in the pipeline needs the network.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import offline_command, pipeline_env

from icd10_coder.offline import subprocess_env
from icd10_coder.scoring import METRICS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Everything a real run owns; the demo (and the tests) must never read or write it.
REAL_RUN_FOLDERS = ("data/prepared", "outputs/adapters/qlora", "outputs/eval", "outputs/report",
                    "outputs/mlflow-artifacts", "outputs/axolotl-cache/qlora", "outputs/datasets-cache")
REAL_RUN_FILES = ("outputs/mlflow.db",)


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


def snapshot_real_run() -> dict[str, str]:
    """sha256 of every file in the real run's paths (planted ones included)."""
    digests = {}
    for name in REAL_RUN_FOLDERS:
        for path in sorted((REPO / name).rglob("*")) if (REPO / name).is_dir() else []:
            if path.is_file():
                digests[str(path.relative_to(REPO))] = hashlib.sha256(path.read_bytes()).hexdigest()
    for name in REAL_RUN_FILES:
        if (REPO / name).is_file():
            digests[name] = hashlib.sha256((REPO / name).read_bytes()).hexdigest()
    return digests


def plant_real_run() -> list[Path]:
    """A unique file in every real-run folder (and a stand-in store where none exists); returns what to remove."""
    planted = []
    for name in REAL_RUN_FOLDERS:
        folder = REPO / name
        top = next((p for p in reversed([folder, *folder.parents]) if p.is_relative_to(REPO) and not p.exists()),
                   None)
        folder.mkdir(parents=True, exist_ok=True)
        plant = folder / f"planted-{uuid.uuid4().hex}.txt"
        plant.write_text("a file of the real run; the demo must leave it alone\n")
        planted.append(top or plant)
    for name in REAL_RUN_FILES:
        if not (REPO / name).exists():
            (REPO / name).write_bytes(b"stand-in for the real run's MLflow store\n")
            planted.append(REPO / name)
    return planted


def remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def workspace() -> Path:
    """A throw-away workspace inside the checkout's ignored outputs/ (so paths stay relative)."""
    folder = Path(tempfile.mkdtemp(prefix="test-demo-", dir=REPO / "outputs"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_run(embedded_model, workspace):
    git_before = git_status()
    planted = plant_real_run()
    try:
        before = snapshot_real_run()
        command, offline, why_not = offline_command(
            ["make", "-s", "demo", f"DEMO_WORKSPACE={workspace.relative_to(REPO)}"])
        result = subprocess.run(command, cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=1800)
        after = snapshot_real_run()
    finally:
        remove(planted)
    log = result.stdout + result.stderr
    (workspace / "demo-test.log").write_text(log)
    assert result.returncode == 0, log[-6000:]
    return {"offline": offline, "why_not": why_not, "log": log, "before": before, "after": after,
            "git_before": git_before, "git_after": git_status()}


def summary(workspace: Path) -> dict:
    return json.loads((workspace / "report" / "summary.json").read_text())


def test_demo_ran_without_network(demo_run):
    if not demo_run["offline"]:
        pytest.skip(f"network namespace unavailable ({demo_run['why_not']}); demo ran with HF_HUB_OFFLINE only")
    assert "Demo finished" in demo_run["log"]


def test_demo_leaves_the_real_run_and_git_alone(demo_run):
    assert len(demo_run["before"]) >= len(REAL_RUN_FOLDERS)  # the planted files were there
    assert demo_run["after"] == demo_run["before"]
    assert demo_run["git_after"] == demo_run["git_before"], demo_run["git_after"]
    assert not (REPO / "mlruns").exists()


SHOWN = ("retrieval", "baseline-llm", "baseline-slm", "finetuned-slm", "baseline-llm-shortlist",
         "baseline-slm-shortlist", "finetuned-slm-shortlist")


def test_report_has_every_approach_with_and_without_shortlist_and_every_metric(demo_run, workspace):
    approaches = summary(workspace)["approaches"]
    assert set(approaches) == set(SHOWN)
    for name in SHOWN:
        info = approaches[name]
        assert info["status"] == "present" and info["n"] >= 5
        for metric in METRICS:
            m = info["metrics"][metric]
            assert m["ci95_low"] <= m["mean"] <= m["ci95_high"], (name, metric, m)
    assert summary(workspace)["data_card_sha256"] and summary(workspace)["paired_tests"]
    report = (workspace / "report" / "report.md").read_text()
    assert "Finetuned SLM" in report and "McNemar" in report and "p (Holm)" in report
    for label in ("Retrieval (no model)", "Finetuned SLM + shortlist", "Baseline SLM + shortlist"):
        assert f"| {label} |" in report
    card = json.loads((workspace / "prepared-shortlist" / "data_card.json").read_text())
    assert card["shortlist"]["k"] == 10 and set(card["shortlist"]["recall_at_k"]) >= {"train", "val", "test"}


def test_finetuned_beats_baseline_on_exact_match(demo_run, workspace):
    approaches = summary(workspace)["approaches"]
    finetuned = approaches["finetuned-slm"]["metrics"]["exact_match"]["mean"]
    baseline = approaches["baseline-slm"]["metrics"]["exact_match"]["mean"]
    assert finetuned > baseline, (finetuned, baseline)


def test_plots_are_real_pngs(demo_run, workspace):
    for name in ("metrics_by_approach.png", "accuracy_by_chapter.png", "confusions.png"):
        data = (workspace / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def mlflow_runs(workspace: Path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("icd10-medsynth")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    return client, experiment, runs


def test_training_loss_went_down_and_mlflow_holds_every_run(demo_run, workspace):
    client, experiment, runs = mlflow_runs(workspace)
    names = [r.info.run_name for r in runs]
    assert "train-demo-cpu" in names and "train-demo-cpu-shortlist" in names
    for approach in SHOWN:
        assert f"eval-{approach}" in names
    train = next(r for r in runs if r.info.run_name == "train-demo-cpu")
    losses = [m.value for m in sorted(client.get_metric_history(train.info.run_id, "train/loss")
                                      or client.get_metric_history(train.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) >= 10
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    evaluation = next(r for r in runs if r.info.run_name == "eval-finetuned-slm")
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id, "report")}
    assert "report/report.md" in artifacts and "report/metrics_by_approach.png" in artifacts


def test_mlflow_artifacts_land_beside_the_store(demo_run, workspace):
    _, experiment, runs = mlflow_runs(workspace)
    assert experiment.artifact_location == (workspace / "mlflow-artifacts").as_uri()
    for run in runs:
        assert run.info.artifact_uri.startswith((workspace / "mlflow-artifacts").as_uri()), run.info.artifact_uri
    assert list((workspace / "mlflow-artifacts").rglob("report.md"))


def test_no_absolute_machine_paths_in_reports_summaries_or_mlflow_params(demo_run, workspace):
    machine_paths = (str(REPO), tempfile.gettempdir() + "/", str(Path.home()) + "/")
    texts = {"report.md": (workspace / "report" / "report.md").read_text(),
             "summary.json": (workspace / "report" / "summary.json").read_text()}
    texts |= {str(p.relative_to(workspace)): p.read_text() for p in (workspace / "eval").rglob("run_config.yml")}
    for run in mlflow_runs(workspace)[2]:
        texts[f"mlflow params of {run.info.run_name}"] = json.dumps(run.data.params)
    for name, text in texts.items():
        for prefix in machine_paths:
            assert prefix not in text, (name, prefix, text[max(0, text.find(prefix) - 200):text.find(prefix) + 200])


def test_adapters_record_the_prompts_they_were_trained_on(demo_run, workspace):
    plain = json.loads((workspace / "adapters" / "demo-cpu" / "icd10_prompt.json").read_text())
    shortlist = json.loads((workspace / "adapters" / "demo-cpu-shortlist" / "icd10_prompt.json").read_text())
    assert plain["prompt_variant"] == "plain" and shortlist["prompt_variant"] == "shortlist"
    assert shortlist["shortlist_k"] == 10 and shortlist["prepared_data"].endswith("prepared-shortlist")


def test_finetuned_eval_loaded_the_adapter_and_logs_parsed_codes(demo_run, workspace):
    results = next((workspace / "eval" / "finetuned-slm").rglob("results_*.json"))
    config = json.loads(results.read_text())["config"]
    assert "peft" in str(config["model_args"]) and f"{workspace.name}/adapters/demo-cpu" in str(config["model_args"])
    samples = next((workspace / "eval" / "finetuned-slm").rglob("samples_icd10_medsynth_*.jsonl"))
    first = json.loads(samples.read_text().splitlines()[0])
    assert first["target"] == first["doc"]["gold_code"]
    assert isinstance(first["filtered_resps"][0], str) and isinstance(first["resps"][0][0], str)


def test_llm_baseline_went_through_the_local_server(demo_run, workspace):
    results = next((workspace / "eval" / "baseline-llm").rglob("results_*.json"))
    config = json.loads(results.read_text())["config"]
    assert config["model"] == "local-chat-completions"
    assert "127.0.0.1" in str(config["model_args"])


def test_files_with_dialogue_text_are_private(demo_run, workspace):
    sensitive = list((workspace / "prepared").glob("*.jsonl")) + list((workspace / "eval").rglob("samples_*.jsonl"))
    assert len(sensitive) >= 6
    for path in sensitive:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in ("axolotl-cache", "datasets-cache", "adapters"):
        for path in (workspace / folder).rglob("*"):
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_adapter_merges_into_a_full_model_on_cpu(demo_run, workspace, tmp_path, embedded_model):
    """`axolotl merge-lora` on the demo adapter: the merged model gives the same logits as base + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = workspace / "adapters" / "demo-cpu"
    result = subprocess.run(
        [sys.executable, "-m", "axolotl.cli.merge_lora", str(workspace / "recipes" / "demo-cpu.yml"),
         f"--lora_model_dir={adapter}", f"--output_dir={tmp_path}"], cwd=REPO, env=subprocess_env(hub_offline=True),
        capture_output=True, text=True, timeout=900)
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
