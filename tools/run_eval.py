"""Run lm-eval on one or more approach configs (``recipes/eval/*.yml``), with privacy checks.

    python tools/run_eval.py recipes/eval/baseline-slm.yml recipes/eval/finetuned-slm.yml
    python tools/run_eval.py recipes/eval/baseline-llm.yml --model-arg base_url=http://10.0.0.5:8000/v1/chat/completions

Each config is an ``lm_eval run --config`` file; this wrapper only checks it (API endpoints
must be loopback/private, no API key in the file, adapters exist), applies overrides,
runs the real ``lm_eval`` CLI with telemetry off, and makes the written files private.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from icd10_coder.endpoints import API_MODELS, EndpointError, check_endpoint  # noqa: E402
from icd10_coder.offline import subprocess_env  # noqa: E402
from icd10_coder.paths import REPO_ROOT, make_private  # noqa: E402

TASK = "icd10_medsynth"
SECRET_KEYS = {"api_key", "auth_token", "token"}
RUN_CONFIG_NAME = "run_config.yml"


def _parse_value(text: str) -> Any:
    """``8`` -> 8, ``true`` -> True, anything else stays a string (YAML scalar rules)."""
    return yaml.safe_load(text) if text else text


def recipe_model_args(recipe: Path) -> dict[str, Any]:
    """The model a training recipe produced: its base model, its adapter folder, its precision."""
    if not recipe.is_file():
        raise click.ClickException(f"{recipe}: no such recipe")
    cfg = yaml.safe_load(recipe.read_text()) or {}
    return {"pretrained": cfg["base_model"], "peft": cfg["output_dir"],
            "dtype": "bfloat16" if cfg.get("bf16") in (True, "auto") else "float32"}


def load_config(path: Path, overrides: tuple[str, ...], limit: float | None, data_dir: Path | None,
                allow_remote: bool, recipe: Path | None = None) -> dict[str, Any]:
    """Read, override and check one run config; raise ClickException on anything unsafe."""
    if not path.is_file():
        raise click.ClickException(f"{path}: no such run config")
    config = yaml.safe_load(path.read_text()) or {}
    if TASK not in (config.get("tasks") or []):
        raise click.ClickException(f"{path}: expected tasks: [{TASK}]")
    model_args = dict(config.get("model_args") or {})
    if recipe is not None and config.get("model", "hf") == "hf":
        from_recipe = recipe_model_args(recipe)
        if "peft" not in model_args:  # a baseline config: the recipe's base model, no adapter
            from_recipe.pop("peft")
        model_args.update(from_recipe)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.ClickException(f"--model-arg {item!r}: expected KEY=VALUE")
        model_args[key.strip()] = _parse_value(value)
    secrets = SECRET_KEYS & set(model_args)
    if secrets:
        raise click.ClickException(
            f"{path}: {', '.join(sorted(secrets))} in model_args would be written to the results; "
            "export OPENAI_API_KEY instead")
    model = config.get("model", "hf")
    if model in API_MODELS:
        try:
            click.echo(check_endpoint(model_args.get("base_url"), allow_remote=allow_remote))
        except EndpointError as err:
            raise click.ClickException(f"{path}: {err}") from err
    peft = model_args.get("peft")
    if peft and not (Path(peft) / "adapter_config.json").is_file():
        raise click.ClickException(f"{path}: adapter {peft} not found (adapter_config.json missing); "
                                   "train first: make train")
    config["model_args"] = model_args
    if limit is not None:
        config["limit"] = limit
    if data_dir is not None:
        config["metadata"] = {**(config.get("metadata") or {}), "data_dir": str(data_dir)}
    if config.get("include_path") in (None, "tasks"):
        config["include_path"] = str(REPO_ROOT / "tasks")  # found from any working directory
    return config


def run_one(path: Path, config: dict[str, Any]) -> None:
    output = Path(config.get("output_path") or f"outputs/eval/{path.stem}")
    output.mkdir(parents=True, exist_ok=True)
    (output / RUN_CONFIG_NAME).write_text(yaml.safe_dump({"approach": path.stem, "source_config": str(path),
                                                          **config}, sort_keys=False))
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    started = time.perf_counter()
    try:
        command = [sys.executable, "-m", "lm_eval", "run", "--config", handle.name]
        click.echo(f"[{path.stem}] {' '.join(command[2:])}  (model: {config.get('model')}, "
                   f"{config['model_args'].get('pretrained') or config['model_args'].get('model')})")
        result = subprocess.run(command, env=subprocess_env(), check=False)
    finally:
        os.unlink(handle.name)
    make_private(output)  # results and sample logs quote dialogues
    if result.returncode != 0:
        raise click.ClickException(f"[{path.stem}] lm_eval failed with exit code {result.returncode}")
    click.echo(f"[{path.stem}] done in {time.perf_counter() - started:.0f} s -> {output}")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("configs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--limit", type=float, default=None, help="Evaluate only the first N test rows (trials).")
@click.option("--model-arg", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one model_args entry, e.g. base_url=... or peft=... (repeatable).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Prepared folder to evaluate on (default: data/prepared).")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Training recipe whose base_model (and output_dir as adapter) the hf configs evaluate, "
                   "e.g. recipes/qlora.yml. Default: the model_args written in each config (the CPU demo).")
@click.option("--allow-remote-endpoint", is_flag=True,
              help="Allow an API endpoint outside loopback/private networks (dialogues leave your network!).")
def main(configs: tuple[Path, ...], limit: float | None, overrides: tuple[str, ...], data_dir: Path | None,
         recipe: Path | None, allow_remote_endpoint: bool) -> None:
    """Evaluate each approach config with lm-eval's icd10_medsynth task; results go to its output_path."""
    checked = [(path, load_config(path, overrides, limit, data_dir, allow_remote_endpoint, recipe))
               for path in configs]
    for path, config in checked:
        run_one(path, config)


if __name__ == "__main__":
    main()
