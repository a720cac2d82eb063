"""The GPU path, checked on a CPU: what train.py launches, and the GPU check's clear refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import prepare_templated

import train
from icd10_coder.offline import subprocess_env
from icd10_coder.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def launched(tmp_path, monkeypatch):
    """Run tools/train.py with accelerate replaced by a recorder; returns (run, recorded calls)."""
    space = Workspace.at(tmp_path / "ws")
    prepare_templated(space.prepared)
    calls = []
    real_run = subprocess.run

    def record(command, *args, **kwargs):
        if "axolotl.cli.train" not in command:  # anything else (MLflow's own helpers) runs for real
            return real_run(command, *args, **kwargs)
        calls.append((command, kwargs["env"]))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(train.subprocess, "run", record)

    def run(*args: str):
        result = CliRunner().invoke(train.main, [*args, "--workspace", str(space.root)])
        assert result.exit_code == 0, result.output
        return result.output, calls[-1]

    return space, run


def test_single_gpu_recipes_launch_one_process(launched):
    space, run = launched
    output, (command, env) = run("recipes/qlora.yml", "--max_steps=3")
    assert command[command.index("--num_processes") + 1] == "1"
    assert command[-1] == "--max_steps=3" and command[-2].endswith("recipes/qlora.yml")
    assert "1 x 4 x 4 = 16 sequences per step" in output
    # Training data, caches and MLflow all stay in the workspace.
    assert env["HF_DATASETS_CACHE"] == str(space.datasets_cache) and str(space.mlflow_db) in env["MLFLOW_TRACKING_URI"]


def test_deepspeed_recipes_use_every_gpu_unless_told(launched):
    _, run = launched
    output, (command, _) = run("recipes/qlora-multigpu.yml")
    assert "--num_processes" not in command and "(visible GPUs) x 4 x 1" in output
    output, (command, _) = run("recipes/qlora-multigpu.yml", "--num-processes", "4")
    assert command[command.index("--num_processes") + 1] == "4" and "4 x 4 x 1 = 16" in output


def test_gpu_check_stops_at_once_on_a_cpu_machine(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: make gpu-check runs for real")
    result = subprocess.run([sys.executable, "tools/gpu_check.py", "--workspace", str(tmp_path / "ws"),
                             "--out", str(tmp_path / "gpu.json")], cwd=REPO, env=subprocess_env(hub_offline=True),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no CUDA GPU is visible" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ws").exists() and not (tmp_path / "gpu.json").exists()


def test_gpu_check_prints_the_environment_anywhere():
    result = subprocess.run([sys.executable, "tools/gpu_check.py", "--env-only"], cwd=REPO,
                            env=subprocess_env(hub_offline=True), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    env = json.loads(result.stdout)
    assert {"torch", "torch_cuda", "cuda_available", "bitsandbytes", "flash_attn", "compute_capability"} <= set(env)
    assert env["axolotl"] == "0.19.0"


def test_mfu_estimate_from_axolotl_log_lines():
    import gpu_check

    log = ("{'loss': '1.0', 'memory/max_allocated (GiB)': '3.5', 'tokens/total': 1000}\n"
           "{'train_runtime': '2.0', 'tokens/total': 4000, 'memory/max_allocated (GiB)': '4.25'}\n")
    figures = gpu_check.train_figures(log, params=135_000_000, gpu="NVIDIA H200")
    assert figures["tokens_per_s"] == 2000 and figures["peak_gpu_memory_gib"] == 4.25
    assert figures["mfu_estimate"] == pytest.approx(round(6 * 135e6 * 2000 / 989e12, 4))
    assert gpu_check.train_figures(log, params=1, gpu="Unknown GPU")["mfu_estimate"] is None


def test_training_again_removes_the_scoring_record_fitted_for_the_old_adapter(launched):
    import yaml

    space, run = launched
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "qlora.yml"
    adapter = space.map(yaml.safe_load(recipe.read_text())["output_dir"])
    adapter.mkdir(parents=True)
    (adapter / "icd10_scoring.json").write_text("{}")
    (adapter / "adapter_config.json").write_text("{}")
    output, _ = run("recipes/qlora.yml")
    assert not (adapter / "icd10_scoring.json").exists() and "run tools/fuse.py again" in output
    assert (adapter / "adapter_config.json").exists()  # nothing else is touched
