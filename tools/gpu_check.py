"""One-command check that the GPU path works, with its figures (``make gpu-check``, <= 10 min).

    python tools/gpu_check.py              # environment, ~30 QLoRA steps, HF + vLLM evaluation
    python tools/gpu_check.py --env-only   # just the environment (works on a CPU too)

1. prints torch / CUDA / GPU / bitsandbytes / flash-attn / vLLM versions and capability;
2. trains ~30 steps of the ``recipes/qlora.yml`` shape (4-bit QLoRA, bf16, FlashAttention-2
   where installed, Triton LoRA kernels) on the embedded 135M model, in its own workspace
   ``outputs/gpu-check/`` (no hub access: the demo data and the embedded model are local);
3. evaluates ~50 demo dialogues with that adapter through lm-eval's hf backend and, when the
   vLLM environment exists (``make vllm-env``), its vllm backend;
4. writes ``outputs/bench/gpu.json``: training tokens/s, peak GPU memory, an MFU estimate,
   evaluation samples/s per engine.

On a machine without a CUDA GPU it stops at once with a clear message.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click

from icd10_coder.offline import apply_offline_env, workspace_env
from icd10_coder.paths import EMBEDDED_MODEL, REPO_ROOT, display_path
from icd10_coder.workspace import Workspace

TOOLS = REPO_ROOT / "tools"
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
# Dense bf16 tensor-core peak (FLOP/s, no sparsity) by GPU name, for the MFU estimate.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "GH200": 989e12, "B200": 2250e12, "A100": 312e12,
                   "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10": 125e12, "RTX 4090": 165e12,
                   "A6000": 155e12, "V100": 125e12, "T4": 65e12}


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """What the GPU path depends on, as found in this environment."""
    import torch

    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": cuda, "gpu": None, "gpu_count": torch.cuda.device_count() if cuda else 0,
        "compute_capability": None, "bf16_supported": False,
        "bitsandbytes": package_version("bitsandbytes"), "flash_attn": package_version("flash-attn"),
        "flash_attn_importable": importlib.util.find_spec("flash_attn") is not None,
        "axolotl": package_version("axolotl"), "transformers": package_version("transformers"),
        "peft": package_version("peft"), "lm_eval": package_version("lm_eval"),
        "vllm_python": display_path(VLLM_PYTHON) if VLLM_PYTHON.is_file() else None,
    }
    if cuda:
        major, minor = torch.cuda.get_device_capability(0)
        env |= {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
                "bf16_supported": torch.cuda.is_bf16_supported(),
                "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
    return env


def peak_flops(gpu_name: str | None) -> float | None:
    for name, flops in PEAK_BF16_FLOPS.items():
        if gpu_name and name in gpu_name:
            return flops
    return None


def parameter_count(model: Path) -> int:
    """Parameters of a model from its config alone (built on the meta device: no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    return sum(p.numel() for p in skeleton.parameters())


def run(command: list[str], space: Workspace) -> tuple[float, str]:
    """Run a command in the workspace; wall seconds and its output (echoed as it comes)."""
    click.secho(f"\n[gpu-check] {' '.join(display_path(c) if c.startswith('/') else c for c in command)}", bold=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=workspace_env(space, hub_offline=True),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        lines.append(line)
    if process.wait() != 0:
        raise click.ClickException(f"{' '.join(command[:4])} failed (exit {process.returncode}); see above")
    return time.perf_counter() - started, "".join(lines)


def train_figures(log: str, params: int, gpu: str | None) -> dict[str, Any]:
    """Tokens/s, peak memory and MFU from axolotl's own log lines."""
    runtime = float(re.findall(r"'train_runtime': '?([0-9.]+)", log)[-1])
    tokens = int(re.findall(r"'tokens/total': '?([0-9]+)", log)[-1])
    peaks = [float(v) for v in re.findall(r"'memory/max_allocated \(GiB\)': '?([0-9.]+)", log)]
    tokens_per_s = tokens / runtime
    flops = peak_flops(gpu)
    return {"tokens": tokens, "train_runtime_s": runtime, "tokens_per_s": round(tokens_per_s, 1),
            "peak_gpu_memory_gib": max(peaks) if peaks else None, "parameters": params,
            "mfu_estimate": round(6 * params * tokens_per_s / flops, 4) if flops else None,
            "mfu_note": "6 x parameters x tokens/s / dense bf16 peak of the GPU; LoRA skips the frozen base's "
                        "weight gradients, so real utilisation is ~2/3 of this"}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--env-only", is_flag=True, help="Print the environment and stop (also on a CPU-only machine).")
@click.option("--steps", type=click.IntRange(min=1), default=30, show_default=True, help="QLoRA optimiser steps.")
@click.option("--eval-items", type=click.IntRange(min=1), default=50, show_default=True,
              help="Demo dialogues per evaluation engine.")
@click.option("--workspace", default="outputs/gpu-check", show_default=True, metavar="DIR",
              help="The check's own workspace (replaced on every run).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("outputs/bench/gpu.json"),
              show_default=True)
def main(env_only: bool, steps: int, eval_items: int, workspace: str, out: Path) -> None:
    """Check the GPU path end to end in minutes and record its figures."""
    apply_offline_env(hub_offline=True)
    env = environment()
    click.echo(json.dumps(env, indent=2))
    if env_only:
        return
    if not env["cuda_available"]:
        raise click.ClickException("no CUDA GPU is visible (torch.cuda.is_available() is False): make gpu-check needs "
                                   "one. On this machine use `make demo` (CPU); on a GPU machine run "
                                   "`make setup EXTRAS=dev,gpu` first.")
    space = Workspace.at(workspace)
    if space.is_real:
        raise click.ClickException("the GPU check never runs in the real run's workspace; pick another --workspace")
    shutil.rmtree(space.root, ignore_errors=True)
    python, ws = sys.executable, ["--workspace", str(space.root)]
    result: dict[str, Any] = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "environment": env}

    run([python, str(TOOLS / "prepare.py"), "--demo", "--tokenizer", "none", "--test-fraction", "0.5", *ws], space)
    flash = env["flash_attn_importable"] and float(env["compute_capability"]) >= 8.0
    overrides = [f"--base_model={EMBEDDED_MODEL}", f"--max_steps={steps}", "--save_strategy=no", "--eval_strategy=no",
                 f"--attn_implementation={'flash_attention_2' if flash else 'sdpa'}", "--use_mlflow=False"]
    if not env["bf16_supported"]:
        overrides += ["--bf16=False", "--fp16=True", "--tf32=False"]
    seconds, log = run([python, str(TOOLS / "train.py"), "recipes/qlora.yml", *ws, *overrides], space)
    result["training"] = {"recipe": "recipes/qlora.yml on the embedded 135M model", "steps": steps,
                          "attention": "flash_attention_2" if flash else "sdpa", "wall_s": round(seconds, 1),
                          **train_figures(log, parameter_count(EMBEDDED_MODEL), env["gpu"])}

    adapter = space.adapters_dir / "qlora"
    engines = {"hf": ("recipes/eval/finetuned-slm.yml", ["--model-arg", f"peft={adapter}", "--batch-size", "16"])}
    if VLLM_PYTHON.is_file():
        engines["vllm"] = ("recipes/eval/finetuned-slm-vllm.yml", ["--model-arg", f"lora_local_path={adapter}"])
    else:
        result["evaluation_vllm_skipped"] = "no vLLM environment (make vllm-env)"
    result["evaluation"] = {}
    for engine, (config, extra) in engines.items():
        seconds, _ = run([python, str(TOOLS / "run_eval.py"), *ws, config, "--limit", str(eval_items),
                          "--model-arg", f"pretrained={EMBEDDED_MODEL}", *extra], space)
        result["evaluation"][engine] = {"items": eval_items, "wall_s_with_loading": round(seconds, 1),
                                        "samples_per_s": round(eval_items / seconds, 2)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps({k: result[k] for k in result if k != "environment"}, indent=2))
    click.echo(f"[gpu-check] wrote {display_path(out.resolve())}")


if __name__ == "__main__":
    main()
