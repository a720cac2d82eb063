"""Workspaces: one setting decides where a run reads and writes; the real run keeps its paths."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import prepare_templated

import prepare
import report
import run_eval
import train
from icd10_coder import stats
from icd10_coder.local_server import free_port
from icd10_coder.paths import REPO_ROOT, display_path
from icd10_coder.workspace import DEMO_WORKSPACE, WORKSPACE_ENV, Workspace

RECIPES = REPO_ROOT / "recipes"


def test_the_real_run_keeps_todays_paths(monkeypatch):
    monkeypatch.delenv(WORKSPACE_ENV, raising=False)
    real = Workspace.at()
    assert real.is_real and real == Workspace.at(REPO_ROOT)
    assert real.prepared == REPO_ROOT / "data" / "prepared"
    assert (real.eval_dir, real.report_dir, real.mlflow_db) == (
        REPO_ROOT / "outputs" / "eval", REPO_ROOT / "outputs" / "report", REPO_ROOT / "outputs" / "mlflow.db")
    assert real.map("outputs/adapters/qlora") == REPO_ROOT / "outputs" / "adapters" / "qlora"
    recipe = yaml.safe_load((RECIPES / "qlora.yml").read_text())
    assert real.recipe_for(recipe) == recipe  # the recipes are written for the real run


def test_another_workspace_holds_every_run_product(tmp_path, monkeypatch):
    monkeypatch.setenv(WORKSPACE_ENV, str(tmp_path / "ws"))
    space = Workspace.at()  # chosen by the environment variable
    assert not space.is_real and space.root == tmp_path / "ws"
    for path in (space.prepared, space.eval_dir, space.report_dir, space.adapters_dir, space.mlflow_db,
                 space.artifact_root, space.axolotl_cache, space.datasets_cache):
        assert path.is_relative_to(tmp_path / "ws"), path
    assert Workspace.at(tmp_path / "other").root == tmp_path / "other"  # the flag wins over the variable
    assert space.map("data/prepared/train.jsonl") == tmp_path / "ws" / "prepared" / "train.jsonl"
    assert space.map("outputs/eval/baseline-slm") == tmp_path / "ws" / "eval" / "baseline-slm"
    # Shared, read-only inputs stay where they are.
    assert space.map("./outputs/models/smollm2-135m-instruct") == Path("outputs/models/smollm2-135m-instruct")
    assert space.map("HuggingFaceTB/SmolLM2-1.7B-Instruct") == Path("HuggingFaceTB/SmolLM2-1.7B-Instruct")


@pytest.mark.parametrize("bad", [REPO_ROOT / "data" / "prepared", REPO_ROOT / "outputs", REPO_ROOT.parent])
def test_a_workspace_cannot_overlap_the_real_run(bad):
    with pytest.raises(ValueError, match="real run"):
        Workspace.at(bad)


def test_demo_workspace_is_under_outputs_and_ignored_by_git():
    assert DEMO_WORKSPACE.is_relative_to(REPO_ROOT / "outputs")
    assert "outputs/*" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_recipe_for_a_workspace_points_every_written_path_into_it():
    space = Workspace.at(DEMO_WORKSPACE)
    recipe = yaml.safe_load((RECIPES / "demo-cpu.yml").read_text())
    moved = space.recipe_for(recipe)
    assert moved["datasets"][0]["path"] == "outputs/demo/prepared/train.jsonl"
    assert moved["test_datasets"][0]["path"] == "outputs/demo/prepared/val.jsonl"
    assert moved["output_dir"] == "outputs/demo/adapters/demo-cpu"
    assert moved["dataset_prepared_path"] == "outputs/demo/axolotl-cache/demo-cpu"
    assert moved["mlflow_tracking_uri"] == "sqlite:///outputs/demo/mlflow.db"
    assert moved["base_model"] == recipe["base_model"]
    untouched = {k for k in recipe if recipe[k] == moved[k]}
    assert set(recipe) - untouched == {"datasets", "test_datasets", "output_dir", "dataset_prepared_path",
                                       "mlflow_tracking_uri"}


def test_train_writes_a_workspace_copy_and_leaves_the_recipe_alone(tmp_path):
    original = (RECIPES / "demo-cpu.yml").read_bytes()
    space = Workspace.at(tmp_path / "ws")
    trained = train.resolve_recipe(RECIPES / "demo-cpu.yml", space)
    assert trained == tmp_path / "ws" / "recipes" / "demo-cpu.yml"
    assert yaml.safe_load(trained.read_text())["output_dir"] == str(tmp_path / "ws" / "adapters" / "demo-cpu")
    assert (RECIPES / "demo-cpu.yml").read_bytes() == original
    assert train.resolve_recipe(RECIPES / "qlora.yml", Workspace.real()) == RECIPES / "qlora.yml"


def test_train_refuses_a_workspace_without_prepared_data(tmp_path):
    result = CliRunner().invoke(train.main, ["recipes/demo-cpu.yml", "--workspace", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "make prepare" in result.output


def test_run_eval_points_data_adapter_and_results_into_the_workspace(tmp_path):
    space = Workspace.at(tmp_path / "ws")
    (space.adapters_dir / "demo-cpu").mkdir(parents=True)
    (space.adapters_dir / "demo-cpu" / "adapter_config.json").write_text("{}")
    space.prepared.mkdir(parents=True)
    config = run_eval.load_config(RECIPES / "eval" / "finetuned-slm.yml", (), None, None, False, None, space)
    assert config["model_args"]["peft"] == str(space.adapters_dir / "demo-cpu")
    assert config["output_path"] == str(space.eval_dir / "finetuned-slm")
    assert config["metadata"]["data_dir"] == str(space.prepared)
    assert config["tasks"] == ["icd10_medsynth"]
    (space.prepared / "test_unseen.jsonl").write_text("")
    config = run_eval.load_config(RECIPES / "eval" / "baseline-slm.yml", (), None, None, False, None, space)
    assert config["tasks"] == ["icd10_medsynth", "icd10_medsynth_unseen"]  # unseen codes get scored too


def test_an_llm_endpoint_without_server_is_reported_missing_with_the_reason(tmp_path):
    space = Workspace.at(tmp_path / "ws")
    url = f"http://127.0.0.1:{free_port()}/v1/chat/completions"  # bound and released: nothing listens
    result = CliRunner().invoke(run_eval.main, ["--workspace", str(space.root), "recipes/eval/baseline-llm.yml",
                                                "--model-arg", f"base_url={url}"])
    assert result.exit_code == 0, result.output
    note = json.loads((space.eval_dir / "baseline-llm" / "missing.json").read_text())
    assert "not reachable" in note["reason"] and url in note["reason"]
    # The report names it missing with that reason (another approach has results).
    write_results(space.eval_dir / "baseline-slm", "icd10_medsynth")
    result = CliRunner().invoke(report.main, ["--workspace", str(space.root), "--no-mlflow"])
    assert result.exit_code == 0, result.output
    summary = json.loads((space.report_dir / "summary.json").read_text())
    assert summary["approaches"]["baseline-llm"]["status"] == "missing"
    assert "not reachable" in summary["approaches"]["baseline-llm"]["reason"]
    assert "missing: endpoint" in (space.report_dir / "report.md").read_text()


def write_results(folder: Path, *tasks: str, golds: tuple[str, ...] = ("E11.9", "I10", "J06.9")) -> None:
    """A minimal lm-eval output folder with per-sample logs for ``tasks`` and its approach record."""
    from icd10_coder import approach
    from icd10_coder.scoring import METRICS, score_codes

    run = folder / "model"
    run.mkdir(parents=True, exist_ok=True)
    results = {"results": {}, "config": {"model_args": {"pretrained": str(REPO_ROOT / "outputs" / "models" / "m")}}}
    for task in tasks:
        samples = [{"doc_id": i, "doc": {"id": f"r{i}", "gold_code": g, "chapter": "4"}, "target": g,
                    "filtered_resps": [g], **score_codes(g, [g] if i else ["Z00.00"])} for i, g in enumerate(golds)]
        results["results"][task] = {f"{m},parsed_codes": sum(s[m] for s in samples) / len(samples) for m in METRICS}
        (run / f"samples_{task}_2026-01-01T00-00-00.jsonl").write_text("\n".join(json.dumps(s) for s in samples))
    (run / "results_2026-01-01T00-00-00.json").write_text(json.dumps(results))
    approach.write(folder, approach.record(name=folder.name, config={"model": "hf", **results["config"],
                                                                     "tasks": list(tasks)},
                                           shortlist=False, split="test", data_card=None, adapter_dir=None,
                                           source_config=f"recipes/eval/{folder.name}.yml"))


def test_report_shows_unseen_codes_as_their_own_table_without_machine_paths(tmp_path):
    space = Workspace.at(tmp_path / "ws")
    write_results(space.eval_dir / "baseline-slm", "icd10_medsynth", "icd10_medsynth_unseen")
    write_results(space.eval_dir / "finetuned-slm", "icd10_medsynth", "icd10_medsynth_unseen")
    result = CliRunner().invoke(report.main, ["--workspace", str(space.root), "--no-mlflow"])
    assert result.exit_code == 0, result.output
    summary = json.loads((space.report_dir / "summary.json").read_text())
    assert set(summary["unseen"]["approaches"]) == {"retrieval", "baseline-llm", "baseline-slm", "finetuned-slm"}
    assert summary["unseen"]["approaches"]["finetuned-slm"]["n"] == 3
    assert summary["approaches"]["finetuned-slm"]["model"] == "outputs/models/m"  # relative to the checkout
    md = (space.report_dir / "report.md").read_text()
    assert "Unseen codes (never seen in training)" in md and "icd10_medsynth_unseen" in md
    assert str(REPO_ROOT) not in md and str(REPO_ROOT) not in json.dumps(summary)


def test_holm_correction_is_the_textbook_step_down():
    tests = [{"p_value": p} for p in (0.01, 0.04, 0.03, 0.005)]
    stats.holm(tests)
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone: 0.06
    assert [t["p_holm"] for t in tests] == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_better_means_better_for_a_lower_is_better_metric():
    # A fails to parse on items 1 and 2, B on none: B is the better one there.
    a, b = {"1": 1, "2": 1, "3": 0}, {"1": 0, "2": 0, "3": 0}
    result = stats.mcnemar(a, b, lower_is_better=True)
    assert (result["a_only"], result["b_better"], result["a_better"]) == (2, 2, 0)
    assert stats.mcnemar(a, b)["a_better"] == 2


def long_rows(n: int = 12) -> list[dict[str, str]]:
    codes = ["E11.9", "I10", "J06.9", "N39.0"]
    rows = [{"Dialogue": f"[doctor] How are you? [patient] Tired, case {i}.", "ICD10": codes[i % 4]}
            for i in range(n)]
    rows[0]["Dialogue"] = "[patient] " + "my knee hurts and the pain keeps me awake at night " * 200
    return rows


def test_prepare_counts_and_warns_about_rows_longer_than_a_recipe_allows(tmp_path, embedded_model):
    source = tmp_path / "long.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in long_rows()))
    result = CliRunner().invoke(prepare.main, ["--source", str(source), "--out", str(tmp_path / "out"),
                                               "--val-fraction", "0", "--test-fraction", "0"])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "out" / "data_card.json").read_text())
    over = card["token_lengths"]["over_sequence_len"]
    # One ~2,200-token row among short ones: every 2048-token recipe counts exactly that one.
    assert over["recipes/demo-cpu.yml"] == {"sequence_len": 2048, "train": 1}
    assert over["recipes/qlora.yml"] == {"sequence_len": 2048, "train": 1}
    assert "recipes/demo-cpu.yml (sequence_len 2048) drops 1 train row(s)" in result.output
    assert "| `recipes/demo-cpu.yml` | 2048 | 1 |" in (tmp_path / "out" / "data_card.md").read_text()


def test_prepare_creates_the_mlflow_experiment_with_artifacts_beside_the_store(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    prepare_templated(tmp_path / "elsewhere")  # --out: no workspace store touched
    assert not (tmp_path / "ws").exists()
    result = CliRunner().invoke(prepare.main, ["--demo", "--tokenizer", "none", "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("icd10-medsynth")
    assert experiment.artifact_location == (tmp_path / "ws" / "mlflow-artifacts").as_uri()
    assert stat.S_IMODE((tmp_path / "ws" / "prepared" / "train.jsonl").stat().st_mode) == 0o600
    assert not (tmp_path / "mlruns").exists()


def test_display_path_is_relative_to_the_checkout():
    assert display_path(REPO_ROOT / "outputs" / "demo") == "outputs/demo"
    assert display_path("HuggingFaceTB/SmolLM2-1.7B-Instruct") == "HuggingFaceTB/SmolLM2-1.7B-Instruct"
