"""The real-data experiment (``make experiment-real``): do the models beat the lookup on unseen codes?

    python tools/experiment_real.py                       # ~1 hour on 2 CPU cores
    python tools/experiment_real.py --max-steps 1 --limit 2 --no-generation --no-shortlist-lora  # the tests' slice

On the shared sample of real MedSynth dialogues (one per code), split **by code**: half of
the codes are held out whole (``test_unseen.jsonl``); of the other half, a quarter are the
validation split (also never trained on: they choose the fusion weight) and the rest train.
On the unseen codes, with the same task, parser and scorer as everything else:

1. Retrieval (no model): the retriever's top codes (code texts only: no training dialogue can
   hold an unseen code, so the nearest-neighbour part is off here, for the floor and the shortlist);
2. the embedded SLM zero-shot, generating, plain prompt and prompt with the top-10 shortlist;
3. the same model choosing by likelihood among the shortlist (task ``icd10_medsynth_choice``),
   and that choice fused with the retrieval score (weight chosen on validation, ``tools/fuse.py``);
4. the SLM LoRA-trained on shortlist prompts (``recipes/demo-cpu-shortlist.yml``): generating,
   choosing, fused;
5. the SLM LoRA-trained to choose (``recipes/demo-cpu-choose.yml``: gold always on the list,
   list shuffled): choosing, fused.

Training uses ``sequence_len`` 2048 for real dialogues and one sequence per micro-batch,
accumulating 2 (the recipe's effective batch at half the memory). Everything happens in its
own workspace (default ``outputs/experiment-real/``); the report (95% Wilson intervals, exact
McNemar tests against Retrieval, Holm-corrected) lands in its ``report/``. The dialogues are
read in place, never copied into the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import run  # noqa: E402  (the same stage runner as make demo)
from icd10_coder.paths import EMBEDDED_MODEL, MEDSYNTH_SAMPLE, display_path  # noqa: E402
from icd10_coder.workspace import Workspace  # noqa: E402

SHORTLIST_RECIPE = "recipes/demo-cpu-shortlist.yml"
CHOOSE_RECIPE = "recipes/demo-cpu-choose.yml"
BASELINE, FINETUNED = "recipes/eval/baseline-slm.yml", "recipes/eval/finetuned-slm.yml"
BASELINE_CHOICE, FINETUNED_CHOICE = "recipes/eval/baseline-slm-choice.yml", "recipes/eval/finetuned-slm-choice.yml"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--sample", type=click.Path(dir_okay=False, path_type=Path), default=MEDSYNTH_SAMPLE,
              show_default=True, help="Real MedSynth rows (JSONL with Dialogue and ICD10), read in place.")
@click.option("--workspace", default="outputs/experiment-real", show_default=True, metavar="DIR",
              help="The experiment's own workspace (replaced on every run).")
@click.option("--unseen-codes", "unseen", type=click.FloatRange(0.1, 0.9), default=0.5, show_default=True,
              help="Share of codes held out of training.")
@click.option("--val-fraction", type=click.FloatRange(0.05, 0.5), default=0.25, show_default=True,
              help="Share of the remaining codes held out for validation (the fusion weight).")
@click.option("--shortlist-k", type=click.IntRange(1, 50), default=10, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="LoRA epochs of each training (shortlist prompts; trained to choose).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop training after N steps (slices).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N unseen (and validation) rows.")
@click.option("--generation/--no-generation", default=True, show_default=True,
              help="Also score the generating approaches (zero-shot plain and shortlist, finetuned shortlist): "
                   "~19 of the ~56 minutes on 2 cores. --no-generation: Retrieval, choice and fusion only.")
@click.option("--shortlist-lora/--no-shortlist-lora", default=True, show_default=True,
              help="Train the LoRA on shortlist prompts and score it (~17 minutes). --no-shortlist-lora: the adapter "
                   "trained to choose is the only trained one.")
def main(sample: Path, workspace: str, unseen: float, val_fraction: float, shortlist_k: int, epochs: int,
         max_steps: int | None, limit: int | None, generation: bool, shortlist_lora: bool) -> None:
    """Retrieval vs the embedded SLM (zero-shot, shortlist, choice by likelihood, fusion, LoRA) on unseen real codes."""
    if not sample.is_file():
        raise click.ClickException(f"{sample}: the real MedSynth sample is missing")
    if not (EMBEDDED_MODEL / "config.json").is_file():
        raise click.ClickException(f"{EMBEDDED_MODEL} is missing: run `make setup` first")
    space = Workspace.at(workspace)
    if space.is_real:
        raise click.ClickException("the experiment never runs in the real run's workspace; pick another --workspace")
    shutil.rmtree(space.root, ignore_errors=True)
    os.umask(0o077)  # real dialogues: owner-only
    python, ws = sys.executable, ["--workspace", str(space.root)]
    split = ["--source", str(sample), "--unseen-codes", str(unseen), "--val-fraction", str(val_fraction),
             "--test-fraction", "0"]
    # No training dialogue holds an unseen code, so neighbours could only add wrong codes: the
    # floor and the shortlist are the code-text lookup alone (measured: make bench, GUIDE section 6).
    shortlist = ["--shortlist", str(shortlist_k), "--shortlist-neighbours", "0"]
    evaluate = [python, "tools/run_eval.py", *ws] + (["--limit", str(limit)] if limit else [])
    unseen_only = [*evaluate, "--unseen-only"]
    # Real dialogues need sequence_len 2048; one sequence per micro-batch (accumulating 2, the
    # recipe's effective batch) keeps the CPU run's memory to about half of micro-batch 2's ~12 GB.
    train = [f"--num_epochs={epochs}", "--sequence_len=2048", "--micro_batch_size=1",
             "--gradient_accumulation_steps=2"]
    if max_steps:  # a slice: a few steps, and no validation loss (~80 s per pass over the validation rows)
        train += [f"--max_steps={max_steps}", "--eval_strategy=no"]
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def choose_and_fuse(title: str, config: str, name: str, recipe: list[str]) -> None:
        """Choice by likelihood on validation (for the weight) and unseen codes, then the fusion."""
        named = ["--name", name] if name else []
        run(f"{title}: choice, validation split", [*evaluate, "--shortlist", "--split", "val", *recipe, *named, config],
            timings, space)
        run(f"{title}: choice, unseen codes", [*unseen_only, "--shortlist", *recipe, *named, config], timings, space)
        folder = (name or Path(config).stem) + "-shortlist"
        run(f"{title}: fused with retrieval", [python, "tools/fuse.py", *ws, folder], timings, space)

    run("prepare (plain prompts)", [python, "tools/prepare.py", *split, *ws], timings, space)
    run("prepare (shortlist prompts)", [python, "tools/prepare.py", *split, *shortlist, *ws], timings, space)
    run("prepare (rows that teach choosing)", [python, "tools/prepare.py", *split, *shortlist, "--choose", *ws],
        timings, space)
    run("retrieval (code texts only)", [*unseen_only, "recipes/eval/retrieval.yml", "--model-arg", "neighbours=0"],
        timings, space)
    if generation:
        run("baseline SLM, plain prompt", [*unseen_only, BASELINE], timings, space)
        run("baseline SLM, shortlist prompt", [*unseen_only, "--shortlist", BASELINE], timings, space)
    choose_and_fuse("baseline SLM", BASELINE_CHOICE, "", [])
    if shortlist_lora:
        run("LoRA on shortlist prompts of the training codes",
            [python, "tools/train.py", SHORTLIST_RECIPE, *ws, *train], timings, space)
        on_shortlist_adapter = ["--recipe", SHORTLIST_RECIPE]
        if generation:
            run("finetuned SLM, shortlist prompt", [*unseen_only, "--shortlist", *on_shortlist_adapter, FINETUNED],
                timings, space)
        choose_and_fuse("finetuned SLM", FINETUNED_CHOICE, "", on_shortlist_adapter)
    run("LoRA trained to choose", [python, "tools/train.py", CHOOSE_RECIPE, *ws, *train], timings, space)
    choose_and_fuse("SLM trained to choose", FINETUNED_CHOICE, "finetuned-slm-choose-choice",
                    ["--recipe", CHOOSE_RECIPE])
    run("report", [python, "tools/report.py", *ws], timings, space)
    timings["total"] = round(time.perf_counter() - started, 1)
    settings = {"sample": display_path(sample.resolve()), "unseen_codes": unseen, "val_fraction": val_fraction,
                "shortlist_k": shortlist_k, "epochs": epochs, "max_steps": max_steps, "limit": limit,
                "generation": generation, "shortlist_lora": shortlist_lora,
                "recipes": [SHORTLIST_RECIPE, CHOOSE_RECIPE], "recipe_overrides": train}
    (space.report_dir / "experiment.json").write_text(json.dumps({"settings": settings, "timings_s": timings},
                                                                 indent=2) + "\n")
    click.secho(f"\nExperiment finished in {timings['total'] / 60:.0f} min. Report: "
                f"{display_path(space.report_dir)}/report.md", bold=True)


if __name__ == "__main__":
    main()
