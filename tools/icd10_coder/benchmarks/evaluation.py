"""Stage 4: lm-eval on the embedded rows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from icd10_coder.benchmarks.common import prepared_embedded_rows
from icd10_coder.paths import EMBEDDED_MODEL, REPO_ROOT
from icd10_coder.scoring import score_answer


def bench_eval(work: Path, limit: int) -> dict[str, Any]:
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    data = prepared_embedded_rows(work)
    results = {}
    for batch_size in (1, 8):
        started = time.perf_counter()
        lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={EMBEDDED_MODEL},dtype=float32",
                                tasks=["icd10_medsynth"], apply_chat_template=True, limit=limit,
                                batch_size=batch_size, device="cuda" if torch.cuda.is_available() else "cpu",
                                task_manager=TaskManager(include_path=str(REPO_ROOT / "tasks"),
                                                         metadata={"data_dir": str(data)}))
        seconds = time.perf_counter() - started
        results[f"batch_{batch_size}"] = {"samples": limit, "seconds": round(seconds, 1),
                                          "samples_per_s": round(limit / seconds, 3)}
    speedup = results["batch_8"]["samples_per_s"] / results["batch_1"]["samples_per_s"]
    results["batch_8_over_batch_1"] = round(speedup, 2)
    answers = ["M25.562 - Pain in left knee", "**ICD-10:** m25562", "I don't know", "E11.65\nE11.9\nE11.8"] * 2500
    started = time.perf_counter()
    for answer in answers:
        score_answer("M25.562", answer)
    results["scoring_us_per_sample"] = round((time.perf_counter() - started) / len(answers) * 1e6, 1)
    results["settings"] = "embedded SmolLM2-135M, fp32, greedy, max_gen_toks 96, demo test split, load time included"
    return results
