"""Train an axolotl recipe inside a workspace (``make train``).

    python tools/train.py recipes/qlora.yml                           # the real run: same as
    accelerate launch -m axolotl.cli.train recipes/qlora.yml          # ... this, plus the checks below
    python tools/train.py recipes/demo-cpu.yml --workspace outputs/try1

For the real run the recipe is used as written. For any other workspace the recipe is
copied to ``<workspace>/recipes/`` with its data, cache, adapter and MLflow paths pointing
into the workspace, and that copy is trained (the original stays untouched). Either way
the run gets: files created owner-only (umask 077), the Hugging Face datasets cache inside
the workspace (axolotl would otherwise copy every dialogue to ~/.cache), the MLflow
experiment created with its artifacts beside the store, and telemetry off.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from icd10_coder.offline import apply_offline_env, workspace_env
from icd10_coder.paths import REPO_ROOT, display_path, make_private
from icd10_coder.prompts import PROMPT_RECORD
from icd10_coder.serving import SCORING_RECORD
from icd10_coder.workspace import Workspace

BIN = Path(sys.executable).parent


def resolve_recipe(recipe: Path, workspace: Workspace) -> Path:
    """The recipe to train: as written for the real run, else a copy pointed into the workspace."""
    if not recipe.is_file():
        raise click.ClickException(f"{recipe}: no such recipe")
    config = yaml.safe_load(recipe.read_text()) or {}
    if workspace.is_real:
        return recipe
    target = workspace.recipes_dir / recipe.name
    target.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# {display_path(recipe.resolve())} with its paths in workspace {workspace.name}; "
              "written by tools/train.py, edit the original.\n")
    target.write_text(header + yaml.safe_dump(workspace.recipe_for(config), sort_keys=False))
    return target


def effective_batch(config: dict, processes: int | None) -> str:
    """Sequences per optimiser step, spelled out (processes x micro_batch_size x gradient_accumulation_steps)."""
    micro, accumulation = config.get("micro_batch_size", 1), config.get("gradient_accumulation_steps", 1)
    if processes is None:
        return f"(visible GPUs) x {micro} x {accumulation} = {micro * accumulation} per GPU"
    return f"{processes} x {micro} x {accumulation} = {processes * micro * accumulation} sequences per step"


def record_prompt_variant(config: dict) -> dict | None:
    """Write ``icd10_prompt.json`` into the adapter folder: which prompts it was trained on.

    tools/predict.py reads it to prompt the adapter the same way (with the retrieval shortlist
    or without, built by the same retriever settings) and refuses a mismatch.
    """
    datasets = config.get("datasets") or []
    if not datasets or not config.get("output_dir"):
        return None
    prepared = (REPO_ROOT / datasets[0]["path"]).parent
    card_file = prepared / "data_card.json"
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    shortlist = card.get("shortlist") or {}
    record = {"prompt_variant": "shortlist" if shortlist else "plain", "shortlist_k": shortlist.get("k"),
              # The retriever that built the training shortlists: predict and the app build the same ones.
              "retriever": shortlist.get("retriever"),
              # Evidence-window prompts (0: the whole dialogue), made by that retriever.
              "evidence_window": shortlist.get("evidence_window", 0),
              "prepared_data": display_path(prepared),
              "data_card_sha256": hashlib.sha256(card_file.read_bytes()).hexdigest() if card_file.is_file() else None}
    adapter = REPO_ROOT / config["output_dir"]
    if adapter.is_dir():
        (adapter / PROMPT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def check_prepared(recipe: Path) -> None:
    config = yaml.safe_load(recipe.read_text()) or {}
    for entry in (config.get("datasets") or []) + (config.get("test_datasets") or []):
        path = Path(entry.get("path", ""))
        if path.suffix == ".jsonl" and not (path if path.is_absolute() else REPO_ROOT / path).is_file():
            raise click.ClickException(f"{path}: prepared data missing; run `make prepare` (or tools/prepare.py "
                                       "--workspace ...) first")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
                                 "ignore_unknown_options": True})
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--workspace", default=None, metavar="DIR",
              help="Workspace to read prepared data from and write the adapter, cache and MLflow runs to. "
                   "Default: $ICD10_WORKSPACE, else the checkout (the real run).")
@click.option("--num-processes", type=click.IntRange(min=1), default=None,
              help="Processes (GPUs) for accelerate launch. Default: 1 for a single-GPU recipe (accelerate alone "
                   "would start one per visible GPU and multiply the batch); every visible GPU for a recipe with "
                   "a deepspeed key.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def main(recipe: Path, workspace: str | None, num_processes: int | None, overrides: tuple[str, ...]) -> None:
    """Train RECIPE with axolotl in a workspace; extra --key=value arguments go to axolotl (e.g. --max_steps=5)."""
    apply_offline_env()
    try:
        space = Workspace.at(workspace)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    trained = resolve_recipe(recipe, space)
    check_prepared(trained)
    from icd10_coder.tracking import use_experiment

    os.umask(0o077)  # checkpoints, caches and logs quote dialogues
    use_experiment(space)
    config = yaml.safe_load(trained.read_text()) or {}
    if num_processes is None and not config.get("deepspeed"):
        num_processes = 1
    command = [str(BIN / "accelerate"), "launch"]
    if num_processes is not None:
        command += ["--num_processes", str(num_processes)]
    if not os.environ.get("OMP_NUM_THREADS"):
        # accelerate otherwise sets OMP_NUM_THREADS=1 unless --cpu is passed: one core of two on a CPU machine
        # (measured here: one step of two real dialogues ~48 s at 1 thread).
        threads = max(1, len(os.sched_getaffinity(0)) // (num_processes or 1))
        command += ["--num_cpu_threads_per_process", str(threads)]
    scoring_record = REPO_ROOT / config["output_dir"] / SCORING_RECORD if config.get("output_dir") else None
    if scoring_record is not None and scoring_record.is_file():  # it scored the adapter this training replaces
        scoring_record.unlink()
        click.echo(f"[train] removed {display_path(scoring_record)}: it was fitted for the old adapter; run "
                   "tools/fuse.py again after evaluating the new one")
    click.echo(f"[train] effective batch: {effective_batch(config, num_processes)}")
    command += ["-m", "axolotl.cli.train", display_path(trained.resolve()), *overrides]
    click.echo(f"[train] workspace: {space.name}\n[train] accelerate {' '.join(command[1:])}")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=workspace_env(space), check=False)
    for key in ("output_dir", "dataset_prepared_path"):
        if config.get(key):
            make_private(REPO_ROOT / config[key])
    if result.returncode != 0:
        raise click.ClickException(f"axolotl training failed (exit {result.returncode}); see the output above")
    record_prompt_variant(config)
    click.echo(f"[train] done in {time.perf_counter() - started:.0f} s -> adapter {config.get('output_dir')}")


if __name__ == "__main__":
    main()
