"""Run lm-eval on one or more approach configs (``recipes/eval/*.yml``), with privacy checks.

    python tools/run_eval.py recipes/eval/baseline-slm.yml recipes/eval/finetuned-slm.yml
    python tools/run_eval.py recipes/eval/baseline-llm.yml --model-arg base_url=http://10.0.0.5:8000/v1/chat/completions
    python tools/run_eval.py --workspace outputs/demo recipes/eval/finetuned-slm.yml

Each config is an ``lm_eval run --config`` file; this wrapper only checks it (API endpoints
must be loopback/private, no API key in the file, adapters exist), applies overrides,
points its data, adapter and output paths into the workspace, runs the real ``lm_eval``
CLI with telemetry off, and makes the written files private. When the prepared data has
``test_unseen.jsonl`` (``prepare --unseen-codes``), that split is scored too, as task
``icd10_medsynth_unseen``. An API endpoint where no server answers is recorded as
``missing.json`` with the reason (the report shows it) and the other configs still run.

Choice configs (``recipes/eval/*-choice.yml``, task ``icd10_medsynth_choice``) need
``--shortlist``; ``--split val`` scores them on the validation split into ``eval-val/``, where
``tools/fuse.py`` chooses the fusion weight before applying it to the test results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml

from icd10_coder import approach
from icd10_coder.datacard import card_retriever
from icd10_coder.endpoints import API_MODELS, EndpointError, check_endpoint, unreachable_reason
from icd10_coder.offline import workspace_env
from icd10_coder.paths import REPO_ROOT, display_path, make_private
from icd10_coder.workspace import Workspace

TASK = "icd10_medsynth"
UNSEEN_TASK = "icd10_medsynth_unseen"
# Choice by likelihood (icd10_coder/choice.py): scores the shortlist's answer lines, so it needs
# shortlist data; its validation-split variant feeds tools/fuse.py.
CHOICE_TASK = "icd10_medsynth_choice"
UNSEEN_TASKS = {TASK: UNSEEN_TASK, CHOICE_TASK: "icd10_medsynth_choice_unseen"}
VAL_TASKS = {CHOICE_TASK: "icd10_medsynth_choice_val"}
UNSEEN_FILE = "test_unseen.jsonl"
SECRET_KEYS = {"api_key", "auth_token", "token"}
# Where each local backend takes the LoRA adapter.
ADAPTER_KEY = {"hf": "peft", "icd10-hf-choice": "peft", "vllm": "lora_local_path"}
# lm-eval's hf model, and the project's subclass of it for the choice task (one prompt pass per dialogue).
HF_ENGINES = ("hf", "icd10-hf-choice")
# Sequences per forward pass for the hf backend with a GPU recipe (the configs say 1, for CPU).
GPU_HF_BATCH_SIZE = 16
# vLLM pins its own torch and transformers, which axolotl's cannot share: it lives in its own
# environment (`make vllm-env`), and configs with `model: vllm` run lm-eval from there.
VLLM_PYTHON = Path(os.environ.get("ICD10_VLLM_PYTHON") or REPO_ROOT / ".venv-vllm" / "bin" / "python")
RETRIEVAL_MODEL = approach.RETRIEVAL_MODEL
SHORTLIST_SUFFIX = "-shortlist"
RUN_CONFIG_NAME = "run_config.yml"
MISSING_NAME = "missing.json"


def _parse_value(text: str) -> Any:
    """``8`` -> 8, ``true`` -> True, anything else stays a string (YAML scalar rules)."""
    return yaml.safe_load(text) if text else text


def read_recipe(recipe: Path) -> dict[str, Any]:
    if not recipe.is_file():
        raise click.ClickException(f"{recipe}: no such recipe")
    return yaml.safe_load(recipe.read_text()) or {}


def is_gpu_recipe(cfg: dict[str, Any]) -> bool:
    """A recipe with GPU-only precision or attention (the CPU recipe has neither)."""
    return cfg.get("bf16") in (True, "auto") or cfg.get("fp16") is True or \
        cfg.get("attn_implementation") == "flash_attention_2"


def recipe_model_args(recipe: Path, workspace: Workspace | None = None, engine: str = "hf") -> dict[str, Any]:
    """The model a training recipe produced, as ``engine``'s model_args: base model, adapter folder (in
    the workspace), precision; for vLLM also the LoRA rank it must accept."""
    cfg = read_recipe(recipe)
    adapter = (workspace or Workspace.real()).map_display(cfg["output_dir"])
    if engine == "vllm":
        return {"pretrained": cfg["base_model"], "lora_local_path": adapter, "max_lora_rank": int(cfg["lora_r"]),
                "dtype": "float16" if cfg.get("fp16") is True else "auto"}
    dtype = "bfloat16" if cfg.get("bf16") in (True, "auto") else "float16" if cfg.get("fp16") is True else "float32"
    return {"pretrained": cfg["base_model"], "peft": adapter, "dtype": dtype}


def load_config(path: Path, overrides: tuple[str, ...], limit: float | None, data_dir: Path | None,
                allow_remote: bool, recipe: Path | None = None, workspace: Workspace | None = None,
                batch_size: str | None = None, shortlist: bool = False, unseen_only: bool = False,
                split: str = "test", name: str | None = None) -> dict[str, Any]:
    """Read, override and check one run config; raise ClickException on anything unsafe.

    An API endpoint where nothing listens is not an error: the config comes back with
    ``_missing`` set to the reason, and :func:`main` records it instead of running it.
    """
    workspace = workspace or Workspace.real()
    if not path.is_file():
        raise click.ClickException(f"{path}: no such run config")
    config = yaml.safe_load(path.read_text()) or {}
    task = checked_task(path, config, shortlist, split, data_dir)
    engine = config.get("model", "hf")
    model_args = resolved_model_args(path, config, workspace, recipe, batch_size, overrides)
    check_privacy(path, config, model_args, allow_remote)
    if limit is not None:
        config["limit"] = limit
    data = (data_dir or (workspace.prepared_shortlist if shortlist else workspace.prepared)).resolve()
    # Paths go to lm-eval relative to the checkout (it runs there): no result file or folder name then
    # carries this machine's location (a workspace outside the checkout stays absolute).
    config["metadata"] = {**(config.get("metadata") or {}), "data_dir": display_path(data)}
    config["tasks"] = tasks_to_run(config["tasks"], task, data, split, unseen_only)
    if engine == RETRIEVAL_MODEL:  # its neighbour index: the training split of the evaluated data
        model_args["train"] = display_path(data / "train.jsonl")
        model_args["cache_dir"] = display_path(workspace.retrieval_cache)
        card = data / "data_card.json"
        recorded = card_retriever(card) if card.is_file() else None
        if recorded:  # rank as the shortlist did; --model-arg neighbours/encoder still change it, visibly
            model_args["retriever_card"] = display_path(card)
            model_args.setdefault("encoder", recorded.get("encoder", ""))
    config["output_path"] = output_path(path, config, workspace, engine, shortlist, split, name)
    # Absolute paths among the model's arguments (a workspace inside the checkout, the embedded model) go to
    # lm-eval relative too: it names result folders after the model.
    config["model_args"] = {key: display_path(value) if isinstance(value, str) and value.startswith("/") else value
                            for key, value in model_args.items()}
    if config.get("include_path") in (None, "tasks"):
        config["include_path"] = "tasks"  # the checkout's; lm-eval runs from the repository root
    return config


def checked_task(path: Path, config: dict[str, Any], shortlist: bool, split: str, data_dir: Path | None) -> str:
    """The config's project task, after checking it fits the data and split asked for."""
    task = next((t for t in config.get("tasks") or [] if t in UNSEEN_TASKS), None)
    if task is None:
        raise click.ClickException(f"{path}: expected tasks: [{TASK}] or [{CHOICE_TASK}]")
    if task == CHOICE_TASK and not shortlist and data_dir is None:
        raise click.ClickException(f"{path}: the choice task scores the shortlist's candidates: add --shortlist "
                                   "(data prepared with --shortlist K)")
    if split == "val" and task not in VAL_TASKS:
        raise click.ClickException(f"{path}: --split val is for the choice task (the fusion weight); "
                                   "the test split is what generation approaches are compared on")
    return task


def resolved_model_args(path: Path, config: dict[str, Any], workspace: Workspace, recipe: Path | None,
                        batch_size: str | None, overrides: tuple[str, ...]) -> dict[str, Any]:
    """model_args with the adapter mapped into the workspace, the recipe's model and --model-arg applied; sets
    the batch size a GPU recipe wants. The adapter must exist."""
    model_args = dict(config.get("model_args") or {})
    engine = config.get("model", "hf")
    adapter_key = ADAPTER_KEY.get(engine)
    if adapter_key and model_args.get(adapter_key):
        model_args[adapter_key] = workspace.map_display(model_args[adapter_key])
    if recipe is not None and adapter_key:
        from_recipe = recipe_model_args(recipe, workspace, engine)
        if adapter_key not in model_args:  # a baseline config: the recipe's base model, no adapter
            from_recipe = {k: v for k, v in from_recipe.items() if k not in (adapter_key, "max_lora_rank")}
        model_args.update(from_recipe)
        if engine in HF_ENGINES and is_gpu_recipe(read_recipe(recipe)) and batch_size is None:
            config["batch_size"] = GPU_HF_BATCH_SIZE
    if batch_size is not None:
        config["batch_size"] = _parse_value(batch_size)
    if engine == "vllm" and not VLLM_PYTHON.is_file():
        raise click.ClickException(f"{path}: the vllm backend runs in its own environment, {display_path(VLLM_PYTHON)} "
                                   "is missing: on a CUDA machine run `make vllm-env` (or use the hf configs)")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.ClickException(f"--model-arg {item!r}: expected KEY=VALUE")
        model_args[key.strip()] = _parse_value(value)
    adapter = model_args.get(adapter_key) if adapter_key else None
    if adapter and not (REPO_ROOT / adapter / "adapter_config.json").is_file():
        raise click.ClickException(f"{path}: adapter {adapter} not found (adapter_config.json missing); "
                                   "train first: make train")
    return model_args


def check_privacy(path: Path, config: dict[str, Any], model_args: dict[str, Any], allow_remote: bool) -> None:
    """No secret in a config that is written beside the results; an API endpoint only on a private network. An
    endpoint where nothing listens marks the config ``_missing`` (recorded, not run)."""
    secrets = SECRET_KEYS & set(model_args)
    if secrets:
        raise click.ClickException(
            f"{path}: {', '.join(sorted(secrets))} in model_args would be written to the results; "
            "export OPENAI_API_KEY instead")
    engine = config.get("model", "hf")
    if engine in API_MODELS:
        try:
            click.echo(check_endpoint(model_args.get("base_url"), allow_remote=allow_remote))
        except EndpointError as err:
            raise click.ClickException(f"{path}: {err}") from err
        if API_MODELS[engine]:
            reason = unreachable_reason(model_args["base_url"])
            if reason:
                config["_missing"] = f"endpoint {model_args['base_url']} not reachable: {reason}"


def tasks_to_run(tasks: list[str], task: str, data: Path, split: str, unseen_only: bool) -> list[str]:
    """The validation variant for --split val; the unseen-codes variant when the data has that split."""
    if split == "val":
        return [VAL_TASKS[task]]
    if unseen_only:
        if not (data / UNSEEN_FILE).is_file():
            raise click.ClickException(f"--unseen-only: {display_path(data / UNSEEN_FILE)} does not exist "
                                       "(prepare with --unseen-codes)")
        return [UNSEEN_TASKS[task]]
    if (data / UNSEEN_FILE).is_file() and UNSEEN_TASKS[task] not in tasks:
        return [*tasks, UNSEEN_TASKS[task]]
    return tasks


def output_path(path: Path, config: dict[str, Any], workspace: Workspace, engine: str, shortlist: bool,
                split: str, name: str | None) -> str:
    """Where the results go (relative to the checkout): eval/<approach>[-shortlist], eval-val/ for --split val."""
    output = workspace.map(config.get("output_path") or f"outputs/eval/{path.stem}")
    if name:
        output = workspace.eval_dir / name
    if split == "val":  # apart from the test results, which the report reads
        output = workspace.validation_dir / output.name
    suffix = SHORTLIST_SUFFIX if shortlist and engine != RETRIEVAL_MODEL else ""
    return display_path(output) + suffix


def record_missing(path: Path, config: dict[str, Any]) -> None:
    """Leave ``missing.json`` where the results would be: the report names the approach missing, with why."""
    output = REPO_ROOT / config["output_path"]  # relative to the checkout (absolute stays absolute)
    output.mkdir(parents=True, exist_ok=True)
    (output / MISSING_NAME).write_text(json.dumps({
        "approach": path.stem, "reason": config["_missing"],
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds")}, indent=2) + "\n")
    click.secho(f"[{path.stem}] skipped: {config['_missing']}. Start the server and run "
                f"`python tools/run_eval.py {path}` to add it.", fg="yellow", err=True)


def run_one(path: Path, config: dict[str, Any], workspace: Workspace, shortlist: bool = False,
            split: str = "test") -> None:
    output = REPO_ROOT / config["output_path"]  # relative to the checkout (absolute stays absolute)
    output.mkdir(parents=True, exist_ok=True)
    (output / MISSING_NAME).unlink(missing_ok=True)
    recorded = {"approach": path.stem, "source_config": str(path), **portable(config)}
    (output / RUN_CONFIG_NAME).write_text(yaml.safe_dump(recorded, sort_keys=False))
    adapter = next((recorded["model_args"][k] for k in approach.ADAPTER_KEYS if recorded["model_args"].get(k)), None)
    approach.write(output, approach.record(
        name=output.name, config=recorded, shortlist=shortlist, split=split, source_config=str(path),
        data_card=REPO_ROOT / config["metadata"]["data_dir"] / "data_card.json",
        adapter_dir=REPO_ROOT / adapter if adapter else None))
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    started = time.perf_counter()
    try:
        python = str(VLLM_PYTHON) if config.get("model") == "vllm" else sys.executable
        # lm-eval's own CLI, with the project's model types (icd10-retrieval) registered.
        command = [python, "-m", "icd10_coder.lm_eval_cli", "run", "--config", handle.name]
        click.echo(f"[{path.stem}] lm_eval run --config {path}  (model: {config.get('model')}, "
                   f"{config['model_args'].get('pretrained') or config['model_args'].get('model')}; "
                   f"tasks: {', '.join(config['tasks'])}; workspace: {workspace.name})")
        result = subprocess.run(command, cwd=REPO_ROOT, env=workspace_env(workspace), check=False)
    finally:
        os.unlink(handle.name)
    make_private(output)  # results and sample logs quote dialogues
    if result.returncode != 0:
        raise click.ClickException(f"[{path.stem}] lm_eval failed with exit code {result.returncode}")
    click.echo(f"[{path.stem}] done in {time.perf_counter() - started:.0f} s -> {display_path(output)}")


def portable(config: dict[str, Any]) -> dict[str, Any]:
    """The run config as recorded beside the results: paths relative to the checkout."""
    model_args = {key: display_path(value) if isinstance(value, str) and value.startswith("/") else value
                  for key, value in config["model_args"].items()}
    return {**config, "model_args": model_args, "output_path": display_path(config["output_path"]),
            "metadata": {**config["metadata"], "data_dir": display_path(config["metadata"]["data_dir"])}}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("configs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--limit", type=float, default=None, help="Evaluate only the first N test rows (trials).")
@click.option("--model-arg", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one model_args entry, e.g. base_url=... or peft=... (repeatable).")
@click.option("--workspace", default=None, metavar="DIR",
              help="Workspace whose prepared data, adapters and eval/ folder are used. Default: $ICD10_WORKSPACE, "
                   "else the checkout (the real run).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Prepared folder to evaluate on. Default: the workspace's (data/prepared).")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Training recipe whose base_model (and output_dir as adapter) the hf configs evaluate, "
                   "e.g. recipes/qlora.yml. Default: the model_args written in each config (the CPU demo).")
@click.option("--shortlist", is_flag=True,
              help="Evaluate on the prompts with the retrieval shortlist (prepare --shortlist K): the workspace's "
                   "prepared-shortlist/, results in eval/<approach>-shortlist/.")
@click.option("--unseen-only", is_flag=True, help="Score only test_unseen.jsonl (task icd10_medsynth_unseen).")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="val: score the validation split (choice configs only), results in the workspace's eval-val/, "
                   "for choosing the fusion weight (tools/fuse.py) without touching the test split.")
@click.option("--name", default=None, metavar="NAME",
              help="Results folder name instead of the config's (e.g. finetuned-slm-choose-choice for an adapter "
                   "trained to choose); --shortlist still appends -shortlist.")
@click.option("--batch-size", default=None, metavar="N|auto",
              help="Override the configs' batch_size (default: theirs; 16 for the hf backend with a GPU recipe).")
@click.option("--allow-remote-endpoint", is_flag=True,
              help="Allow an API endpoint outside loopback/private networks (dialogues leave your network!).")
def main(configs: tuple[Path, ...], limit: float | None, overrides: tuple[str, ...], workspace: str | None,
         data_dir: Path | None, recipe: Path | None, shortlist: bool, unseen_only: bool, split: str,
         name: str | None, batch_size: str | None, allow_remote_endpoint: bool) -> None:
    """Evaluate each approach config with lm-eval's icd10_medsynth task; results go to the workspace's eval/."""
    try:
        space = Workspace.at(workspace)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    if name and len(configs) > 1:
        raise click.ClickException("--name names one results folder: give one config")
    checked = [(path, load_config(path, overrides, limit, data_dir, allow_remote_endpoint, recipe, space,
                                  batch_size, shortlist, unseen_only, split, name)) for path in configs]
    os.umask(0o077)  # results and sample logs quote dialogues: owner-only from the start
    for path, config in checked:
        if config.get("_missing"):
            record_missing(path, config)
        else:
            run_one(path, config, space, shortlist, split)


if __name__ == "__main__":
    main()
