"""Fit the served confidence on the real-data experiment's out-of-fold predictions (``make calibrate``).

    python tools/calibrate.py                          # outputs/experiment-real, the finetuned SLM
    python tools/calibrate.py --experiment outputs/experiment-real --model baseline --no-docs

Reads ``<experiment>/report/scores.jsonl`` (every SLM-scored test row, scored by the fold models that never
trained on its category; ``tools/experiment_real.py`` writes it, ``--rescore-test`` adds it to an older
run) and compares temperature, Platt and isotonic calibration, each fold's rows calibrated by what was
fitted on the other folds (``icd10_coder/oof_calibration.py``). Picks the method with the least
cross-fitted log loss and fits it on every row. Writes ``calibration.json``, ``calibration.md`` and
``reliability.png`` into ``<experiment>/report/`` and, unless ``--no-docs``, the table and the diagram into
``docs/generated/`` (shown in GUIDE). ``tools/serving_model.py`` serves the fitted scoring.
"""

from __future__ import annotations

import json
import shutil

import click

from icd10_coder import calibration, oof_calibration
from icd10_coder.experiment import MODELS
from icd10_coder.generated import GENERATED_DIR, write_generated
from icd10_coder.jsonl import read_jsonl
from icd10_coder.paths import display_path
from icd10_coder.workspace import Workspace

CALIBRATION_FILE = "calibration.json"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--experiment", "experiment_dir", default="outputs/experiment-real", show_default=True, metavar="DIR",
              help="A finished real-data experiment's workspace (tools/experiment_real.py).")
@click.option("--model", type=click.Choice(MODELS), default="finetuned", show_default=True,
              help="Whose scores to calibrate: the LoRA (served by the serving model) or the zero-shot SLM.")
@click.option("--resamples", type=click.IntRange(min=100), default=1000, show_default=True,
              help="Bootstrap resamples for the ECE's 95% interval.")
@click.option("--docs/--no-docs", default=True, show_default=True,
              help="Also write the table and the diagram into docs/generated/ (shown in GUIDE).")
def main(experiment_dir: str, model: str, resamples: int, docs: bool) -> None:
    """Calibrate MODEL's fused choice on the experiment's out-of-fold rows; report every method."""
    report_dir = Workspace.at(experiment_dir).report_dir
    scores = report_dir / "scores.jsonl"
    if not scores.is_file():
        raise click.ClickException(f"{display_path(scores)} is missing: run tools/experiment_real.py (or, for a run "
                                   "made before it was written, tools/experiment_real.py --rescore-test)")
    records = read_jsonl(scores)
    try:
        result = oof_calibration.calibrate(records, model, resamples)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    result["source"] = display_path(scores)
    (report_dir / CALIBRATION_FILE).write_text(json.dumps(result, indent=2) + "\n")
    text = "\n".join(oof_calibration.markdown(result))
    (report_dir / "calibration.md").write_text("# Calibration on out-of-fold rows\n\n" + text + "\n")
    shown = {result["picked"]: result["methods"][result["picked"]],
             oof_calibration.REFERENCE: result["methods"][oof_calibration.REFERENCE]}
    calibration.plot_reliability(shown, {}, report_dir / "reliability.png",
                                 title="Reliability on out-of-fold real dialogues (cross-fitted)")
    click.echo(text)
    if docs:
        shutil.copyfile(report_dir / "reliability.png", GENERATED_DIR / "reliability-oof.png")
        click.echo(f"wrote {display_path(write_generated('calibration-oof', text))} and reliability-oof.png")
    click.secho(f"-> {display_path(report_dir / CALIBRATION_FILE)} (picked: {result['picked']})", bold=True)


if __name__ == "__main__":
    main()
