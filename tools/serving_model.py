"""Train the served model on every real row (``make serving-model``): what ``make app`` and predict serve.

    python tools/serving_model.py                   # every real row (hours on 2 cores: the LoRA reads each once)
    python tools/serving_model.py --rows 12 --max-steps 1 --encoder-epochs 0.05 --workspace outputs/serving-slice

Needs a finished real-data experiment (``tools/experiment_real.py``) and its out-of-fold calibration
(``tools/calibrate.py``). Takes what they chose and refits it on every shared real row:

1. the retriever's query encoder (``recipes/encoder-cpu.yml``) on every row;
2. the SLM shortlist retriever the folds chose most often (with this encoder), the prompt (evidence window
   or whole dialogue) they chose most often; the gold code on every training list;
3. the LoRA (``recipes/demo-cpu-shortlist.yml``) on every row (``--lora-rows`` fewer), when the experiment's
   best approach on dev is a finetuned one;
4. the scoring (normalisation, fusion weight, calibrator) fitted on the experiment's out-of-fold rows by
   ``tools/calibrate.py``.

Writes the adapter's ``icd10_scoring.json`` and ``<workspace>/serving.json`` (with the training rows, the
hashes of the adapter, encoder and data card, and the command that rewrites it); ``make app`` and
``tools/predict.py`` serve it by default when it exists. There is no test split left: its accuracy on new
dialogues is the experiment's out-of-fold figure, and its confidence was measured cross-fitted there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from icd10_coder import serving
from icd10_coder.benchmarks.common import hardware
from icd10_coder.experiment import (
    Settings,
    adapter_dir,
    retriever_variants,
    shortlist,
    train_overrides,
    write_pairs,
    write_training_data,
)
from icd10_coder.generated import write_generated
from icd10_coder.offline import apply_offline_env
from icd10_coder.paths import EMBEDDED_MODEL, REPO_ROOT, display_path, make_private
from icd10_coder.realdata import REAL_FILES, load_real_rows, subsample
from icd10_coder.retrieval import Retriever
from icd10_coder.stages import run
from icd10_coder.workspace import SERVING_WORKSPACE, Workspace


def most_chosen(folds: dict[str, Any], key: str) -> str:
    """The value the experiment's folds chose most often for ``key`` (ties: the first fold's)."""
    values = [picked[key]["value"] for picked in folds.values()]
    counts = Counter(values)
    return max(values, key=lambda v: (counts[v], -values.index(v)))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--experiment", "experiment_dir", default="outputs/experiment-real", show_default=True, metavar="DIR",
              help="The finished real-data experiment whose choices and out-of-fold calibration are served.")
@click.option("--workspace", default=str(SERVING_WORKSPACE.relative_to(REPO_ROOT)), show_default=True,
              metavar="DIR", help="Where the serving model is trained (its serving.json is the default served).")
@click.option("--lora-rows", type=click.IntRange(min=1), default=None,
              help="Train the LoRA on this many rows, drawn reproducibly. Default: every row.")
@click.option("--rows", "row_limit", type=click.IntRange(min=2), default=None,
              help="Use only this many real rows in all (a slice, for tests).")
@click.option("--encoder-epochs", type=click.FloatRange(min=0.01), default=None,
              help="Epochs of the encoder. Default: the experiment's.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop the LoRA after N steps.")
@click.option("--docs/--no-docs", default=True, show_default=True,
              help="Also describe the model in docs/generated/serving-model.md (shown in GUIDE).")
@click.option("--docs-only", is_flag=True, help="Train nothing: describe the workspace's serving model in the docs.")
def main(experiment_dir: str, workspace: str, lora_rows: int | None, row_limit: int | None,
         encoder_epochs: float | None, max_steps: int | None, docs: bool, docs_only: bool) -> None:
    """Train the experiment's best approach on every real row and serve it with out-of-fold calibration."""
    apply_offline_env(hub_offline=True)
    if docs_only:
        serving_file = Workspace.at(workspace).serving_file
        if not serving_file.is_file():
            raise click.ClickException(f"{display_path(serving_file)} is missing: run tools/serving_model.py first")
        describe(json.loads(serving_file.read_text()), serving_file)
        return
    report_dir = Workspace.at(experiment_dir).report_dir
    choices_file, calibration_file = report_dir / "choices.json", report_dir / "calibration.json"
    for needed, command in ((choices_file, "tools/experiment_real.py"), (calibration_file, "tools/calibrate.py")):
        if not needed.is_file():
            raise click.ClickException(f"{display_path(needed)} is missing: run {command} first")
    choices, calibrated = json.loads(choices_file.read_text()), json.loads(calibration_file.read_text())
    best = (choices.get("best_model_approach") or {}).get("value")
    if best is None:
        raise click.ClickException("the experiment trained no SLM (--retrieval-only): nothing to serve")
    model = best.split("-")[0]
    if calibrated["model"] != model:
        raise click.ClickException(f"the experiment's best approach on dev is {best}, but "
                                   f"{display_path(calibration_file)} calibrates the {calibrated['model']} SLM: run "
                                   f"tools/calibrate.py --model {model}")
    settings = choices["settings"]
    space = Workspace.at(workspace)
    if space.is_real:
        raise click.ClickException("pick a --workspace of its own (default outputs/serving)")
    try:
        rows = load_real_rows()
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    if row_limit:
        rows = subsample(rows, row_limit, seed="serving-slice")
    os.umask(0o077)  # real dialogues: owner-only
    timings: dict[str, float] = {}
    started = time.perf_counter()
    # 1. The encoder on every row.
    encoder_dir = space.outputs / "encoders" / "minilm-query"
    run(f"query encoder on {len(rows)} real rows",
        [sys.executable, "tools/train_encoder.py", settings["encoder_recipe"], "--workspace", str(space.root),
         "--set", f"train_data={write_pairs(space.root / 'encoder-data' / 'train.jsonl', rows)}", "--set", "dev_data=",
         "--set", f"output_dir={encoder_dir}",
         "--set", f"num_train_epochs={encoder_epochs or settings['encoder_epochs']}"], timings, space)
    # 2. The shortlist and prompt the folds chose most often.
    listed = most_chosen(choices["folds"], "shortlist")
    window_tokens = settings["window_tokens"] if most_chosen(choices["folds"], "prompt") == "window" else 0
    retriever_settings = retriever_variants(display_path(encoder_dir))[listed]
    trained = subsample(rows, lora_rows, seed="serving-lora") if lora_rows else rows
    click.echo(f"shortlists ({listed}, K={settings['shortlist_k']}) and "
               f"{'evidence windows' if window_tokens else 'whole dialogues'} for {len(trained)} rows")
    lists = shortlist(Retriever.fit(retriever_settings), trained, settings["shortlist_k"], window_tokens)
    inserted = write_training_data(space.prepared_shortlist, lists, [], settings["shortlist_k"],
                                   retriever_settings.as_record(), window_tokens, settings["seed"],
                                   source=f"every shared real MedSynth row ({', '.join(p.name for p in REAL_FILES)})")
    # 3. The LoRA, when the best approach is finetuned.
    adapter = None
    if model == "finetuned":
        protocol = replace(Settings.from_record(settings), max_steps=max_steps)
        run(f"LoRA on {len(lists)} real rows ({inserted} with the gold code put on the list)",
            [sys.executable, "tools/train.py", protocol.recipe, "--workspace", str(space.root),
             *train_overrides(protocol)], timings, space)
        adapter = adapter_dir(space, protocol)
    # 4. The scoring record, fitted out of fold.
    record = served_record(space, calibrated, best, adapter, len(rows), len(lists), calibration_file,
                           command=" ".join(["python tools/serving_model.py", *sys.argv[1:]]))
    machine = hardware()
    record["trained_on"].update(seconds=timings, minutes=round((time.perf_counter() - started) / 60, 1),
                                machine=f"{machine['cpu']}, {machine['cores']} cores")
    text = json.dumps(record, indent=2) + "\n"
    space.serving_file.write_text(text)
    if adapter is not None:
        (adapter / serving.SCORING_RECORD).write_text(text)
        make_private(adapter)
    click.secho(f"-> {display_path(space.serving_file)}: {serving.served_by(record)}", bold=True)
    if docs and not row_limit and not max_steps:  # a slice describes nothing a user is served
        describe(record, space.serving_file)


def describe(record: dict[str, Any], serving_file: Path) -> None:
    """Write the serving model's description (docs/generated/serving-model.md, shown in GUIDE)."""
    head = f"`python tools/serving_model.py`, {time.strftime('%Y-%m-%d')}, from `{display_path(serving_file)}`:"
    written = write_generated("serving-model", "\n".join([head, *serving.describe_serving_model(record)]))
    click.echo(f"wrote {display_path(written)} (GUIDE)")


def served_record(space: Workspace, calibrated: dict[str, Any], best: str, adapter: Path | None, rows: int,
                  lora_rows: int, calibration_file: Path, command: str) -> dict[str, Any]:
    """The serving model's scoring record: the data card's shortlist, the out-of-fold scoring and its
    cross-fitted calibration, what it was trained on, and the hashes of what it was fitted with."""
    card_file = space.prepared_shortlist / "data_card.json"
    card = json.loads(card_file.read_text())
    picked = calibrated["methods"][calibrated["picked"]]
    record = serving.scoring_record(
        approach=f"serving-{best}", base_model=display_path(EMBEDDED_MODEL),
        adapter=display_path(adapter) if adapter else None, shortlist=card["shortlist"],
        scoring=calibrated["scoring"],
        dev={"split": "the experiment's out-of-fold test rows", "rows": calibrated["rows"],
             "exact_match": calibrated["served_exact_on_these_rows"], "source": display_path(calibration_file)},
        test_calibration={**{k: picked[k] for k in ("n", "ece", "ece_95ci", "accuracy", "mean_confidence", "bins",
                                                   "bands", "log_loss")},
                          "split": "out-of-fold, cross-fitted",
                          "note": "each fold's rows calibrated by what was fitted on the other folds"},
        data_card=display_path(card_file), refit=command)
    record["trained_on"] = {"rows": rows, "lora_rows": lora_rows if adapter else 0,
                            "files": [p.name for p in REAL_FILES]}
    record["why"] = "the experiment's best approach on dev, trained on every real row (tools/serving_model.py)"
    return record


if __name__ == "__main__":
    main()
