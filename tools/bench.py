"""Benchmarks of what users pay for (``make bench``) -> outputs/bench/bench.json + bench.md.

1. prepare: rows/s and peak memory on 10,000 synthetic rows of MedSynth's length distribution;
2. token efficiency: non-padding share of random, length-grouped and packed batches on real
   token lengths (the MedSynth sample when present, and the prepared data);
3. training: tokens/s and peak memory of N steps of the CPU recipe, LoRA vs QLoRA, same run;
4. evaluation: samples/s of icd10_medsynth with the hf backend, batch size 1 vs 8; scoring cost;
5. predict: valid-code rate and dialogues/s with and without constrained decoding;
6. retrieval: recall@1/5/10/20/50 (code and category) of each part of the shortlist retriever
   on the real MedSynth sample, and index fit + shortlist time for 10,000 dialogues;
7. approach_cost: CPU seconds per real dialogue of each approach (Retrieval, generation with and
   without the shortlist, choice by likelihood with lm-eval's hf model and with the project's
   one-prompt-pass model, fusion), the model loaded once, medians of repeats;
8. prompt_cost: whole dialogue vs evidence window (the SLM's prompt before and after): tokens per
   prompt, seconds per row of a LoRA step and of scoring ten candidates, medians of repeats;
9. app: the workbench's confidence calibration (ECE, accuracy per band) on the demo test split and
   real dialogues (not for the serving model: it trained on them; make calibrate measures it out of fold),
   seconds per suggestion by the predictor and **on the page** (tools/app.py on 127.0.0.1, each dialogue
   sent to the Suggest button's handler as the browser sends it), how often the gold code gets an evidence
   sentence, code-search latency.

A script, not a test: figures depend on the machine, and every figure says which machine. The stages
live in ``icd10_coder.benchmarks``; this file is the command line.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from icd10_coder.benchmarks import (
    STAGES,
    app_markdown,
    bench_app,
    bench_approach_cost,
    bench_eval,
    bench_predict,
    bench_prepare,
    bench_prompt_cost,
    bench_retrieval,
    bench_tokens,
    bench_training,
    hardware,
    markdown,
    page_summary,
    prompt_cost_markdown,
    retrieval_markdown,
)
from icd10_coder.offline import apply_offline_env


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--rows", type=int, default=10_000, show_default=True, help="Synthetic rows for the prepare benchmark.")
@click.option("--train-steps", type=int, default=6, show_default=True, help="Optimiser steps per training run.")
@click.option("--eval-limit", type=int, default=8, show_default=True, help="Test dialogues per evaluation run.")
@click.option("--cost-dialogues", type=int, default=3, show_default=True,
              help="Real dialogues per approach in the approach_cost stage.")
@click.option("--app-dialogues", type=int, default=20, show_default=True,
              help="Shared real dialogues outside the demo data for the app stage's calibration (the demo's own test "
                   "dialogues are used too).")
@click.option("--page-dialogues", type=click.IntRange(min=1), default=10, show_default=True,
              help="Of the real app dialogues, those timed on the page (the app started on 127.0.0.1).")
@click.option("--prompt-dialogues", type=int, default=8, show_default=True,
              help="Embedded real dialogues in the prompt_cost stage (whole dialogue vs evidence window).")
@click.option("--app-adapter", default=None, metavar="DIR|none",
              help="Adapter whose served scoring the app stage measures. Default: what make app serves (the "
                   "serving model, else make demo's).")
@click.option("--app-base-model", default=None, help="Its base model. Default: the served record's.")
@click.option("--only", multiple=True, type=click.Choice(STAGES), help="Run only these stages (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("outputs/bench"),
              show_default=True)
@click.option("--docs", is_flag=True,
              help="Also write the retrieval, prompt_cost and app stages to docs/generated/bench-<stage>.md "
                   "(GUIDE section 9).")
def main(rows: int, train_steps: int, eval_limit: int, cost_dialogues: int, prompt_dialogues: int, app_dialogues: int,
         page_dialogues: int, app_adapter: str | None, app_base_model: str | None, only: tuple[str, ...], out: Path,
         docs: bool) -> None:
    """Measure prepare, token efficiency, training, evaluation and predict; write bench.json."""
    apply_offline_env(hub_offline=True)
    stages = only or STAGES
    previous = out / "bench.json"
    # --only refreshes some stages and keeps the others' last figures.
    bench: dict[str, Any] = json.loads(previous.read_text()) if only and previous.is_file() else {}
    bench |= {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "hardware": hardware()}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        runners = {"prepare": lambda: bench_prepare(rows, work), "tokens": lambda: bench_tokens(work, 4),
                   "training": lambda: bench_training(work, train_steps),
                   "evaluation": lambda: bench_eval(work, eval_limit), "predict": lambda: bench_predict(work),
                   "retrieval": lambda: bench_retrieval(rows),
                   "approach_cost": lambda: bench_approach_cost(work, cost_dialogues),
                   "prompt_cost": lambda: bench_prompt_cost(prompt_dialogues),
                   "app": lambda: bench_app(work, app_dialogues, app_adapter, app_base_model, page_dialogues)}
        for stage in STAGES:
            if stage not in stages:
                continue
            click.echo(f"[bench] {stage} ...", err=True)
            started = time.perf_counter()
            bench[stage] = runners[stage]()
            click.echo(f"[bench] {stage} done in {time.perf_counter() - started:.0f} s", err=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(bench))
    click.echo(markdown(bench))
    if docs:
        from icd10_coder.generated import write_generated

        machine = bench["hardware"]
        for stage, render in (("retrieval", retrieval_markdown), ("prompt_cost", prompt_cost_markdown),
                              ("app", app_markdown)):
            if stage in stages:
                text = (f"`python tools/bench.py --only {stage} --docs`, {bench['generated_at'][:10]}; "
                        f"{machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB.\n")
                write_generated(f"bench-{stage}", text + "\n".join(render(bench[stage])) + "\n")
        if "app" in stages and bench["app"].get("page"):
            stamp = f"`python tools/bench.py --only app --docs`, {bench['generated_at'][:10]}, {machine['cores']} cores"
            write_generated("bench-app-summary", page_summary(bench["app"], stamp))


if __name__ == "__main__":
    main()
