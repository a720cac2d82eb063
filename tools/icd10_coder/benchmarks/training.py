"""Stage 3: optimiser steps of LoRA and QLoRA through axolotl."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from icd10_coder.benchmarks.common import prepared_embedded_rows, run_measured
from icd10_coder.paths import EMBEDDED_MODEL, REPO_ROOT


def bench_training(work: Path, steps: int) -> dict[str, Any]:
    prepared_embedded_rows(work)
    results = {}
    for name, extra in (("lora_fp32", []), ("qlora_4bit", ["--adapter=qlora", "--load_in_4bit=True"])):
        command = [str(Path(sys.executable).parent / "accelerate"), "launch", "-m", "axolotl.cli.train",
                   str(REPO_ROOT / "recipes" / "demo-cpu.yml"), f"--base_model={EMBEDDED_MODEL}",
                   f"--max_steps={steps}", f"--output_dir={work / name}", f"--dataset_prepared_path={work / 'cache'}",
                   "--use_mlflow=False", "--eval_strategy=no", "--save_strategy=no", *extra]
        seconds, peak, output = run_measured(command, work / "train-run")
        runtime = float(re.findall(r"'train_runtime': '?([0-9.]+)", output)[-1])
        tokens = int(re.findall(r"'tokens/total': '?([0-9]+)", output)[-1])
        results[name] = {"steps": steps, "tokens": tokens, "train_runtime_s": runtime,
                         "tokens_per_s": round(tokens / runtime, 1), "peak_rss_gib": round(peak, 2),
                         "wall_s_with_loading": round(seconds, 1)}
    results["qlora_over_lora_speed"] = round(results["qlora_4bit"]["tokens_per_s"] /
                                             results["lora_fp32"]["tokens_per_s"], 3)
    results["settings"] = "recipes/demo-cpu.yml on demo data, micro_batch_size 2, fp32, sdpa"
    return results
