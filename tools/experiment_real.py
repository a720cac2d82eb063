"""The real-data experiment (``make experiment-real``): do the models beat the lookup on unseen codes?

    python tools/experiment_real.py                       # ~1 hour on 2 CPU cores
    python tools/experiment_real.py --epochs 1 --limit 10 # a cheap slice (what the tests run)

On the shared sample of real MedSynth dialogues (one per code), split **by code**: half of
the codes train, the other half are held out whole (``test_unseen.jsonl``). On those unseen
codes, with the same task, parser and scorer as everything else:

1. Retrieval (no model): the retriever's top codes (code texts only: no training dialogue can
   hold an unseen code, so the nearest-neighbour part is off here, for the floor and the shortlist);
2. the embedded SLM zero-shot, plain prompt;
3. the embedded SLM zero-shot, prompt with the top-10 retrieval shortlist;
4. the embedded SLM LoRA-trained on shortlist prompts of the training codes
   (``recipes/demo-cpu-shortlist.yml`` with ``sequence_len`` 2048 for real dialogues and one
   sequence per micro-batch, accumulating 2: the recipe's effective batch at half the memory).

Everything happens in its own workspace (default ``outputs/experiment-real/``); the report
(95% Wilson intervals, exact McNemar tests against Retrieval, Holm-corrected) lands in its
``report/``. The dialogues are read in place, never copied into the checkout.
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

RECIPE = "recipes/demo-cpu-shortlist.yml"
SLM_CONFIGS = ("recipes/eval/baseline-slm.yml", "recipes/eval/finetuned-slm.yml")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--sample", type=click.Path(dir_okay=False, path_type=Path), default=MEDSYNTH_SAMPLE,
              show_default=True, help="Real MedSynth rows (JSONL with Dialogue and ICD10), read in place.")
@click.option("--workspace", default="outputs/experiment-real", show_default=True, metavar="DIR",
              help="The experiment's own workspace (replaced on every run).")
@click.option("--unseen-codes", "unseen", type=click.FloatRange(0.1, 0.9), default=0.5, show_default=True,
              help="Share of codes held out of training.")
@click.option("--shortlist-k", type=click.IntRange(1, 50), default=10, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True,
              help="LoRA epochs over the training codes' shortlist prompts.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop training after N steps (slices).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N unseen rows.")
def main(sample: Path, workspace: str, unseen: float, shortlist_k: int, epochs: int, max_steps: int | None,
         limit: int | None) -> None:
    """Retrieval vs the embedded SLM (zero-shot, with shortlist, LoRA on shortlist prompts) on unseen real codes."""
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
    split = ["--source", str(sample), "--unseen-codes", str(unseen), "--val-fraction", "0.1", "--test-fraction", "0"]
    evaluate = [python, "tools/run_eval.py", *ws, "--unseen-only"] + (["--limit", str(limit)] if limit else [])
    # Real dialogues need sequence_len 2048; one sequence per micro-batch (accumulating 2, the
    # recipe's effective batch) keeps the CPU run's memory to about half of micro-batch 2's ~12 GB.
    train = [f"--num_epochs={epochs}", "--sequence_len=2048", "--micro_batch_size=1",
             "--gradient_accumulation_steps=2"] + ([f"--max_steps={max_steps}"] if max_steps else [])
    timings: dict[str, float] = {}
    started = time.perf_counter()
    run("prepare (plain prompts)", [python, "tools/prepare.py", *split, *ws], timings, space)
    # No training dialogue holds an unseen code, so neighbours could only add wrong codes: the
    # floor and the shortlist are the code-text lookup alone (measured: make bench, GUIDE section 6).
    run("prepare (shortlist prompts)", [python, "tools/prepare.py", *split, "--shortlist", str(shortlist_k),
                                        "--shortlist-neighbours", "0", *ws], timings, space)
    run("retrieval (code texts only)", [*evaluate, "recipes/eval/retrieval.yml", "--model-arg", "neighbours=0"],
        timings, space)
    run("baseline SLM, plain prompt", [*evaluate, SLM_CONFIGS[0]], timings, space)
    run("baseline SLM, shortlist prompt", [*evaluate, "--shortlist", SLM_CONFIGS[0]], timings, space)
    run("LoRA on shortlist prompts of the training codes", [python, "tools/train.py", RECIPE, *ws, *train],
        timings, space)
    run("finetuned SLM, shortlist prompt", [*evaluate, "--shortlist", "--recipe", RECIPE, SLM_CONFIGS[1]],
        timings, space)
    run("report", [python, "tools/report.py", *ws], timings, space)
    timings["total"] = round(time.perf_counter() - started, 1)
    settings = {"sample": display_path(sample.resolve()), "unseen_codes": unseen, "shortlist_k": shortlist_k,
                "epochs": epochs, "max_steps": max_steps, "limit": limit, "recipe": RECIPE,
                "recipe_overrides": train}
    (space.report_dir / "experiment.json").write_text(json.dumps({"settings": settings, "timings_s": timings},
                                                                 indent=2) + "\n")
    click.secho(f"\nExperiment finished in {timings['total'] / 60:.0f} min. Report: "
                f"{display_path(space.report_dir)}/report.md", bold=True)


if __name__ == "__main__":
    main()
