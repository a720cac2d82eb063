"""`make demo` end to end, with networking removed: the embedded real rows -> prepare with the shortlist ->
a few LoRA steps -> Retrieval, Baseline / Finetuned SLM choice (dev, then test), fusion and calibration
on dev, the LLM stand-in -> report, and the served default that predict and the app read.

One demo run (~13 min on 2 cores) is shared by every test in this module. It runs in its
own workspace (a throw-away folder under outputs/), while files planted in every path of
the real run must come through byte-identical, and `git status` must not change. Where
the machine allows (root + util-linux `unshare`), it runs in a network namespace with
only loopback up, so the run itself proves nothing in the pipeline needs the network.
"""

from __future__ import annotations

import hashlib
import json
import math
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
                    "outputs/mlflow-artifacts", "outputs/axolotl-cache/qlora", "outputs/datasets-cache",
                    "outputs/retrieval-cache", "outputs/encoders/minilm-query")
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


SHOWN = ("retrieval", "retrieval-encoder", "baseline-llm-shortlist", "baseline-slm-choice-shortlist",
         "finetuned-slm-choice-shortlist",
         "baseline-slm-choice-shortlist-fused", "finetuned-slm-choice-shortlist-fused")
FUSED = ("baseline-slm-choice-shortlist-fused", "finetuned-slm-choice-shortlist-fused")


def test_report_has_every_approach_on_real_unseen_codes_and_every_metric(demo_run, workspace):
    approaches = summary(workspace)["approaches"]
    assert set(approaches) == set(SHOWN), set(approaches)
    for name in SHOWN:
        info = approaches[name]
        assert info["status"] == "present" and info["n"] >= 15
        for metric in METRICS:
            m = info["metrics"][metric]
            assert m["ci95_low"] <= m["mean"] <= m["ci95_high"], (name, metric, m)
    assert summary(workspace)["data_card_sha256"] and summary(workspace)["paired_tests"]
    report = (workspace / "report" / "report.md").read_text()
    assert "McNemar" in report and "p (Holm)" in report and "codes never trained on" in report
    for label in ("Retrieval (no model)", "Retrieval (fine-tuned encoder)",
                  "Finetuned SLM + shortlist (choice by likelihood, fused with retrieval)",
                  "Baseline SLM + shortlist (choice by likelihood)",
                  "Baseline LLM stand-in (the embedded SLM behind the endpoint) + shortlist"):
        assert f"| {label} |" in report
    card = json.loads((workspace / "prepared-shortlist" / "data_card.json").read_text())
    assert card["embedded_demo"] and card["test_codes_seen_in_train"] == 0 and card["rows_kept"] == 100
    assert card["shortlist"]["k"] == 10 and set(card["shortlist"]["recall_at_k"]) >= {"train", "val", "test"}
    # The fine-tuned encoder made the shortlists; prompts show evidence windows; every training list holds
    # the gold code, the dev lists are the retriever's (some miss it).
    assert card["shortlist"]["retriever"]["encoder"].endswith("encoders/minilm-query")
    assert card["shortlist"]["evidence_window"] == 384
    prepared = workspace / "prepared-shortlist"
    train = [json.loads(line) for line in (prepared / "train.jsonl").read_text().splitlines()]
    assert all(row["gold_code"] in row["candidates"] for row in train)
    assert card["shortlist"]["gold_on_training_lists"]["inserted"] > 0
    assert all("Dialogue excerpt" in row["messages"][1]["content"] for row in train)
    encoder = json.loads((workspace / "encoders" / "minilm-query" / "encoder_training.json").read_text())
    assert encoder["train_rows"] >= 40 and encoder["dev_recall_after"]["recall@10"] >= 0
    # The report names the demo's test rows that the retriever's defaults were chosen on (the study's dev rows).
    from icd10_coder.retrieval import DEFAULTS_CHOSEN_ON

    tested = {json.loads(line)["id"] for line in (workspace / "prepared" / "test.jsonl").read_text().splitlines()}
    among = sorted(tested & set(json.loads(DEFAULTS_CHOSEN_ON.read_text())["row_ids"]))
    assert summary(workspace)["retriever_defaults"]["among_study_dev_rows"] == among
    assert (f"{len(among)} of this test split's {len(tested)} rows are among them" in report if among
            else f"none of this test split's {len(tested)} rows" in report)


def test_calibration_is_measured_on_the_test_rows_and_reported(demo_run, workspace):
    measured = summary(workspace)["calibration"]
    assert set(measured) == set(FUSED)
    for name in FUSED:
        fusion = json.loads((workspace / "eval" / name / "fusion.json").read_text())
        assert measured[name] == fusion["test_calibration"] and 0 <= measured[name]["ece"] <= 1
        assert measured[name]["n"] == summary(workspace)["approaches"][name]["n"]
        assert fusion["temperature"] in __import__("icd10_coder.calibration").calibration.TEMPERATURE_GRID
    report = (workspace / "report" / "report.md").read_text()
    assert "## Calibration on the test split" in report and "reliability.png" in report
    assert (workspace / "report" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_served_default_is_the_approach_best_on_dev(demo_run, workspace):
    served = json.loads((workspace / "serving.json").read_text())
    dev = {name: json.loads((workspace / "eval" / name / "scoring.json").read_text())["chosen_on"]["exact_match"]
           for name in FUSED}
    assert served["compared_on_dev"] == dev
    assert served["chosen_on"]["exact_match"] == max(dev.values()) and served["chosen_on"]["split"] == "val"
    if served["adapter"]:  # a finetuned winner: the adapter's own record says the same
        adapter_record = json.loads((REPO / served["adapter"] / "icd10_scoring.json").read_text())
        assert {k: v for k, v in served.items() if k not in ("why", "compared_on_dev")} == adapter_record
    assert "Served by `make app`" in (workspace / "report" / "report.md").read_text()


def test_served_prompt_candidates_and_scores_are_the_evaluated_ones(demo_run, workspace):
    """The round trip: for the same test dialogues, predict/app build the prompt, the shortlist (order and
    retrieval scores) and the ranking with probabilities that the evaluated (fused) approach logged."""
    from icd10_coder.loading import load_suggester
    from icd10_coder.predictor import prompt_messages
    from icd10_coder.workspace import Workspace

    space = Workspace.at(workspace)
    served = json.loads(space.serving_file.read_text())
    suggester = load_suggester(None, None, device="cpu", workspace=space, serving_file=space.serving_file)
    assert suggester.chooses and suggester.record["approach"] == served["approach"]
    log = next((workspace / "eval" / served["approach"]).glob("samples_icd10_medsynth_choice_2*.jsonl"))
    for sample in [json.loads(line) for line in log.read_text().splitlines()][:3]:
        doc = sample["doc"]
        shortlist = suggester.shortlister([doc["dialogue"]])[0]
        assert [code for code, _ in shortlist] == doc["candidates"]
        assert [score for _, score in shortlist] == pytest.approx(doc["candidate_scores"], abs=1e-4)
        window = suggester.shortlister.prompt_texts([doc["dialogue"]], [shortlist])[0]
        assert window != doc["dialogue"] and len(window) < len(doc["dialogue"])
        assert prompt_messages(window, doc["candidates"], excerpt=True) == [
            {"role": "system", "content": doc["system"]}, {"role": "user", "content": doc["user"]}]
        result = suggester.suggest([doc["dialogue"]], 10)[0]
        assert [c["code"] for c in result["codes"]] == sample["filtered_resps"][0].split(", ")
        assert [c["confidence"] for c in result["codes"]] == pytest.approx(sample["probabilities"], abs=2e-3)


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


def test_training_logged_every_step_and_mlflow_holds_every_run(demo_run, workspace):
    client, experiment, runs = mlflow_runs(workspace)
    names = [r.info.run_name for r in runs]
    assert "train-demo-cpu-shortlist" in names
    for approach in SHOWN:
        assert f"eval-{approach}" in names
    train = next(r for r in runs if r.info.run_name == "train-demo-cpu-shortlist")
    losses = [m.value for m in sorted(client.get_metric_history(train.info.run_id, "train/loss")
                                      or client.get_metric_history(train.info.run_id, "loss"), key=lambda m: m.step)]
    # A few steps of two real dialogues each: the loss of a step depends on which two rows it saw, so it is
    # not monotone (one run: 0.51, 0.38, 3.05, 2.58, 0.32, 1.12, 3.55, 0.09); that it learned shows in the
    # merge test (the adapter moves the logits) and in the report, not here.
    from demo import TRAIN_STEPS

    assert len(losses) == TRAIN_STEPS and all(math.isfinite(v) and v >= 0 for v in losses), losses
    evaluation = next(r for r in runs if r.info.run_name == "eval-finetuned-slm-choice-shortlist-fused")
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
    # lm-eval's own result files, and the folders it names after the model, get relative paths only.
    texts |= {str(p.relative_to(workspace)): p.read_text() for p in (workspace / "eval").rglob("results_*.json")}
    texts |= {"serving.json": (workspace / "serving.json").read_text()}
    for path in (workspace / "eval").rglob("*"):
        assert str(REPO).strip("/").replace("/", "__") not in path.name, path
    for run in mlflow_runs(workspace)[2]:
        texts[f"mlflow params of {run.info.run_name}"] = json.dumps(run.data.params)
    for name, text in texts.items():
        for prefix in machine_paths:
            assert prefix not in text, (name, prefix, text[max(0, text.find(prefix) - 200):text.find(prefix) + 200])


def test_adapter_records_the_prompts_it_was_trained_on(demo_run, workspace):
    shortlist = json.loads((workspace / "adapters" / "demo-cpu-shortlist" / "icd10_prompt.json").read_text())
    assert shortlist["prompt_variant"] == "shortlist"
    assert shortlist["shortlist_k"] == 10 and shortlist["prepared_data"].endswith("prepared-shortlist")
    assert shortlist["retriever"]["neighbours"] == 0


def test_finetuned_eval_loaded_the_adapter_and_logs_candidate_loglikelihoods(demo_run, workspace):
    folder = workspace / "eval" / "finetuned-slm-choice-shortlist"
    config = json.loads(next(folder.rglob("results_*.json")).read_text())["config"]
    assert "peft" in str(config["model_args"])
    assert f"{workspace.name}/adapters/demo-cpu-shortlist" in str(config["model_args"])
    first = json.loads(next(folder.rglob("samples_icd10_medsynth_choice_*.jsonl")).read_text().splitlines()[0])
    assert first["target"] == first["doc"]["gold_code"]
    assert len(first["filtered_resps"]) == len(first["doc"]["candidates"]) == 10


def test_llm_baseline_went_through_the_local_server(demo_run, workspace):
    results = next((workspace / "eval" / "baseline-llm-shortlist").rglob("results_*.json"))
    config = json.loads(results.read_text())["config"]
    assert config["model"] == "local-chat-completions"
    assert "127.0.0.1" in str(config["model_args"])


def test_files_with_dialogue_text_are_private(demo_run, workspace):
    sensitive = list((workspace / "prepared-shortlist").glob("*.jsonl")) + \
        list((workspace / "eval").rglob("samples_*.jsonl"))
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

    adapter = workspace / "adapters" / "demo-cpu-shortlist"
    result = subprocess.run(
        [sys.executable, "-m", "axolotl.cli.merge_lora", str(workspace / "recipes" / "demo-cpu-shortlist.yml"),
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
