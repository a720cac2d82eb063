"""The real-data experiment (``make experiment-real``): do the models beat the lookup on real dialogues?

    python tools/experiment_real.py            # 805 real rows, 3 category folds, ~80 min on 2 CPU cores
    python tools/experiment_real.py --quick    # the same protocol on fewer rows, ~20 min, no docs written
    python tools/experiment_real.py --train-rows 2 --dev-rows 3 --test-rows 3 --sibling-rows 2 --max-steps 1 \\
        --retriever-variant "tfidf (previous default)" --no-docs    # the tests' slice

Reads the shared real MedSynth files in place (``../shared/data/``: 805 rows, one per code, every
chapter), splits them into category folds, makes every choice on each fold's dev rows and scores the
test rows once at the end (protocol: ``icd10_coder/experiment.py``). Two conditions, each its own
table: **unseen categories** (no test code has a trained sibling) and **unseen codes, seen siblings**.
Writes ``choices.json``, ``journal.jsonl``, ``outcomes.jsonl``, ``results.json`` and ``report.md`` into
``<workspace>/report/``, and, unless ``--no-docs``, the tables into ``docs/generated/experiment-real.md``
and the README/GUIDE blocks that show them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import click

from icd10_coder.experiment import Settings, markdown, run_experiment, verdict
from icd10_coder.offline import apply_offline_env
from icd10_coder.paths import EMBEDDED_MODEL, display_path
from icd10_coder.realdata import REAL_FILES, load_real_rows
from icd10_coder.retrieval_study import VARIANTS
from icd10_coder.stages import run
from icd10_coder.workspace import Workspace

QUICK = {"train_rows": 6, "dev_rows": 8, "test_rows": 12, "sibling_rows": 4}
DEFAULTS = Settings()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--workspace", default="outputs/experiment-real", show_default=True, metavar="DIR",
              help="The experiment's own workspace (replaced on every run).")
@click.option("--folds", type=click.IntRange(2, 10), default=DEFAULTS.folds, show_default=True,
              help="Category folds (every category is tested in one fold).")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Seed of the folds and subsamples.")
@click.option("--train-rows", type=click.IntRange(min=1), default=DEFAULTS.train_rows, show_default=True,
              help="Training rows per fold (LoRA costs ~15-20 s per real row and epoch on 2 CPU cores).")
@click.option("--dev-rows", type=click.IntRange(min=1), default=DEFAULTS.dev_rows, show_default=True,
              help="Dev rows per fold (every choice is made on them).")
@click.option("--test-rows", type=click.IntRange(min=1), default=DEFAULTS.test_rows, show_default=True,
              help="Unseen-category test rows per fold (~3 s per row and model on 2 CPU cores).")
@click.option("--sibling-rows", type=click.IntRange(min=1), default=DEFAULTS.sibling_rows, show_default=True,
              help="Seen-sibling test rows per fold.")
@click.option("--shortlist-k", type=click.IntRange(2, 50), default=DEFAULTS.shortlist_k, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS.epochs, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop each training after N steps.")
@click.option("--retriever-variant", "variants", multiple=True, type=click.Choice(list(VARIANTS)),
              help="Retriever variants to choose from on dev (repeat; default: all of retrieval_study.VARIANTS).")
@click.option("--quick", is_flag=True, help="Fewer rows per fold (" + ", ".join(f"{k} {v}" for k, v in QUICK.items())
              + "): ~20 min; never writes the docs.")
@click.option("--docs/--no-docs", default=True, show_default=True,
              help="Write the tables into docs/generated/experiment-real.md (GUIDE.md) and "
                   "experiment-real-summary.md (README.md).")
def main(workspace: str, folds: int, seed: int, train_rows: int, dev_rows: int, test_rows: int, sibling_rows: int,
         shortlist_k: int, epochs: int, max_steps: int | None, variants: tuple[str, ...], quick: bool,
         docs: bool) -> None:
    """Retrieval vs the embedded SLM (zero-shot and LoRA, choice by likelihood, fusion) on real category folds."""
    apply_offline_env(hub_offline=True)
    if not (EMBEDDED_MODEL / "config.json").is_file():
        raise click.ClickException(f"{EMBEDDED_MODEL} is missing: run `make setup` first")
    space = Workspace.at(workspace)
    if space.is_real:
        raise click.ClickException("the experiment never runs in the real run's workspace; pick another --workspace")
    try:
        rows = load_real_rows()
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    settings = Settings(folds=folds, seed=seed, train_rows=train_rows, dev_rows=dev_rows, test_rows=test_rows,
                        sibling_rows=sibling_rows, shortlist_k=shortlist_k, epochs=epochs, max_steps=max_steps,
                        retriever_variants=variants)
    if quick:
        settings, docs = replace(settings, **QUICK), False
    shutil.rmtree(space.root, ignore_errors=True)
    os.umask(0o077)  # real dialogues: owner-only
    timings: dict[str, float] = {}
    # The recipe's own CPU settings for real dialogues, stated here too (the experiment's protocol); it has no
    # test_datasets, so axolotl runs no evaluation pass.
    overrides = [f"--num_epochs={settings.epochs}", "--sequence_len=2048", "--micro_batch_size=1",
                 "--gradient_accumulation_steps=2"]
    if settings.max_steps:
        overrides.append(f"--max_steps={settings.max_steps}")

    def train(stage: str, workspace_args: list[str]) -> None:
        run(stage, [sys.executable, "tools/train.py", settings.recipe, *workspace_args, *overrides], timings,
            Workspace.at(workspace_args[-1]))

    def load_predictor(adapter: Path | None):
        from icd10_coder.predictor import Predictor

        return Predictor(EMBEDDED_MODEL, adapter, constrain=False, device="cpu")

    started = time.perf_counter()
    results = run_experiment(space, rows, settings, train, load_predictor, log=click.echo)
    minutes = (time.perf_counter() - started) / 60
    command = "python tools/experiment_real.py" + (" --quick" if quick else "")
    header = (f"{len(rows)} real MedSynth dialogues ({', '.join(p.name for p in REAL_FILES)}), "
              f"{settings.folds} category folds; per fold {settings.train_rows} training, {settings.dev_rows} dev, "
              f"{settings.test_rows} unseen-category and {settings.sibling_rows} seen-sibling test rows (drawn at "
              f"random from the fold's split, to fit ~{minutes:.0f} min on 2 CPU cores); every choice made on dev "
              f"(`choices.json`), test rows scored once. `{command}` ({'make experiment-real' if not quick else ''}"
              f"), {date.today().isoformat()}, {minutes:.0f} min.")
    text = f"{header}\n\n{verdict(results)}\n\n{markdown(results)}"
    results["minutes"] = round(minutes, 1)
    results["stage_seconds"] = timings
    (space.report_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (space.report_dir / "report.md").write_text("# Real-data experiment\n\n" + text)
    click.echo("\n" + text)
    if docs:
        from icd10_coder.experiment import readme_summary
        from icd10_coder.generated import write_generated

        write_generated("experiment-real-summary", readme_summary(header, results))
        click.echo(f"wrote {display_path(write_generated('experiment-real', text))} (GUIDE), "
                   "experiment-real-summary.md (README) and their blocks")
    click.secho(f"\nExperiment finished in {minutes:.0f} min. Report: {display_path(space.report_dir)}/report.md",
                bold=True)


if __name__ == "__main__":
    main()
