"""Stage 5: the valid-code rate of predict with and without constrained decoding."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from icd10_coder.benchmarks.common import prepared_embedded_rows
from icd10_coder.jsonl import read_jsonl
from icd10_coder.loading import DEFAULT_ADAPTER
from icd10_coder.paths import EMBEDDED_MODEL
from icd10_coder.predictor import Predictor


def bench_predict(work: Path) -> dict[str, Any]:
    """Valid-code rate with and without constrained decoding, for the base model and the demo adapter."""

    rows = read_jsonl(prepared_embedded_rows(work) / "test.jsonl")
    models = {"base": None}
    if (DEFAULT_ADAPTER / "adapter_config.json").is_file():
        models["finetuned"] = DEFAULT_ADAPTER
    results: dict[str, Any] = {"dialogues": len(rows), "top_k": 1}
    for name, adapter in models.items():
        for constrain in (False, True):
            predictor = Predictor(EMBEDDED_MODEL, adapter, constrain)
            started = time.perf_counter()
            answers = [predictor.predict(r["dialogue"], top_k=1) for r in rows]
            seconds = time.perf_counter() - started
            top = [a["codes"][0] if a["codes"] else None for a in answers]
            results[f"{name}_{'constrained' if constrain else 'unconstrained'}"] = {
                "adapter": str(adapter) if adapter else None,
                "valid_code_rate": round(sum(1 for c in top if c and c["billable"]) / len(rows), 3),
                "exact_match": round(sum(1 for c, r in zip(top, rows, strict=True)
                                         if c and c["code"] == r["gold_code"]) / len(rows), 3),
                "dialogues_per_s": round(len(rows) / seconds, 3)}
    return results
