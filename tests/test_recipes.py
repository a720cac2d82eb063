"""Recipes: no copy drift between GPU and CPU, axolotl's own validation, answer-only loss."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import prepare_templated

from icd10_coder.offline import workspace_env
from icd10_coder.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
# What a CUDA machine reports to axolotl (an H100); lets GPU recipes validate on CPU.
GPU_CAPABILITIES = {"bf16": True, "fp8": True, "tf32": True, "n_gpu": 1, "compute_capability": "sm_90"}
# A T4 (sm_75) and a V100 (sm_70): no bf16, no TF32, no FlashAttention-2.
OLDER_GPUS = {"T4": {"bf16": False, "fp8": False, "tf32": False, "n_gpu": 1, "compute_capability": "sm_75"},
              "V100": {"bf16": False, "fp8": False, "tf32": False, "n_gpu": 1, "compute_capability": "sm_70"}}


def recipe(name: str) -> dict:
    return yaml.safe_load((RECIPES / name).read_text())


def hardware_keys() -> set[str]:
    block = re.search(r"```hardware-keys\n(.*?)```", (RECIPES / "README.md").read_text(), re.S)
    assert block, "recipes/README.md must list the hardware keys"
    return set(block.group(1).split())


def differing_keys(a: dict, b: dict) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")}


def test_cpu_recipe_differs_from_gpu_recipe_only_in_hardware_keys():
    drift = differing_keys(recipe("qlora.yml"), recipe("demo-cpu.yml")) - hardware_keys()
    assert not drift, f"keys differ between qlora.yml and demo-cpu.yml without being hardware keys: {drift}"


def test_every_hardware_key_is_a_real_difference_or_a_real_key():
    both = set(recipe("qlora.yml")) | set(recipe("demo-cpu.yml"))
    assert hardware_keys() <= both, hardware_keys() - both


def test_multigpu_recipe_is_qlora_plus_deepspeed_with_the_same_effective_batch_on_4_gpus():
    assert differing_keys(recipe("qlora.yml"), recipe("qlora-multigpu.yml")) == {
        "deepspeed", "output_dir", "dataset_prepared_path", "mlflow_run_name", "gradient_accumulation_steps"}
    assert (REPO / recipe("qlora-multigpu.yml")["deepspeed"]).is_file()
    single, multi = recipe("qlora.yml"), recipe("qlora-multigpu.yml")
    effective = single["micro_batch_size"] * single["gradient_accumulation_steps"]
    assert 4 * multi["micro_batch_size"] * multi["gradient_accumulation_steps"] == effective == 16
    documented = (RECIPES / "README.md").read_text()
    assert "--num_processes 4 -m axolotl.cli.train recipes/qlora-multigpu.yml" in documented


def test_evaluation_cadence_does_not_depend_on_the_gpu_count():
    for name in ("qlora.yml", "qlora-multigpu.yml", "qlora-older-gpu.yml"):
        cfg = recipe(name)
        assert cfg["evals_per_epoch"] == 5 and "eval_steps" not in cfg, name


def test_older_gpu_recipe_differs_from_qlora_only_in_hardware_keys():
    drift = differing_keys(recipe("qlora.yml"), recipe("qlora-older-gpu.yml")) - hardware_keys()
    assert not drift, drift
    older = recipe("qlora-older-gpu.yml")
    assert (older["bf16"], older["fp16"], older["tf32"], older["attn_implementation"]) == (False, True, False, "sdpa")
    assert not any(older[f"lora_{k}_kernel"] for k in ("mlp", "qkv", "o", "embedding"))


@pytest.mark.parametrize("gpu", sorted(OLDER_GPUS))
def test_older_gpu_recipe_passes_axolotl_validation_on_t4_and_v100(gpu):
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = validate_config(DictDefault(recipe("qlora-older-gpu.yml")), capabilities=OLDER_GPUS[gpu],
                          env_capabilities={"torch_version": "2.13.0"})
    assert cfg.fp16 and not cfg.bf16 and cfg.load_in_4bit


def test_cpu_recipe_has_the_cpu_settings():
    cpu = recipe("demo-cpu.yml")
    assert cpu["bf16"] is False and cpu["fp16"] is False and cpu["attn_implementation"] == "sdpa"
    assert not any(cpu[f"lora_{k}_kernel"] for k in ("mlp", "qkv", "o", "embedding"))
    assert cpu["base_model"].endswith("outputs/models/smollm2-135m-instruct")


def test_gpu_recipe_is_qlora_with_the_promised_settings():
    gpu = recipe("qlora.yml")
    assert gpu["adapter"] == "qlora" and gpu["load_in_4bit"] is True and gpu["lora_target_linear"] is True
    assert gpu["bf16"] == "auto" and gpu["attn_implementation"] == "flash_attention_2"
    assert gpu["gradient_checkpointing"] is True and gpu["lr_scheduler"] == "cosine"
    assert gpu["test_datasets"] and gpu["output_dir"].startswith("outputs/")
    assert gpu["mlflow_tracking_uri"].startswith("sqlite:///outputs/")


@pytest.mark.parametrize("name", ["qlora.yml", "qlora-multigpu.yml", "qlora-shortlist.yml", "qlora-choose.yml"])
def test_gpu_recipes_pass_axolotl_validation(name):
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = validate_config(DictDefault(recipe(name)), capabilities=GPU_CAPABILITIES,
                          env_capabilities={"torch_version": "2.13.0"})
    assert cfg.adapter == "qlora" and cfg.load_in_4bit and cfg.sequence_len == 2048


def test_gpu_recipe_validation_would_catch_a_bad_key():
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    broken = recipe("qlora.yml") | {"adapter": "qlora", "load_in_4bit": False, "load_in_8bit": False}
    with pytest.raises(ValueError):
        validate_config(DictDefault(broken), capabilities=GPU_CAPABILITIES,
                        env_capabilities={"torch_version": "2.13.0"})


@pytest.mark.parametrize("name", ["demo-cpu.yml", "demo-cpu-shortlist.yml", "demo-cpu-choose.yml"])
def test_cpu_recipes_pass_axolotl_load_cfg(name, embedded_model, monkeypatch, tmp_path):
    """The full loader axolotl's CLI uses, on this (GPU-less) machine, on a workspace copy of the
    recipe: load_cfg writes a debug.log into output_dir, which must not be the real run's."""
    from axolotl.cli.config import load_cfg

    import train

    monkeypatch.chdir(REPO)
    copy = train.resolve_recipe(RECIPES / name, Workspace.at(tmp_path / "ws"))
    cfg = load_cfg(str(copy))
    assert cfg.adapter == "lora" and not cfg.bf16 and not cfg.fp16
    assert not (REPO / recipe(name)["output_dir"]).exists() or \
        not (REPO / recipe(name)["output_dir"] / "debug.log").exists()


# What real dialogues change on the CPU: prompts of up to ~2,100 tokens, one per micro-batch, one epoch.
REAL_DIALOGUE_KEYS = {"micro_batch_size", "gradient_accumulation_steps", "num_epochs", "eval_strategy", "test_datasets"}


def test_shortlist_recipes_differ_from_their_base_only_in_data_and_outputs():
    allowed = {"datasets", "test_datasets", "sequence_len", "output_dir", "dataset_prepared_path", "mlflow_run_name"}
    assert differing_keys(recipe("demo-cpu.yml"), recipe("demo-cpu-shortlist.yml")) <= allowed | REAL_DIALOGUE_KEYS
    assert recipe("demo-cpu-shortlist.yml")["sequence_len"] >= 2048
    for base, variant, data in (("qlora.yml", "qlora-shortlist.yml", "prepared-shortlist"),
                                ("qlora-shortlist.yml", "qlora-choose.yml", "prepared-choose"),
                                ("demo-cpu-shortlist.yml", "demo-cpu-choose.yml", "prepared-choose")):
        drift = differing_keys(recipe(base), recipe(variant))
        assert drift <= allowed | (REAL_DIALOGUE_KEYS if variant == "demo-cpu-shortlist.yml" else set()), drift
        assert {d["path"] for d in recipe(variant)["datasets"]} == {f"data/{data}/train.jsonl"}
        assert recipe(variant)["output_dir"] != recipe(base)["output_dir"]


def test_training_data_masks_everything_but_the_answer(tmp_path, embedded_model):
    """Tokenize demo data with axolotl itself and check which tokens carry loss."""
    import datasets
    from transformers import AutoTokenizer

    env = workspace_env(Workspace.at(tmp_path / "ws"), hub_offline=True)  # datasets cache there, not ~/.cache
    prepare_templated(tmp_path / "data" / "prepared")
    prepared = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-m", "axolotl.cli.preprocess", str(RECIPES / "demo-cpu.yml"),
         f"--base_model={embedded_model}", f"--dataset_prepared_path={prepared}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    arrow_dirs = [p.parent for p in prepared.rglob("dataset_info.json")]
    assert arrow_dirs, f"no tokenized dataset under {prepared}"
    rows = datasets.load_from_disk(str(arrow_dirs[0]))
    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    train = [yaml.safe_load(line) for line in (tmp_path / "data/prepared/train.jsonl").read_text().splitlines()]
    answers = {r["messages"][2]["content"] for r in train}
    system_prompt = train[0]["messages"][0]["content"]
    for row in rows.select(range(min(10, len(rows)))):
        trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        masked = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == -100]
        trained_text = tokenizer.decode(trained)
        assert trained_text.replace("<|im_end|>", "").strip() in answers, trained_text
        assert "Dialogue:" in tokenizer.decode(masked) and system_prompt[:40] in tokenizer.decode(masked)
        assert len(trained) < len(masked) / 5
