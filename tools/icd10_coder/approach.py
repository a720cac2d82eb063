"""What an approach is, written beside its results (``approach.json``), so nothing parses folder names.

``tools/run_eval.py`` writes the record for every lm-eval run from what it actually ran (the model type,
whether an adapter was loaded, the prompt variant, the task's scorer, the split, the data card);
``tools/fuse.py`` writes one for the fused ranking it derives. The report labels and groups approaches
from these records; a results folder without one is refused (re-run the evaluation that made it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from icd10_coder.audit import adapter_hash
from icd10_coder.endpoints import API_MODELS
from icd10_coder.paths import EMBEDDED_MODEL, display_path

RECORD = "approach.json"
FAMILIES = {"retrieval": "Retrieval (no model)", "baseline-llm": "Baseline LLM", "baseline-slm": "Baseline SLM",
            "finetuned-slm": "Finetuned SLM"}
RETRIEVAL_MODEL = "icd10-retrieval"
ADAPTER_KEYS = ("peft", "lora_local_path")
CHOICE_TASK_PREFIX = "icd10_medsynth_choice"
# The embedded model as the demo serves it behind an OpenAI-compatible endpoint: not a large model.
STAND_IN_MODELS = {display_path(EMBEDDED_MODEL), str(EMBEDDED_MODEL)}


def family(model: str, model_args: dict[str, Any]) -> str:
    """Which of the four compared approaches a run is, from what it loads."""
    if model == RETRIEVAL_MODEL:
        return "retrieval"
    if model in API_MODELS:
        return "baseline-llm"
    return "finetuned-slm" if any(model_args.get(key) for key in ADAPTER_KEYS) else "baseline-slm"


def record(*, name: str, config: dict[str, Any], shortlist: bool, split: str, data_card: Path | None,
           adapter_dir: Path | None, source_config: str) -> dict[str, Any]:
    """The record of one lm-eval run (``config``: the run config as recorded, paths relative to the checkout)."""
    model_args = config.get("model_args") or {}
    tasks = config.get("tasks") or []
    chooses = any(str(t).startswith(CHOICE_TASK_PREFIX) for t in tasks)
    kind = family(str(config.get("model")), model_args)
    return {
        "name": name, "family": kind, "model_type": config.get("model"),
        "base_model": model_args.get("pretrained") or model_args.get("model"),
        "adapter": next((model_args[k] for k in ADAPTER_KEYS if model_args.get(k)), None),
        "adapter_sha256": adapter_hash(adapter_dir),  # the hash the app's audit log records for it
        "prompt": "none (no model)" if kind == "retrieval" else "shortlist" if shortlist else "plain",
        "scorer": "retrieval ranking" if kind == "retrieval" else
                  "choice by likelihood (per character)" if chooses else "generation, parsed codes",
        # The retriever's fine-tuned query encoder (retrieval runs with --model-arg encoder=DIR).
        "retriever_encoder": model_args.get("encoder") or None if kind == "retrieval" else None,
        "fusion": None, "split": split, "tasks": tasks, "source_config": source_config,
        "data_card_sha256": hashlib.sha256(data_card.read_bytes()).hexdigest()
        if data_card is not None and data_card.is_file() else None,
    }


def fused(base: dict[str, Any], name: str, fusion: dict[str, Any]) -> dict[str, Any]:
    """The record of a fused ranking derived from ``base`` (tools/fuse.py)."""
    return {**base, "name": name, "fusion": fusion, "split": "test"}


def label(rec: dict[str, Any]) -> str:
    """Display name from the record: "Finetuned SLM + shortlist (choice by likelihood, fused with retrieval)"."""
    words = FAMILIES.get(rec.get("family", ""), rec.get("name", "?"))
    if rec.get("family") == "retrieval" and rec.get("retriever_encoder"):
        words = "Retrieval (fine-tuned encoder)"
    if rec.get("family") == "baseline-llm" and rec.get("base_model") in STAND_IN_MODELS:
        words = "Baseline LLM stand-in (the embedded SLM behind the endpoint)"  # make demo: no large model offline
    if rec.get("prompt") == "shortlist":
        words += " + shortlist"
    extra = []
    if str(rec.get("scorer", "")).startswith("choice"):
        extra.append("choice by likelihood")
    if rec.get("fusion"):
        extra.append("fused with retrieval")
    return words + (f" ({', '.join(extra)})" if extra else "")


def write(folder: Path, rec: dict[str, Any]) -> None:
    (folder / RECORD).write_text(json.dumps(rec, indent=2) + "\n")


def read(folder: Path) -> dict[str, Any] | None:
    path = folder / RECORD
    return json.loads(path.read_text()) if path.is_file() else None
