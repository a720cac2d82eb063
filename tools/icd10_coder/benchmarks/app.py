"""Stage 8: what the workbench serves: calibration, seconds per suggestion, evidence, search."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from icd10_coder import calibration
from icd10_coder.audit import adapter_hash
from icd10_coder.benchmarks.common import median
from icd10_coder.codes import search
from icd10_coder.evidence import evidence
from icd10_coder.jsonl import read_jsonl
from icd10_coder.loading import load_suggester
from icd10_coder.paths import display_path
from icd10_coder.realdata import REAL_FILES, load_real_rows, read_embedded_rows
from icd10_coder.workspace import DEMO_WORKSPACE, Workspace


def bench_app(work: Path, real_dialogues: int, adapter_arg: str | None = None,
              base_model: str | None = None) -> dict[str, Any]:
    """What the workbench serves (make demo's choice, or ``adapter_arg``): its calibration (ECE, reliability bins,
    band accuracy) and seconds per suggestion on held-out real dialogues, evidence coverage, search latency."""

    splits: dict[str, list[tuple[str, str]]] = {}
    demo_test = Workspace.at(DEMO_WORKSPACE).prepared_shortlist / "test.jsonl"
    if demo_test.is_file():  # the served approach's own held-out test rows
        rows = read_jsonl(demo_test)
        splits["demo test"] = [(r["dialogue"], r["gold_code"]) for r in rows]
    if all(path.is_file() for path in REAL_FILES):  # shared real rows the demo never saw (its 100 codes left out)
        embedded = {row["ICD10"] for row in read_embedded_rows()}
        unseen = [r for r in load_real_rows() if r.code.replace(".", "") not in embedded]
        chosen = random.Random(0).sample(unseen, min(real_dialogues, len(unseen)))
        splits["real"] = [(r.dialogue, r.code) for r in chosen]
    result: dict[str, Any] = {"evidence": {}, "calibration": {}}
    for name, pairs in splits.items():
        covered = sum(bool(evidence(d, g)) for d, g in pairs)
        result["evidence"][name] = {"n": len(pairs), "gold_with_evidence": round(covered / len(pairs), 4)}
    suggester = load_suggester(base_model, adapter_arg, device="cpu", workspace=Workspace.at(work / "app"))
    served = (suggester.record or {}).get("approach") or "generation (no scoring record)"
    for name, pairs in splits.items():
        outcomes, seconds = [], []
        for dialogue, gold in tqdm(pairs, desc=f"calibration ({name})", unit="dialogue", file=sys.stderr):
            started = time.perf_counter()
            codes = suggester.suggest([dialogue], 5)[0]["codes"]
            seconds.append(time.perf_counter() - started)
            if codes and codes[0]["confidence"] is not None:  # generation has no calibrated confidence to measure
                outcomes.append((codes[0]["confidence"], codes[0]["code"] == gold))
            elif not codes:
                outcomes.append((0.0, False))
        result["calibration"][name] = {
            **calibration.measure(outcomes), "served": served, "base_model": display_path(suggester.base_model),
            "adapter": display_path(suggester.adapter) if suggester.adapter else None,
            "adapter_sha256": adapter_hash(suggester.adapter), "s_per_suggestion_median": round(median(seconds), 2),
            "note": "top suggestion's confidence vs exact match"}
    queries = ["diabetis type 2", "E11.9", "pain in left knee", "pneumonia", "fracture of femur"]
    times = []
    for _ in range(3):
        started = time.perf_counter()
        for query in queries:
            search(query)
        times.append((time.perf_counter() - started) / len(queries))
    result["search_ms_median"] = round(median(times) * 1000, 1)
    return result
