"""tools/report.py on hand-made lm-eval outputs: intervals, paired tests, missing approaches, MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

import report
from icd10_coder import approach, stats
from icd10_coder.scoring import METRICS, score_codes

GOLD = ["M25.562", "E11.9", "I10", "J06.9", "N39.0", "K21.9", "F41.1", "M54.50", "E11.9", "I10"]


def write_run(folder: Path, model_args: dict, predictions: list[list[str]]) -> None:
    """An lm-eval output folder as `lm_eval --log_samples` writes it."""
    run = folder / "model__name"
    run.mkdir(parents=True)
    samples = []
    for i, (gold, codes) in enumerate(zip(GOLD, predictions, strict=True)):
        scores = score_codes(gold, codes)
        samples.append({"doc_id": i, "doc": {"id": f"row-{i}", "gold_code": gold, "chapter": gold[0]},
                        "target": gold, "resps": [[" / ".join(codes)]], "filtered_resps": [", ".join(codes)],
                        **scores})
    means = {m: sum(s[m] for s in samples) / len(samples) for m in METRICS}
    results = {"results": {"icd10_medsynth": {f"{m},parsed_codes": v for m, v in means.items()}},
               "config": {"model_args": model_args}, "n-samples": {"icd10_medsynth": {"effective": len(samples)}}}
    (run / "results_2026-01-01T00-00-00.json").write_text(json.dumps(results))
    approach.write(folder, approach.record(name=folder.name, config={"model": "hf", "model_args": model_args,
                                                                     "tasks": ["icd10_medsynth"]},
                                           shortlist=False, split="test", data_card=None, adapter_dir=None,
                                           source_config="recipes/eval/baseline-slm.yml"))
    (run / "samples_icd10_medsynth_2026-01-01T00-00-00.jsonl").write_text("\n".join(json.dumps(s) for s in samples))


@pytest.fixture
def eval_dir(tmp_path) -> Path:
    base = tmp_path / "eval"
    wrong = [["Z00.00"]] * len(GOLD)
    right = [[g] for g in GOLD]
    write_run(base / "baseline-slm", {"pretrained": "base"}, wrong)
    write_run(base / "finetuned-slm", {"pretrained": "base", "peft": "adapter"}, right[:8] + wrong[:2])
    return base


def run_report(tmp_path: Path, eval_dir: Path, *extra: str):
    return CliRunner().invoke(report.main, ["--eval-dir", str(eval_dir), "--out", str(tmp_path / "report"),
                                            "--data-card", str(tmp_path / "none.json"), *extra])


def test_report_tables_intervals_and_missing_approach(tmp_path, eval_dir):
    result = run_report(tmp_path, eval_dir, "--no-mlflow")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["approaches"]["baseline-llm"] == {"status": "missing",  # never reported as zero
                                                     "reason": "not evaluated (no results)"}
    finetuned = summary["approaches"]["finetuned-slm"]
    assert finetuned["model"] == "base + adapter" and finetuned["n"] == 10
    exact = finetuned["metrics"]["exact_match"]
    assert exact["mean"] == 0.8
    low, high = stats.wilson(8, 10)
    assert (exact["ci95_low"], exact["ci95_high"]) == pytest.approx((low, high))
    assert 0.49 < low < 0.5 and 0.94 < high < 0.95  # the textbook Wilson interval for 8/10
    md = (tmp_path / "report" / "report.md").read_text()
    assert "missing: not evaluated" in md and "Finetuned SLM" in md
    for png in ("metrics_by_approach.png", "accuracy_by_chapter.png", "confusions.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"


def test_paired_test_is_an_exact_mcnemar(tmp_path, eval_dir):
    run_report(tmp_path, eval_dir, "--no-mlflow")
    tests = json.loads((tmp_path / "report" / "summary.json").read_text())["paired_tests"]
    exact = next(t for t in tests if t["metric"] == "exact_match")
    # 8 items only the finetuned model gets right, none the other way: p = 2 * 0.5**8
    assert (exact["a_only"], exact["b_only"], exact["n_paired"]) == (0, 8, 10)
    assert exact["p_value"] == pytest.approx(2 * 0.5**8)
    assert exact["difference_b_minus_a"] == pytest.approx(0.8)
    assert stats.mcnemar({"a": 1}, {"a": 1})["p_value"] == 1.0


def test_no_results_is_a_clear_error(tmp_path):
    result = run_report(tmp_path, tmp_path / "empty", "--no-mlflow")
    assert result.exit_code != 0 and "make eval" in result.output


def test_results_without_an_approach_record_are_refused_with_the_command_that_remakes_them(tmp_path, eval_dir):
    (eval_dir / "finetuned-slm" / approach.RECORD).unlink()
    result = run_report(tmp_path, eval_dir, "--no-mlflow")
    assert result.exit_code != 0 and "finetuned-slm has results but no approach.json" in result.output
    assert "tools/run_eval.py" in result.output and not (tmp_path / "report" / "report.md").exists()


def test_runs_are_logged_to_the_workspace_mlflow_store(tmp_path, eval_dir, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # a store created by someone else would put artifacts in ./mlruns
    result = run_report(tmp_path, eval_dir, "--workspace", str(tmp_path / "ws"))
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("icd10-medsynth")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"eval-baseline-slm", "eval-finetuned-slm"}
    assert runs["eval-finetuned-slm"].data.metrics["exact_match"] == 0.8
    assert not math.isnan(runs["eval-finetuned-slm"].data.metrics["exact_match_ci95_low"])
    artifacts = {a.path for a in client.list_artifacts(runs["eval-finetuned-slm"].info.run_id, "report")}
    assert "report/summary.json" in artifacts
    assert (tmp_path / "ws" / "mlflow-artifacts").is_dir() and not (tmp_path / "mlruns").exists()


def test_statistics_match_the_figures_of_the_former_hand_written_formulas():
    """stats.py now calls statsmodels; on fixed inputs it gives the figures the project's own formulas gave
    (recorded from them before the change), so no earlier report's numbers move."""
    from icd10_coder import stats

    for (successes, n), expected in {(0, 10): (0.0, 0.2775327998628892), (3, 10): (0.10779126740630099,
                                     0.6032218525388546), (10, 10): (0.7224672001371107, 1.0),
                                     (50, 210): (0.1855207883191717, 0.30007942874521476),
                                     (1, 1): (0.20654931437723745, 1.0)}.items():
        assert stats.wilson(successes, n) == pytest.approx(expected, abs=1e-12)
    a = {str(i): v for i, v in enumerate([1, 1, 0, 0, 1, 0, 1, 1])}
    b = {str(i): v for i, v in enumerate([0, 1, 1, 0, 0, 0, 1, 0])}
    test = stats.mcnemar(a, b)
    assert (test["a_only"], test["b_only"], test["n_paired"]) == (3, 1, 8)
    assert test["p_value"] == pytest.approx(0.625, abs=1e-12)
    assert stats.mcnemar({"x": 1}, {"x": 1})["p_value"] == 1.0
    tests = [{"p_value": p} for p in (0.01, 0.04, 0.03, 0.5)]
    stats.holm(tests)
    assert [t["p_holm"] for t in tests] == pytest.approx([0.04, 0.09, 0.09, 0.5], abs=1e-12)
