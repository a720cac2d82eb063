"""The whole comparison, offline, on the embedded real MedSynth rows (``make demo``).

prepare --demo (100 real dialogues, split by category so every test code and its siblings are
never trained on) -> the retriever's query encoder fine-tuned on the training rows
(recipes/encoder-cpu.yml) -> prepare again with the top-10 shortlist of the fine-tuned retriever and
evidence windows (the sentences that name the diagnosis, ~384 tokens; the gold code on every training
list) -> a few steps of axolotl LoRA on the training rows (recipes/demo-cpu-shortlist.yml) -> lm-eval:
Retrieval (no model; zero-shot encoder), Retrieval (fine-tuned encoder), the Baseline and Finetuned SLM
choosing by likelihood among the shortlist, on the dev (validation) split, then
on the test split -> tools/fuse.py: the fusion weight and the calibration temperature chosen on
dev, applied once to test -> the Baseline LLM through a real OpenAI-compatible server on
127.0.0.1 (``transformers serve`` with the embedded model standing in for the large model) ->
report. The approach best on dev becomes what ``make app`` and ``tools/predict.py`` serve
(``<workspace>/serving.json``). Each stage is the same command a user would type; this script
only chains them, serves the local endpoint and records how long each stage took.

Everything happens in the demo's own workspace (default ``outputs/demo/``): the real
run's ``data/prepared*/``, ``outputs/adapters/``, ``outputs/eval/``, ``outputs/report/``
and ``outputs/mlflow.db`` are never read or written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click

from icd10_coder import serving
from icd10_coder.local_server import ServerError, free_port, local_server
from icd10_coder.offline import workspace_env
from icd10_coder.paths import EMBEDDED_MODEL, REPO_ROOT, display_path
from icd10_coder.stages import run
from icd10_coder.workspace import DEMO_WORKSPACE, Workspace

RECIPE = "recipes/demo-cpu-shortlist.yml"
ENCODER_RECIPE = "recipes/encoder-cpu.yml"
SHORTLIST_K = 10
WINDOW_TOKENS = 384
# The demo's split of its 100 real rows: whole categories, ~20% dev and ~30% test.
SPLIT_ARGS = ["--demo", "--group-by", "category", "--val-fraction", "0.2", "--test-fraction", "0.3"]
PREPARE_ARGS = [*SPLIT_ARGS, "--shortlist", str(SHORTLIST_K), "--shortlist-neighbours", "0",
                "--evidence-window", str(WINDOW_TOKENS)]
# The encoder reads the plain split (same seed, same rows) before any shortlist exists.
ENCODER_ARGS = ["--set", "train_data=data/prepared/train.jsonl", "--set", "dev_data=data/prepared/val.jsonl"]
# LoRA steps of 2 real dialogues (~8-10 s each with evidence windows on 2 cores): 32 of the ~53 training
# rows, what fits the demo's budget of 12 minutes on 2 cores.
TRAIN_STEPS = 16
CHOICE_CONFIGS = ["recipes/eval/baseline-slm-choice.yml", "recipes/eval/finetuned-slm-choice.yml"]
FUSED = ["baseline-slm-choice-shortlist", "finetuned-slm-choice-shortlist"]
TOOLS = REPO_ROOT / "tools"
BIN = Path(sys.executable).parent


@contextmanager
def local_openai_server(model: Path, workspace: Workspace, timeout_s: float = 180):
    """``transformers serve`` on 127.0.0.1; yields the chat-completions URL, stops the server after."""
    port = free_port()
    command = [str(BIN / "transformers"), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               "--dtype", "float32", display_path(model)]  # pinned: requests must name it the same way
    try:
        with local_server(command, f"http://127.0.0.1:{port}/health", workspace.outputs / "llm-server.log",
                          workspace_env(workspace, hub_offline=True), timeout_s):
            yield f"http://127.0.0.1:{port}/v1/chat/completions"
    except ServerError as err:
        raise click.ClickException(f"the local model server: {err}") from err


def choose_served(space: Workspace) -> dict:
    """The fused approach best on dev becomes the workspace's served default (``serving.json``)."""
    records = [serving.read_record(space.eval_dir / f"{name}{serving.FUSED_SUFFIX}") for name in FUSED]
    records = [r for r in records if r is not None]
    best = serving.best_on_dev(records)
    serving.write_serving(space.serving_file, best, records)
    return best


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workspace", default=str(DEMO_WORKSPACE.relative_to(REPO_ROOT)), show_default=True, metavar="DIR",
              help="The demo's own workspace; its earlier demo results are replaced. Never the checkout itself.")
@click.option("--skip-llm", is_flag=True, help="Leave out the Baseline LLM (it is then reported as missing).")
@click.option("--docs", is_flag=True,
              help="Also write this run's rows and stage times to docs/generated/demo-run.md (README and GUIDE show "
                   "it; run it on an otherwise idle machine).")
def main(workspace: str, skip_llm: bool, docs: bool) -> None:
    """Run the offline demo end to end in its own workspace and write its report."""
    if not (EMBEDDED_MODEL / "config.json").is_file():
        raise click.ClickException(f"{EMBEDDED_MODEL} is missing: run `make setup` first")
    try:
        space = Workspace.at(workspace)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    if space.is_real:
        raise click.ClickException("the demo never runs in the real run's workspace (the checkout); "
                                   "pick another --workspace")
    os.umask(0o077)  # everything the demo writes quotes (synthetic) dialogues: owner-only
    timings: dict[str, float] = {}
    python = sys.executable
    ws = ["--workspace", str(space.root)]
    # Earlier demo results would mix into this report; axolotl's token cache would hide
    # freshly prepared data. Only the demo's own workspace is touched.
    for stale in (space.eval_dir, space.validation_dir, space.report_dir, space.axolotl_cache, space.adapters_dir,
                  space.map("outputs/encoders")):
        shutil.rmtree(stale, ignore_errors=True)
    space.serving_file.unlink(missing_ok=True)  # it names the adapter just removed
    started = time.perf_counter()
    run("prepare (embedded real rows)", [python, "tools/prepare.py", *SPLIT_ARGS, *ws], timings, space)
    run("fine-tune the query encoder", [python, "tools/train_encoder.py", ENCODER_RECIPE, *ws, *ENCODER_ARGS],
        timings, space)
    encoder = space.map("outputs/encoders/minilm-query")
    run("prepare (shortlist of the fine-tuned retriever, evidence windows)",
        [python, "tools/prepare.py", *PREPARE_ARGS, "--shortlist-encoder", str(encoder), *ws], timings, space)
    run(f"train ({TRAIN_STEPS} LoRA steps)", [python, "tools/train.py", RECIPE, *ws, f"--max_steps={TRAIN_STEPS}"],
        timings, space)
    # Retrieval ranks as the shortlist's data card says (the fine-tuned encoder); the zero-shot lookup asks for the
    # base encoder explicitly.
    run("eval retrieval", [python, "tools/run_eval.py", *ws, "--shortlist", "--model-arg", "neighbours=0",
                           "--model-arg", "encoder=", "recipes/eval/retrieval.yml"], timings, space)
    run("eval retrieval (fine-tuned encoder)",
        [python, "tools/run_eval.py", *ws, "--shortlist", "--model-arg", "neighbours=0", "--model-arg",
         f"encoder={display_path(encoder)}", "--name", "retrieval-encoder", "recipes/eval/retrieval.yml"],
        timings, space)
    choice = [python, "tools/run_eval.py", *ws, "--shortlist", "--recipe", RECIPE]
    run("eval on dev: baseline + finetuned choice", [*choice, "--split", "val", *CHOICE_CONFIGS], timings, space)
    run("eval on test: baseline + finetuned choice", [*choice, *CHOICE_CONFIGS], timings, space)
    for name in FUSED:
        run(f"fuse {name}", [python, "tools/fuse.py", name, *ws], timings, space)
    served = choose_served(space)
    if not skip_llm:
        llm_started = time.perf_counter()
        with local_openai_server(EMBEDDED_MODEL, space) as url:
            timings["llm server start"] = round(time.perf_counter() - llm_started, 1)
            llm = ["recipes/eval/baseline-llm.yml", "--model-arg", f"base_url={url}", "--model-arg",
                   f"model={display_path(EMBEDDED_MODEL)}", "--model-arg", "num_concurrent=1"]
            run("eval baseline-llm with shortlist (local OpenAI-compatible server)",
                [python, "tools/run_eval.py", *ws, "--shortlist", *llm], timings, space)
    run("report", [python, "tools/report.py", *ws], timings, space)
    timings["total"] = round(time.perf_counter() - started, 1)
    (space.report_dir / "demo_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    click.secho("\nDemo finished. Stage times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()), bold=True)
    click.echo(f"Served by `make app` / tools/predict.py: {served['approach']} (dev exact match "
               f"{served['chosen_on']['exact_match']:.3f}; {display_path(space.serving_file)})")
    click.echo(f"Report: {display_path(space.report_dir)}/report.md; MLflow: mlflow ui --backend-store-uri "
               f"{space.recipe_tracking_uri()}")
    if docs:
        from icd10_coder.generated import write_generated

        card = json.loads((space.prepared_shortlist / "data_card.json").read_text())
        click.echo(f"wrote {display_path(write_generated('demo-run', run_summary(card, timings)))}")


def run_summary(card: dict, timings: dict[str, float]) -> str:
    """What README and GUIDE say of the demo's size and time: this run's data card and stage times."""
    import platform

    splits = ", ".join(f"{name} {count}" for name, count in card["splits"].items())
    minutes, seconds = divmod(round(timings["total"]), 60)
    stages = "; ".join(f"{name} {value:.0f} s" for name, value in timings.items() if name != "total")
    return (f"`make demo` (`python tools/demo.py --docs`), {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores "
            f"({platform.machine()}), after `make setup`: **{minutes} min {seconds} s** for {card['rows_kept']} "
            f"embedded real dialogues (rows per split: {splits}). Stage times: {stages}.\n")


if __name__ == "__main__":
    main()
