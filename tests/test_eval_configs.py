"""The three approach configs: same task, prompt and generation; models taken from a recipe."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import yaml

import run_eval

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {p.stem: p for p in sorted((REPO / "recipes" / "eval").glob("*.yml"))}
SHARED = ("tasks", "include_path", "apply_chat_template", "log_samples", "gen_kwargs", "num_fewshot",
          "system_instruction", "fewshot_as_multiturn", "limit")


def test_three_approaches_share_task_prompt_and_generation():
    assert set(CONFIGS) == {"baseline-llm", "baseline-slm", "finetuned-slm"}
    loaded = {name: yaml.safe_load(path.read_text()) for name, path in CONFIGS.items()}
    for key in SHARED:
        assert len({repr(cfg.get(key)) for cfg in loaded.values()}) == 1, key
    for name, cfg in loaded.items():
        assert cfg["tasks"] == ["icd10_medsynth"] and cfg["apply_chat_template"] and cfg["log_samples"]
        assert cfg["output_path"] == f"outputs/eval/{name}"
    assert loaded["baseline-llm"]["model"] == "local-chat-completions"
    assert loaded["finetuned-slm"]["model_args"]["pretrained"] == loaded["baseline-slm"]["model_args"]["pretrained"]


def test_recipe_sets_the_models_of_the_hf_configs_only():
    recipe = REPO / "recipes" / "qlora.yml"
    baseline = run_eval.load_config(CONFIGS["baseline-slm"], (), None, None, False, recipe)
    assert baseline["model_args"] == {"pretrained": "HuggingFaceTB/SmolLM2-1.7B-Instruct", "dtype": "bfloat16"}
    llm = run_eval.load_config(CONFIGS["baseline-llm"], (), None, None, False, recipe)
    assert llm["model_args"]["model"] == "Qwen/Qwen2.5-72B-Instruct"
    with pytest.raises(click.ClickException, match="outputs/adapters/qlora"):
        run_eval.load_config(CONFIGS["finetuned-slm"], (), None, None, False, recipe)


def test_demo_recipe_matches_the_configs_defaults():
    recipe = REPO / "recipes" / "demo-cpu.yml"
    written = yaml.safe_load(CONFIGS["baseline-slm"].read_text())["model_args"]
    derived = run_eval.recipe_model_args(recipe)
    assert Path(derived["pretrained"]) == Path(written["pretrained"]) and derived["dtype"] == written["dtype"]
    finetuned = yaml.safe_load(CONFIGS["finetuned-slm"].read_text())["model_args"]
    assert finetuned["peft"] == derived["peft"]
