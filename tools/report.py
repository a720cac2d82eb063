"""Compare the evaluated approaches: ``<workspace>/report/{report.md,summary.json,*.png}`` + MLflow.

    python tools/report.py                          # the real run: outputs/eval/ -> outputs/report/
    python tools/report.py --workspace outputs/demo # the demo's workspace

Reads lm-eval's results and per-sample logs for each approach present, adds 95% Wilson
confidence intervals, exact McNemar tests on the items both approaches answered (Holm-
corrected over every test shown), plots, and logs everything to the workspace's MLflow
store. Missing approaches are reported as missing, with the reason, never as zero. The
test split of unseen codes (task ``icd10_medsynth_unseen``) gets its own table.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from icd10_coder import calibration
from icd10_coder.jsonl import read_jsonl
from icd10_coder.offline import apply_offline_env
from icd10_coder.paths import display_path
from icd10_coder.reporting import (
    APPROACHES,
    TASK,
    UNSEEN_TASK,
    approaches_info,
    load_approach,
    log_to_mlflow,
    markdown,
    measured_calibration,
    metric_summary,
    missing_reason,
    paired_tests,
    plot_chapters,
    plot_confusions,
    plot_metrics,
    split_title,
    without_nan,
)
from icd10_coder.retrieval import defaults_chosen_on
from icd10_coder.stats import holm
from icd10_coder.workspace import Workspace


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--workspace", default=None, metavar="DIR",
              help="Workspace to report on (its eval/ results, prepared data card and MLflow store). "
                   "Default: $ICD10_WORKSPACE, else the checkout (the real run).")
@click.option("--eval-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with one lm-eval output folder per approach. Default: the workspace's eval/.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where report.md, summary.json and the plots go. Default: the workspace's report/.")
@click.option("--data-card", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Data card of the evaluated data. Default: the workspace's prepared data_card.json.")
@click.option("--mlflow/--no-mlflow", "use_mlflow", default=True, show_default=True,
              help="Log the evaluation runs and the report to the workspace's MLflow store.")
def main(workspace: str | None, eval_dir: Path | None, out: Path | None, data_card: Path | None,
         use_mlflow: bool) -> None:
    """Build the comparison report from lm-eval results."""
    apply_offline_env()
    import matplotlib

    matplotlib.use("Agg")
    try:
        space = Workspace.at(workspace)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    eval_dir = eval_dir or space.eval_dir
    out = out or space.report_dir
    data_card = data_card or next((f for f in (space.prepared / "data_card.json",
                                               space.prepared_shortlist / "data_card.json") if f.is_file()),
                                  space.prepared / "data_card.json")
    folders = {p.name: p for p in sorted(eval_dir.iterdir()) if p.is_dir()} if eval_dir.is_dir() else {}
    names = list(APPROACHES) + sorted(set(folders) - set(APPROACHES))
    try:
        by_task = {task: {name: load_approach(folders[name], task) if name in folders else None for name in names}
                   for task in (TASK, UNSEEN_TASK)}
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    approaches = [a for a in by_task[TASK].values() if a is not None]
    unseen = [a for a in by_task[UNSEEN_TASK].values() if a is not None]
    if not approaches and not unseen:
        reasons = "; ".join(f"{n}: {missing_reason(folders.get(n))}" for n in APPROACHES)
        raise click.ClickException(f"no lm-eval results under {display_path(eval_dir)} ({reasons}): "
                                   "run `make eval` first")

    summaries = {(a.task, a.name): metric_summary(a) for a in approaches + unseen}
    tests = paired_tests(approaches)
    unseen_tests = paired_tests(unseen)
    holm(tests + unseen_tests)
    summary: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": TASK,
        "workspace": space.name,
        "data_card_sha256": hashlib.sha256(data_card.read_bytes()).hexdigest() if data_card.is_file() else None,
        "approaches": approaches_info(names, folders, by_task[TASK], summaries),
        "paired_tests": tests,
        "multiple_comparisons": f"Holm over all {len(tests) + len(unseen_tests)} paired tests (p_holm)",
        "test_title": split_title(json.loads(data_card.read_text()) if data_card.is_file() else {}),
        "calibration": measured_calibration(approaches + unseen),
    }
    test_split = data_card.parent / "test.jsonl"
    if test_split.is_file():
        summary["retriever_defaults"] = defaults_chosen_on(row["id"] for row in read_jsonl(test_split) if "id" in row)
    served = space.serving_file
    if served.is_file():
        record = json.loads(served.read_text())
        summary["served"] = {"approach": record["approach"], "dev_exact_match": record["chosen_on"]["exact_match"],
                             "compared_on_dev": record.get("compared_on_dev", {})}
    if unseen:
        summary["unseen"] = {"task": UNSEEN_TASK, "approaches": approaches_info(names, folders, by_task[UNSEEN_TASK],
                                                                                  summaries),
                             "paired_tests": unseen_tests}

    out.mkdir(parents=True, exist_ok=True)
    plotted = approaches or unseen  # the test split; an unseen-only run (make experiment-real) plots that
    plots = ["metrics_by_approach.png"]
    plot_metrics(plotted, {a.name: summaries[(a.task, a.name)] for a in plotted}, out / plots[0])
    with_samples = [a for a in plotted if a.samples]
    if with_samples:
        plot_chapters(with_samples, out / "accuracy_by_chapter.png")
        plot_confusions(with_samples, out / "confusions.png")
        plots += ["accuracy_by_chapter.png", "confusions.png"]
    if summary["calibration"]:
        calibration.plot_reliability(summary["calibration"], {a.name: a.label for a in approaches + unseen},
                                     out / "reliability.png")
        plots.append("reliability.png")
    (out / "summary.json").write_text(json.dumps(without_nan(summary), indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(markdown(summary, approaches + unseen, plots))
    click.echo((out / "report.md").read_text())
    if use_mlflow:
        store = log_to_mlflow(summary, approaches + unseen, out, space)
        click.echo(f"Logged {len(approaches) + len(unseen)} evaluation run(s) to MLflow at {store}")
    click.echo(f"Report: {display_path(out.resolve())}/report.md")


if __name__ == "__main__":
    main()
