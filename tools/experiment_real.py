"""The real-data experiment (``make experiment-real``): does fine-tuning beat the lookup on real dialogues?

    python tools/experiment_real.py            # 1,565 real rows, 3 category folds, ~2.5 h on 2 CPU cores (measured)
    python tools/experiment_real.py --retrieval-only   # the encoder and both retrieval approaches, ~35 min
    python tools/experiment_real.py --quick    # the same protocol on fewer rows, ~20 min, no docs written
    python tools/experiment_real.py --rescore-test   # only the test stage again, same fold models and choices
    python tools/experiment_real.py --rechoose-dev   # the SLMs' choices again on every dev row, ~50 min
    python tools/experiment_real.py --lora-rows 2 --dev-rows 3 --prompt-choice-rows 2 --slm-test-rows 2 \\
        --test-rows 3 --max-steps 1 --encoder-epochs 0.05 --no-docs    # the tests' slice

Reads the shared real MedSynth files in place (``../shared/data/``: 1,565 rows, one per code), splits them
into category folds, fine-tunes the retriever's query encoder on every training row and a LoRA on
``--lora-rows`` of them, makes every choice on each fold's dev rows and scores the test rows once at the
end (protocol: ``icd10_coder/experiment.py``). Two tables: both retrieval approaches on every test row,
and every approach on the rows the SLMs scored. Writes ``choices.json``, ``journal.jsonl``,
``outcomes.jsonl``, ``scores.jsonl`` (the out-of-fold scores ``tools/calibrate.py`` fits on),
``results.json`` and ``report.md`` into ``<workspace>/report/``, and, unless
``--no-docs``, the tables into ``docs/generated/experiment-real.md`` and the README/GUIDE blocks that
show them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path
from typing import Any

import click

from icd10_coder import experiment
from icd10_coder.experiment import Settings, markdown, readme_summary, run_experiment, verdict
from icd10_coder.generated import write_generated
from icd10_coder.jsonl import read_jsonl
from icd10_coder.offline import apply_offline_env
from icd10_coder.paths import EMBEDDED_MODEL, display_path
from icd10_coder.realdata import REAL_FILES, load_real_rows, subsample
from icd10_coder.retrieval import defaults_chosen_on
from icd10_coder.stages import run
from icd10_coder.workspace import Workspace

QUICK = {"lora_rows": 12, "dev_rows": 16, "prompt_choice_rows": 6, "slm_test_rows": 12, "test_rows": 60,
         "encoder_epochs": 0.5}
DEFAULTS = Settings()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--workspace", default="outputs/experiment-real", show_default=True, metavar="DIR",
              help="The experiment's own workspace (replaced on every run).")
@click.option("--folds", type=click.IntRange(2, 10), default=DEFAULTS.folds, show_default=True,
              help="Category folds (every category is tested in one fold).")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Seed of the folds and subsamples.")
@click.option("--lora-rows", type=click.IntRange(min=1), default=DEFAULTS.lora_rows, show_default=True,
              help="Training rows per fold the LoRA learns from (~4-5 s a row with evidence windows on 2 CPU "
                   "cores); the encoder learns from every training row.")
@click.option("--dev-rows", type=click.IntRange(min=1), default=None,
              help="Dev rows per fold (every choice is made on them). Default: every dev row.")
@click.option("--slm-dev-rows", type=click.IntRange(min=1), default=DEFAULTS.slm_dev_rows, show_default=True,
              help="Of those, the dev rows per fold the SLMs score for their choices (normalisation, fusion weight, "
                   "best approach; ~3 s a row).")
@click.option("--prompt-choice-rows", type=click.IntRange(min=1), default=DEFAULTS.prompt_choice_rows,
              show_default=True, help="Dev rows per fold on which the zero-shot SLM compares the evidence window "
                                      "with the whole dialogue (~2 + ~4 s a row).")
@click.option("--slm-test-rows", type=click.IntRange(min=1), default=DEFAULTS.slm_test_rows, show_default=True,
              help="Test rows per fold the SLM approaches score (~2 s a row and model); retrieval scores every one.")
@click.option("--test-rows", type=click.IntRange(min=1), default=None, hidden=True,
              help="Keep only N real rows per fold's test categories (the tests' slice; the full run tests all).")
@click.option("--shortlist-k", type=click.IntRange(2, 50), default=DEFAULTS.shortlist_k, show_default=True)
@click.option("--window-tokens", type=click.IntRange(32, 4096), default=DEFAULTS.window_tokens, show_default=True,
              help="The evidence window's budget (tokens).")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS.epochs, show_default=True,
              help="LoRA epochs.")
@click.option("--encoder-epochs", type=click.FloatRange(min=0.01), default=DEFAULTS.encoder_epochs,
              show_default=True, help="Query encoder epochs (~5 min an epoch on ~800 rows).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop each LoRA training after N steps.")
@click.option("--retrieval-only", is_flag=True,
              help="Fine-tune the encoder and score both retrieval approaches on every test row; no SLM is trained "
                   "or scored (~35 min).")
@click.option("--quick", is_flag=True, help="Fewer rows per fold (" + ", ".join(f"{k} {v}" for k, v in QUICK.items())
              + "): ~20 min; never writes the docs.")
@click.option("--from-results", is_flag=True,
              help="Run nothing: write the report (and, with --docs, the tables) again from the workspace's "
                   "report/results.json, e.g. after a change of wording.")
@click.option("--rescore-test", is_flag=True,
              help="Redo only the test stage of the finished run in --workspace with its trained fold models and "
                   "recorded choices (nothing chosen anew), e.g. to write scores.jsonl for a run made before it "
                   "existed; then the report.")
@click.option("--rechoose-dev", is_flag=True,
              help="Make the SLMs' choices of the finished run in --workspace again on every dev row (the prompt "
                   "comparison, normalisation, fusion weight, best approach) with its trained fold models, then rank "
                   "the recorded test scores with them (no model runs on test rows); the run's own choices stay in "
                   "choices.json as 'earlier'. ~50 min on 2 CPU cores for ~450 dev rows.")
@click.option("--docs/--no-docs", default=True, show_default=True,
              help="Write the tables into docs/generated/experiment-real.md (GUIDE.md) and "
                   "experiment-real-summary.md (README.md).")
def main(workspace: str, folds: int, seed: int, lora_rows: int, dev_rows: int | None, slm_dev_rows: int,
         prompt_choice_rows: int,
         slm_test_rows: int, test_rows: int | None, shortlist_k: int, window_tokens: int, epochs: int,
         encoder_epochs: float, max_steps: int | None, retrieval_only: bool, quick: bool, from_results: bool,
         rescore_test: bool, rechoose_dev: bool, docs: bool) -> None:
    """Retrieval (zero-shot and fine-tuned encoder) vs the embedded SLM (zero-shot and LoRA, choice by likelihood,
    fusion) on real category folds."""
    apply_offline_env(hub_offline=True)
    if not (EMBEDDED_MODEL / "config.json").is_file():
        raise click.ClickException(f"{EMBEDDED_MODEL} is missing: run `make setup` first")
    space = Workspace.at(workspace)
    if space.is_real:
        raise click.ClickException("the experiment never runs in the real run's workspace; pick another --workspace")
    if from_results:
        recorded = space.report_dir / "results.json"
        if not recorded.is_file():
            raise click.ClickException(f"{display_path(recorded)}: no results to write a report from; run the "
                                       "experiment first")
        results = json.loads(recorded.read_text())
        results.setdefault("date", date.fromtimestamp(recorded.stat().st_mtime).isoformat())
        write_report(space, results, docs and not results.get("quick"))
        return
    try:
        rows = load_real_rows()
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    if rescore_test or rechoose_dev:
        if rescore_test and rechoose_dev:
            raise click.ClickException("--rescore-test and --rechoose-dev are two runs: give one")
        recorded = space.report_dir / "results.json"
        if not recorded.is_file():
            raise click.ClickException(f"{display_path(recorded)}: no finished run to redo; run the experiment first")
        previous = json.loads(recorded.read_text())
        if previous["test_rows"]:  # the run was a slice: the same rows again
            rows = subsample(rows, previous["test_rows"] * previous["settings"]["folds"] * 3,
                             seed=f"{previous['settings']['seed']}-slice")
        os.umask(0o077)
        started = time.perf_counter()
        redo = experiment.rescore_test if rescore_test else experiment.rechoose_on_every_dev_row
        try:
            results = redo(space, rows, load_predictor)
        except (FileNotFoundError, ValueError) as err:
            raise click.ClickException(str(err)) from err
        kept = ("minutes", "stage_seconds", "date", "quick", "test_rows", "rescored", "rechosen")
        results.update({key: previous[key] for key in kept if key in previous})
        results["rescored" if rescore_test else "rechosen"] = {
            "date": date.today().isoformat(), "minutes": round((time.perf_counter() - started) / 60, 1)}
        write_report(space, results, docs and not results["quick"] and not results["test_rows"])
        return
    settings = Settings(folds=folds, seed=seed, lora_rows=lora_rows, dev_rows=dev_rows, slm_dev_rows=slm_dev_rows,
                        prompt_choice_rows=prompt_choice_rows, slm_test_rows=slm_test_rows, shortlist_k=shortlist_k,
                        window_tokens=window_tokens, epochs=epochs, encoder_epochs=encoder_epochs, max_steps=max_steps,
                        retrieval_only=retrieval_only)
    quick_values = dict(QUICK) if quick else {}
    test_rows = quick_values.pop("test_rows", test_rows)
    if quick:
        settings, docs = replace(settings, **quick_values), False
    if test_rows:  # a slice: fewer rows in every split, drawn before the folds so categories stay whole
        rows = subsample(rows, test_rows * folds * 3, seed=f"{seed}-slice")
        docs = False
    shutil.rmtree(space.root, ignore_errors=True)
    os.umask(0o077)  # real dialogues: owner-only
    timings: dict[str, float] = {}

    def run_tool(stage: str, arguments: list[str], fold_space: Workspace) -> None:
        run(stage, [sys.executable, *arguments], timings, fold_space)

    started = time.perf_counter()
    results = run_experiment(space, rows, settings, run_tool, load_predictor, log=click.echo)
    results.update(minutes=round((time.perf_counter() - started) / 60, 1), stage_seconds=timings,
                   date=date.today().isoformat(), quick=quick, test_rows=test_rows)
    write_report(space, results, docs)


def load_predictor(adapter: Path | None) -> Any:
    """The embedded SLM (with a fold's adapter) on the CPU, for scoring candidates."""
    from icd10_coder.predictor import Predictor  # lazy on purpose: torch

    return Predictor(EMBEDDED_MODEL, adapter, constrain=False, device="cpu")  # the adapter merged, as served


def command_line(results: dict[str, Any]) -> str:
    """The command that reproduces a run: every setting that differs from the defaults, as its option."""
    if results.get("quick"):
        return "python tools/experiment_real.py --quick"
    options = {"folds": "--folds", "seed": "--seed", "lora_rows": "--lora-rows", "dev_rows": "--dev-rows",
               "slm_dev_rows": "--slm-dev-rows",
               "prompt_choice_rows": "--prompt-choice-rows", "slm_test_rows": "--slm-test-rows",
               "shortlist_k": "--shortlist-k", "window_tokens": "--window-tokens", "epochs": "--epochs",
               "encoder_epochs": "--encoder-epochs", "max_steps": "--max-steps"}
    defaults = asdict(DEFAULTS)
    if results["settings"].get("retrieval_only"):  # the SLM's settings play no part
        options = {k: v for k, v in options.items() if k in ("folds", "seed", "dev_rows", "shortlist_k",
                                                             "encoder_epochs")}
    changed = [f"{flag} {results['settings'][key]}" for key, flag in options.items()
               if results["settings"].get(key) != defaults[key]]
    if results["settings"].get("retrieval_only"):
        changed.append("--retrieval-only")
    if results.get("test_rows"):  # a slice of the rows (the tests')
        changed.append(f"--test-rows {results['test_rows']}")
    return " ".join(["python tools/experiment_real.py", *changed])


def header_text(results: dict[str, Any]) -> str:
    """What ran, from the results alone (so a report can be written again from ``results.json``)."""
    settings, sizes = results["settings"], results["fold_sizes"]
    dev = (f"~{_mean(sizes, 'dev')} dev rows" if settings["dev_rows"] is None
           else f"{settings['dev_rows']} of ~{_mean(sizes, 'dev')} dev rows")
    rows = sum(s["test"] for s in sizes)  # every row is tested in exactly one fold
    if settings.get("retrieval_only"):
        what = ("the encoder fine-tuned on every training row; every choice made on dev (`choices.json`); every "
                "test row ranked by both retrieval approaches, once; **no SLM trained or scored in this run** "
                "(`--retrieval-only`)")
    else:
        slm_dev = ("every dev row" if results.get("rechosen") or not settings.get("slm_dev_rows")
                   else f"{settings['slm_dev_rows']} dev rows")
        what = (f"the encoder fine-tuned on every training row, the LoRA on {settings['lora_rows']} of them per fold "
                f"(gold code on every training list); every choice made on dev (`choices.json`; the SLMs' on "
                f"{slm_dev} per fold); every test row "
                f"ranked by both retrieval approaches, {settings['slm_test_rows']} per fold scored by the SLM "
                "approaches, once")
    return (f"{rows} real MedSynth dialogues ({', '.join(p.name for p in REAL_FILES)}), {settings['folds']} "
            f"category folds (per fold ~{_mean(sizes, 'train', 'sibling')} training rows, {dev}, "
            f"~{_mean(sizes, 'test')} test rows); {what}. `{command_line(results)}`, {results.get('date', '?')}, "
            f"{results.get('minutes', float('nan')):.0f} min on 2 CPU cores" + (
                f"; test stage redone with the same fold models and choices (`--rescore-test`), "
                f"{results['rescored']['date']}, {results['rescored']['minutes']:.0f} min" if results.get("rescored")
                else "") + (
                f"; the SLMs' choices made again on every dev row with the same fold models and the test rows' "
                f"recorded scores ranked with them (`--rechoose-dev`), {results['rechosen']['date']}, "
                f"{results['rechosen']['minutes']:.0f} min" if results.get("rechosen") else "") + ".")


def write_report(space: Workspace, results: dict[str, Any], docs: bool) -> None:
    """``results.json`` and ``report.md`` in the run's report folder and, with ``docs``, the generated tables."""
    outcomes = space.report_dir / "outcomes.jsonl"
    if outcomes.is_file():  # which test rows the default retriever's form was chosen on (the retrieval study)
        tested = read_jsonl(outcomes)
        found = defaults_chosen_on(o["id"] for o in tested)
        if found:
            among = set(found["among_study_dev_rows"])
            found["among_slm_rows"] = sum(o["slm"] and o["id"] in among for o in tested)
        results["retriever_defaults"] = found
    header = header_text(results)
    text = f"{header}\n\n{verdict(results)}\n\n{markdown(results)}"
    (space.report_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (space.report_dir / "report.md").write_text("# Real-data experiment\n\n" + text)
    click.echo("\n" + text)
    if docs:
        write_generated("experiment-real-summary", readme_summary(header, results))
        click.echo(f"wrote {display_path(write_generated('experiment-real', text))} (GUIDE), "
                   "experiment-real-summary.md (README) and their blocks")
    click.secho(f"\nExperiment finished in {results.get('minutes', float('nan')):.0f} min. Report: "
                f"{display_path(space.report_dir)}/report.md", bold=True)


def _mean(sizes: list[dict[str, int]], *splits: str) -> int:
    return round(sum(sum(s[split] for split in splits) for s in sizes) / max(1, len(sizes)))


if __name__ == "__main__":
    main()
