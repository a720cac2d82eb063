"""The approach configs: same task, prompt and generation (or choice); models taken from a recipe."""

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
    assert set(CONFIGS) == {"retrieval", "baseline-llm", "baseline-slm", "finetuned-slm", "baseline-slm-vllm",
                            "finetuned-slm-vllm", "baseline-slm-choice", "finetuned-slm-choice"}
    loaded = {name: yaml.safe_load(path.read_text()) for name, path in CONFIGS.items()
              if not name.endswith("-choice")}
    for key in SHARED:
        assert len({repr(cfg.get(key)) for cfg in loaded.values()}) == 1, key
    for name, cfg in loaded.items():
        assert cfg["tasks"] == ["icd10_medsynth"] and cfg["apply_chat_template"] and cfg["log_samples"]
        # The engine is not an approach: vLLM results land where the hf ones do.
        assert cfg["output_path"] == f"outputs/eval/{name.removesuffix('-vllm')}"
    assert loaded["baseline-llm"]["model"] == "local-chat-completions"
    assert loaded["finetuned-slm"]["model_args"]["pretrained"] == loaded["baseline-slm"]["model_args"]["pretrained"]


def test_choice_configs_are_the_slm_configs_with_the_choice_task():
    """Same model, prompt and logging as the generation configs; only the task and lm-eval model class differ."""
    for name in ("baseline-slm", "finetuned-slm"):
        generate, choose = (yaml.safe_load(CONFIGS[n].read_text()) for n in (name, f"{name}-choice"))
        assert choose["tasks"] == ["icd10_medsynth_choice"] and choose["model"] == "icd10-hf-choice"
        assert choose["model_args"]["pretrained"] == generate["model_args"]["pretrained"]
        assert choose["model_args"]["dtype"] == generate["model_args"]["dtype"]
        for key in ("include_path", "apply_chat_template", "log_samples", "batch_size"):
            assert choose[key] == generate[key], key
        assert choose["output_path"] == f"outputs/eval/{name}-choice"
    recipe = REPO / "recipes" / "demo-cpu-shortlist.yml"
    finetuned = yaml.safe_load(CONFIGS["finetuned-slm-choice"].read_text())["model_args"]
    assert finetuned["peft"] == yaml.safe_load(recipe.read_text())["output_dir"]


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


def vllm_init_parameters() -> set[str]:
    """Keyword arguments of lm-eval's VLLM model class, read from its source (vLLM itself is not installed)."""
    import ast
    import importlib.util

    source = Path(importlib.util.find_spec("lm_eval.models.vllm_causallms").origin).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "VLLM":
            init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            return {a.arg for a in init.args.args + init.args.kwonlyargs}
    raise AssertionError("lm-eval has no VLLM class")


def test_vllm_configs_are_valid_for_lm_evals_vllm_backend():
    known = vllm_init_parameters()
    for name in ("baseline-slm-vllm", "finetuned-slm-vllm"):
        cfg = yaml.safe_load(CONFIGS[name].read_text())
        assert cfg["model"] == "vllm" and cfg["batch_size"] == "auto"
        # Unknown keys would go on to vllm.LLM(); these are the ones lm-eval itself takes.
        assert set(cfg["model_args"]) - {"seed"} <= known, set(cfg["model_args"]) - known
    # The adapter the vLLM config loads must fit its LoRA slots: rank <= max_lora_rank.
    finetuned = yaml.safe_load(CONFIGS["finetuned-slm-vllm"].read_text())["model_args"]
    recipe = yaml.safe_load((REPO / "recipes" / "qlora.yml").read_text())
    assert finetuned["max_lora_rank"] == recipe["lora_r"]
    assert finetuned["lora_local_path"] == recipe["output_dir"] and finetuned["pretrained"] == recipe["base_model"]


def test_recipe_gives_vllm_its_adapter_and_rank():
    for name in ("qlora.yml", "qlora-older-gpu.yml", "demo-cpu.yml"):
        recipe = REPO / "recipes" / name
        cfg = yaml.safe_load(recipe.read_text())
        args = run_eval.recipe_model_args(recipe, engine="vllm")
        assert args["max_lora_rank"] == cfg["lora_r"] and args["lora_local_path"] == cfg["output_dir"]
    assert run_eval.recipe_model_args(REPO / "recipes" / "qlora-older-gpu.yml", engine="vllm")["dtype"] == "float16"


def test_vllm_configs_say_clearly_when_vllm_is_missing():
    if run_eval.VLLM_PYTHON.is_file():
        pytest.skip("the vLLM environment exists here")
    with pytest.raises(click.ClickException, match="make vllm-env"):
        run_eval.load_config(CONFIGS["baseline-slm-vllm"], (), None, None, False, REPO / "recipes" / "qlora.yml")


def test_hf_backend_gets_a_gpu_batch_size_with_a_gpu_recipe_only():
    gpu = run_eval.load_config(CONFIGS["baseline-slm"], (), None, None, False, REPO / "recipes" / "qlora.yml")
    assert gpu["batch_size"] == run_eval.GPU_HF_BATCH_SIZE > 1
    cpu = run_eval.load_config(CONFIGS["baseline-slm"], (), None, None, False, REPO / "recipes" / "demo-cpu.yml")
    assert cpu["batch_size"] == 1
    chosen = run_eval.load_config(CONFIGS["baseline-slm"], (), None, None, False, REPO / "recipes" / "qlora.yml",
                                  batch_size="auto")
    assert chosen["batch_size"] == "auto"
