"""Shared by the stages: the machine, a measured subprocess, medians, the embedded rows prepared once."""

from __future__ import annotations

import platform
import random
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from icd10_coder.codes import billable_codes
from icd10_coder.jsonl import read_jsonl
from icd10_coder.offline import subprocess_env, workspace_env
from icd10_coder.paths import MEDSYNTH_SAMPLE, REPO_ROOT
from icd10_coder.workspace import Workspace

TOOLS = REPO_ROOT / "tools"


def hardware() -> dict[str, Any]:
    import psutil
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {
        "cpu": cpu, "cores": psutil.cpu_count(logical=True), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {p: version(p) for p in ("torch", "transformers", "peft", "axolotl", "lm_eval", "bitsandbytes",
                                             "datasets")},
        "python": platform.python_version(),
    }


def run_measured(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GiB, process tree) and output of a command."""
    import psutil

    started = time.perf_counter()
    # The bench's temporary folder is its workspace: axolotl's datasets cache lands there, not in ~/.cache.
    process = subprocess.Popen(command, cwd=cwd, env=workspace_env(Workspace.at(cwd), hub_offline=True),
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    peak = 0

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    output, _ = process.communicate()
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{output[-3000:]}")
    return time.perf_counter() - started, peak / 2**30, output


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def prepared_embedded_rows(work: Path) -> Path:
    """Demo data under work/train-run/data/prepared (where the recipe looks), prepared once."""
    prepared = work / "train-run" / "data" / "prepared"
    if not (prepared / "test.jsonl").is_file():
        subprocess.run([sys.executable, str(TOOLS / "prepare.py"), "--demo", "--tokenizer", "none", "--out",
                        str(prepared)], check=True, capture_output=True, env=subprocess_env(hub_offline=True))
    return prepared


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """MedSynth-shaped rows; dialogue lengths drawn from the real sample (or its published spread)."""

    rng = random.Random(seed)
    if MEDSYNTH_SAMPLE.is_file():
        lengths = [len(r["Dialogue"]) for r in read_jsonl(MEDSYNTH_SAMPLE)]
    else:
        lengths = [int(rng.triangular(2695, 6396, 4494)) for _ in range(200)]
    codes = rng.sample(billable_codes(), n // 5 + 1)
    words = ("pain fever cough since week left right knee chest breath tired sleep medication dose morning night "
             "worse better days swelling nausea history blood pressure sugar test results follow up").split()
    rows = []
    for i in range(n):
        target = rng.choice(lengths)
        turns, size = [], 0
        while size < target:
            speaker = "[doctor]:" if len(turns) % 2 == 0 else "[patient]:"
            turn = f"{speaker} " + " ".join(rng.choice(words) for _ in range(rng.randint(8, 30))).capitalize() + "."
            turns.append(turn)
            size += len(turn)
        rows.append({" Note": "", "Dialogue": "".join(turns), "ICD10": codes[i // 5].replace(".", ""),
                     "ICD10_desc": ""})
    return rows
