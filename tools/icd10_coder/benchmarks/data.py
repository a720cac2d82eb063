"""Stages 1-2: prepare on synthetic rows; token efficiency (padding vs packing) of the prepared prompts."""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from icd10_coder.benchmarks.common import TOOLS, run_measured, synthetic_rows
from icd10_coder.jsonl import read_jsonl
from icd10_coder.offline import subprocess_env
from icd10_coder.paths import EMBEDDED_MODEL, MEDSYNTH_SAMPLE, REPO_ROOT
from icd10_coder.workspace import Workspace

SEQUENCE_LENS = (2048, 4096, 8192)


TARGET_SHARE = 0.95


def bench_prepare(rows: int, work: Path) -> dict[str, Any]:
    source = work / "synthetic.csv"
    with source.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[" Note", "Dialogue", "ICD10", "ICD10_desc"])
        writer.writeheader()
        writer.writerows(synthetic_rows(rows))
    seconds, peak, _ = run_measured([sys.executable, str(TOOLS / "prepare.py"), "--source", str(source), "--out",
                                     str(work / "prepared-10k"), "--tokenizer", str(EMBEDDED_MODEL)], work)
    return {"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds, 1),
            "peak_rss_gib": round(peak, 2), "settings": "tools/prepare.py defaults, token lengths with the embedded "
                                                          "tokenizer, dialogues of the MedSynth sample's lengths"}


def random_batches(lengths: list[int], batch: int, seed: int = 0) -> float:
    order = lengths[:]
    random.Random(seed).shuffle(order)
    return padded_share([order[i:i + batch] for i in range(0, len(order), batch)])


def length_grouped_batches(lengths: list[int], batch: int, seed: int = 0, mega: int = 50) -> float:
    """Like transformers' LengthGroupedSampler: shuffled megabatches of 50 x batch, each sorted by length."""
    order = lengths[:]
    random.Random(seed).shuffle(order)
    batches = []
    for start in range(0, len(order), batch * mega):
        chunk = sorted(order[start:start + batch * mega], reverse=True)
        batches += [chunk[i:i + batch] for i in range(0, len(chunk), batch)]
    return padded_share(batches)


def padded_share(batches: list[list[int]]) -> float:
    return sum(sum(b) for b in batches) / sum(len(b) * max(b) for b in batches)


def packed(lengths: list[int], sequence_len: int) -> float:
    """First-fit-decreasing packing into bins of sequence_len (what multipack approximates)."""
    bins: list[int] = []
    for length in sorted((min(x, sequence_len) for x in lengths), reverse=True):
        for i, used in enumerate(bins):
            if used + length <= sequence_len:
                bins[i] += length
                break
        else:
            bins.append(length)
    return sum(min(x, sequence_len) for x in lengths) / (len(bins) * sequence_len)


def token_lengths_of(train_jsonl: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL)
    rows = [r["messages"] for r in read_jsonl(train_jsonl)]
    return [len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"]) for m in rows]


def bench_tokens(work: Path, batch: int) -> dict[str, Any]:
    import yaml

    recipe = yaml.safe_load((REPO_ROOT / "recipes" / "qlora.yml").read_text())
    sources = {}
    if MEDSYNTH_SAMPLE.is_file():
        subprocess.run([sys.executable, str(TOOLS / "prepare.py"), "--source", str(MEDSYNTH_SAMPLE), "--out",
                        str(work / "sample"), "--tokenizer", "none", "--val-fraction", "0", "--test-fraction", "0"],
                       check=True, capture_output=True, env=subprocess_env(hub_offline=True))
        sources["medsynth_sample (121 real rows)"] = token_lengths_of(work / "sample" / "train.jsonl")
    real = Workspace.real().prepared / "train.jsonl"
    if real.is_file():  # read only: the real run's prepared data, when there is one
        sources["data/prepared/train.jsonl"] = token_lengths_of(real)
    results = {}
    for name, lengths in sources.items():
        shares = {"random": random_batches(lengths, batch), "length_grouped": length_grouped_batches(lengths, batch)}
        shares |= {f"packing_{s}": packed(lengths, s) for s in SEQUENCE_LENS}
        chosen = f"packing_{recipe['sequence_len']}" if recipe.get("sample_packing") else \
            "length_grouped" if recipe.get("group_by_length") else "random"
        results[name] = {"rows": len(lengths), "tokens_p50": sorted(lengths)[len(lengths) // 2],
                         "tokens_max": max(lengths), "non_padding_share": {k: round(v, 4) for k, v in shares.items()},
                         "recipe_choice": chosen, "recipe_share": round(shares[chosen], 4),
                         "meets_target": shares[chosen] >= TARGET_SHARE}
    return {"micro_batch_size": batch, "target": TARGET_SHARE, "sources": results}
