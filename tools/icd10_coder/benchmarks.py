"""The benchmark stages of ``make bench`` (``tools/bench.py`` is the command line): what users pay for.

Each ``bench_*`` function measures one stage and returns a JSON-able dict that says what was measured on
what; ``markdown`` renders them. See ``tools/bench.py`` for the list of stages.
"""

from __future__ import annotations

import csv
import json
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tqdm import tqdm

from icd10_coder.offline import subprocess_env, workspace_env
from icd10_coder.paths import EMBEDDED_MODEL, MEDSYNTH_SAMPLE, REPO_ROOT, display_path
from icd10_coder.workspace import Workspace

TOOLS = REPO_ROOT / "tools"
SEQUENCE_LENS = (2048, 4096, 8192)
TARGET_SHARE = 0.95


# ---------------------------------------------------------------- measuring


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


# ---------------------------------------------------------------- 1. prepare


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """MedSynth-shaped rows; dialogue lengths drawn from the real sample (or its published spread)."""
    from icd10_coder.codes import billable_codes

    rng = random.Random(seed)
    if MEDSYNTH_SAMPLE.is_file():
        lengths = [len(json.loads(line)["Dialogue"]) for line in MEDSYNTH_SAMPLE.read_text().splitlines()]
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


# ---------------------------------------------------------------- 2. token efficiency


def random_batches(lengths: list[int], batch: int, seed: int = 0) -> float:
    order = lengths[:]
    random.Random(seed).shuffle(order)
    return _padded_share([order[i:i + batch] for i in range(0, len(order), batch)])


def length_grouped_batches(lengths: list[int], batch: int, seed: int = 0, mega: int = 50) -> float:
    """Like transformers' LengthGroupedSampler: shuffled megabatches of 50 x batch, each sorted by length."""
    order = lengths[:]
    random.Random(seed).shuffle(order)
    batches = []
    for start in range(0, len(order), batch * mega):
        chunk = sorted(order[start:start + batch * mega], reverse=True)
        batches += [chunk[i:i + batch] for i in range(0, len(chunk), batch)]
    return _padded_share(batches)


def _padded_share(batches: list[list[int]]) -> float:
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
    rows = [json.loads(line)["messages"] for line in train_jsonl.read_text().splitlines()]
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


# ---------------------------------------------------------------- 3. training


def demo_data(work: Path) -> Path:
    """Demo data under work/train-run/data/prepared (where the recipe looks), prepared once."""
    prepared = work / "train-run" / "data" / "prepared"
    if not (prepared / "test.jsonl").is_file():
        subprocess.run([sys.executable, str(TOOLS / "prepare.py"), "--demo", "--tokenizer", "none", "--out",
                        str(prepared)], check=True, capture_output=True, env=subprocess_env(hub_offline=True))
    return prepared


def bench_training(work: Path, steps: int) -> dict[str, Any]:
    demo_data(work)
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


# ---------------------------------------------------------------- 4. evaluation


def bench_eval(work: Path, limit: int) -> dict[str, Any]:
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from icd10_coder.scoring import score_answer

    data = demo_data(work)
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


# ---------------------------------------------------------------- 5. predict


def bench_predict(work: Path) -> dict[str, Any]:
    """Valid-code rate with and without constrained decoding, for the base model and the demo adapter."""
    from icd10_coder.predictor import DEFAULT_ADAPTER, Predictor

    rows = [json.loads(line) for line in (demo_data(work) / "test.jsonl").read_text().splitlines()]
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


# ---------------------------------------------------------------- output


# ---------------------------------------------------------------- 6. retrieval

def bench_retrieval(rows: int, repeats: int = 3) -> dict[str, Any]:
    """Recall and CPU cost of the previous and the default retriever on the dev rows of the real category folds,
    and the default index's size, build time and cost per dialogue at scale."""
    import joblib

    from icd10_coder import retrieval
    from icd10_coder.codes import normalize_code
    from icd10_coder.paths import DENSE_ENCODER
    from icd10_coder.realdata import REAL_FILES, category_folds, load_real_rows
    from icd10_coder.retrieval import RetrievalSettings, Retriever
    from icd10_coder.retrieval_study import VARIANTS, dev_recall

    result: dict[str, Any] = {}
    if all(path.is_file() for path in REAL_FILES):
        folds = category_folds(load_real_rows())
        # The previous retriever and today's default (every variant: make retrieval-study); cold: each pays
        # for its own dense encodings.
        study = dev_recall(folds, {"tfidf (previous default)": VARIANTS["tfidf (previous default)"],
                                   "default (RetrievalSettings())": replace(RetrievalSettings(), neighbours=0)})
        result["real_dev"] = {"rows": sum(len(f.dev) for f in folds),
                              "variants": {name: {"recall": r["pooled"], "s_per_dialogue": r["seconds_per_dialogue"],
                                                  "index_build_s": r["index_build_s"]}
                                           for name, r in study.items()}}
    synthetic = synthetic_rows(min(rows, 300))
    texts = [r["Dialogue"] for r in synthetic]
    train = [(r["Dialogue"], normalize_code(r["ICD10"])) for r in synthetic[: int(len(synthetic) * 0.8)]]
    fits, queries = [], []
    for _ in range(repeats):
        retrieval._code_index.cache_clear()
        retrieval._dense_codes.cache_clear()
        retrieval._DENSE_MEMO.clear()
        started = time.perf_counter()
        retriever = Retriever.fit(RetrievalSettings(), train)
        retriever.shortlist(texts[:1], 10)  # loads the code embeddings
        fits.append(time.perf_counter() - started)
        retrieval._DENSE_MEMO.clear()
        started = time.perf_counter()
        for first in range(0, len(texts), 64):
            retriever.shortlist(texts[first:first + 64], 10)
        queries.append(time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as tmp:
        joblib.dump(retriever, Path(tmp) / "index.joblib")
        index_mb = (Path(tmp) / "index.joblib").stat().st_size / 1e6
    dense_mb = sum(p.stat().st_size for p in DENSE_ENCODER.glob("codes-*.npy")) / 1e6
    result["scale"] = {"dialogues": len(texts), "train_dialogues": len(train), "repeats": repeats,
                       "fit_s_median": round(median(fits), 1), "shortlist_s_median": round(median(queries), 1),
                       "ms_per_dialogue": round(median(queries) / len(texts) * 1000, 1),
                       "index_mb": round(index_mb, 1), "code_embeddings_mb": round(dense_mb, 1),
                       "settings": {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in RetrievalSettings().__dict__.items()}}
    return result


# ---------------------------------------------------------------- 7. approach cost


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def bench_approach_cost(work: Path, dialogues: int, repeats: int = 3) -> dict[str, Any]:
    """Seconds per real dialogue of each approach, through lm-eval as the evaluation runs them (model loaded once)."""
    if not MEDSYNTH_SAMPLE.is_file():
        return {"skipped": f"{MEDSYNTH_SAMPLE} is missing"}
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import icd10_coder.lm_eval_retrieval  # noqa: F401  (registers icd10-retrieval)
    from icd10_coder import choice
    from icd10_coder.lm_eval_choice import PrefixCachedHFLM
    from icd10_coder.lm_eval_retrieval import RetrievalLM

    data = work / "cost" / "prepared-shortlist"
    subprocess.run([sys.executable, str(TOOLS / "prepare.py"), "--source", str(MEDSYNTH_SAMPLE), "--out", str(data),
                    "--unseen-codes", "0.5", "--test-fraction", "0", "--shortlist", "10", "--shortlist-neighbours",
                    "0", "--tokenizer", "none"], check=True, capture_output=True, env=workspace_env(
                        Workspace.at(work / "cost"), hub_offline=True))
    manager = TaskManager(include_path=str(REPO_ROOT / "tasks"), metadata={"data_dir": str(data)})
    # The CPU figures of the demo settings (as the rest of make bench); lm-eval's default device is cuda.
    hf = HFLM(pretrained=str(EMBEDDED_MODEL), dtype="float32", batch_size=1, device="cpu")
    cached = PrefixCachedHFLM(pretrained=str(EMBEDDED_MODEL), dtype="float32", batch_size=1, device="cpu")
    retrieval = RetrievalLM(cache_dir=str(work / "cost" / "retrieval-cache"), neighbours=0)
    plain_data = work / "cost" / "prepared"
    subprocess.run([sys.executable, str(TOOLS / "prepare.py"), "--source", str(MEDSYNTH_SAMPLE), "--out",
                    str(plain_data), "--unseen-codes", "0.5", "--test-fraction", "0", "--tokenizer", "none"],
                   check=True, capture_output=True, env=subprocess_env(hub_offline=True))
    plain_manager = TaskManager(include_path=str(REPO_ROOT / "tasks"), metadata={"data_dir": str(plain_data)})
    runs = {  # name: (model, task, task manager, repeats)
        "retrieval": (retrieval, "icd10_medsynth_unseen", manager, repeats),
        "generate, plain prompt": (hf, "icd10_medsynth_unseen", plain_manager, repeats),
        "generate, shortlist prompt": (hf, "icd10_medsynth_unseen", manager, repeats),
        "choice, lm-eval hf (10 prompt passes)": (hf, "icd10_medsynth_choice_unseen", manager, 1),
        "choice, icd10-hf-choice (1 prompt pass)": (cached, "icd10_medsynth_choice_unseen", manager, repeats),
    }
    result: dict[str, Any] = {"dialogues": dialogues, "settings": "embedded SmolLM2-135M fp32 on CPU, batch 1, "
                              "real MedSynth dialogues with a top-10 shortlist, model loading excluded"}
    for name, (model, task, tasks, times) in runs.items():
        seconds = []
        for _ in range(times):
            started = time.perf_counter()
            lm_eval.simple_evaluate(model=model, tasks=[task], task_manager=tasks, limit=dialogues,
                                    apply_chat_template=True, log_samples=False)
            seconds.append(time.perf_counter() - started)
        result[name] = {"s_per_dialogue": round(median(seconds) / dialogues, 3), "repeats": times}
    ten = range(10)
    rows = [([f"C{i:02d}" for i in ten], [-float(i) for i in ten], [float(10 - i) for i in ten], "C00")] * 1000
    started = time.perf_counter()
    choice.exact_rate(rows, 0.5)
    result["fusion"] = {"s_per_dialogue": round((time.perf_counter() - started) / len(rows), 6), "repeats": 1}
    plain = result["choice, lm-eval hf (10 prompt passes)"]["s_per_dialogue"]
    result["choice_speedup"] = round(plain / result["choice, icd10-hf-choice (1 prompt pass)"]["s_per_dialogue"], 1)
    return result


# ---------------------------------------------------------------- 7b. prompt cost


def bench_prompt_cost(dialogues: int, repeats: int = 3, window_tokens: int = 384) -> dict[str, Any]:
    """Whole dialogue vs evidence window (:mod:`icd10_coder.window`) on real rows with a top-10 shortlist: tokens
    per prompt, seconds per row of one LoRA step (forward + backward + AdamW, rank 16 on every linear layer,
    as recipes/demo-cpu-shortlist.yml) and of scoring the ten candidates (one prompt pass), medians of repeats."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icd10_coder.codes import description
    from icd10_coder.predictor import Predictor, prompt_messages
    from icd10_coder.prompts import render_answer
    from icd10_coder.realdata import read_demo_data
    from icd10_coder.retrieval import RetrievalSettings, Retriever

    rows = read_demo_data()[:dialogues]
    retriever = Retriever.fit(RetrievalSettings(neighbours=0))
    texts = [r["Dialogue"] for r in rows]
    lists = [[code for code, _ in found] for found in retriever.shortlist(texts, 10)]
    prompts = {"whole dialogue": [(t, False) for t in texts],
               f"evidence window ({window_tokens} tokens)": [(retriever.window(t, c, window_tokens), True)
                                                              for t, c in zip(texts, lists, strict=True)]}
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL)
    scorer = Predictor(EMBEDDED_MODEL, None, constrain=False, device="cpu")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    result: dict[str, Any] = {"dialogues": len(rows), "repeats": repeats,
                              "settings": "embedded SmolLM2-135M fp32 on CPU, real demo dialogues, top-10 shortlist"}
    for name, items in prompts.items():
        lengths, train_s, score_s = [], [], []
        for (text, excerpt), candidates, row in zip(items, lists, rows, strict=True):
            gold = row["ICD10"]
            messages = prompt_messages(text, candidates, excerpt) + [
                {"role": "assistant", "content": render_answer(gold, description(gold) or "")}]
            ids = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)["input_ids"]
            lengths.append(int(ids.shape[1]))
            steps = []
            for _ in range(repeats):
                started = time.perf_counter()
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                steps.append(time.perf_counter() - started)
            train_s.append(median(steps))
            passes = []
            for _ in range(repeats):
                started = time.perf_counter()
                scorer.candidate_loglikelihoods(text, candidates, excerpt)
                passes.append(time.perf_counter() - started)
            score_s.append(median(passes))
        result[name] = {"tokens_per_prompt_median": int(median(lengths)), "tokens_per_prompt_max": max(lengths),
                        "lora_s_per_row": round(median(train_s), 2), "scoring_s_per_row": round(median(score_s), 2)}
    return result


# ---------------------------------------------------------------- 8. app


def bench_app(work: Path, real_dialogues: int, adapter_arg: str | None = None,
              base_model: str | None = None) -> dict[str, Any]:
    """What the workbench serves (make demo's choice, or ``adapter_arg``): its calibration (ECE, reliability bins,
    band accuracy) and seconds per suggestion on held-out real dialogues, evidence coverage, search latency."""
    from icd10_coder import calibration
    from icd10_coder.audit import adapter_hash
    from icd10_coder.codes import search
    from icd10_coder.evidence import evidence
    from icd10_coder.predictor import load_suggester
    from icd10_coder.realdata import REAL_FILES, load_real_rows, read_demo_data
    from icd10_coder.workspace import DEMO_WORKSPACE

    splits: dict[str, list[tuple[str, str]]] = {}
    demo_test = Workspace.at(DEMO_WORKSPACE).prepared_shortlist / "test.jsonl"
    if demo_test.is_file():  # the served approach's own held-out test rows
        rows = [json.loads(line) for line in demo_test.read_text().splitlines() if line.strip()]
        splits["demo test"] = [(r["dialogue"], r["gold_code"]) for r in rows]
    if all(path.is_file() for path in REAL_FILES):  # shared real rows the demo never saw (its 100 codes left out)
        embedded = {row["ICD10"] for row in read_demo_data()}
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
            outcomes.append((codes[0]["confidence"] if codes else 0.0, bool(codes) and codes[0]["code"] == gold))
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


def markdown(bench: dict[str, Any]) -> str:
    hw = bench["hardware"]
    lines = [f"# Benchmarks ({bench['generated_at']})", "",
             f"{hw['cpu']}, {hw['cores']} cores, {hw['ram_gib']} GiB, GPU: {hw['gpu'] or 'none'}; "
             + ", ".join(f"{k} {v}" for k, v in hw["versions"].items()), ""]
    if "prepare" in bench:
        p = bench["prepare"]
        lines += [f"- prepare: {p['rows']} rows in {p['seconds']} s = **{p['rows_per_s']} rows/s**, "
                  f"peak {p['peak_rss_gib']} GiB", ""]
    if "tokens" in bench:
        packing_columns = " | ".join(f"packing {s}" for s in SEQUENCE_LENS)
        lines += [f"| token lengths from | random | length-grouped | {packing_columns} | recipe |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in SEQUENCE_LENS) + " | --- |"]
        for name, r in bench["tokens"]["sources"].items():
            s = r["non_padding_share"]
            lines.append(f"| {name} | {s['random']:.3f} | {s['length_grouped']:.3f} | "
                         + " | ".join(f"{s[f'packing_{n}']:.3f}" for n in SEQUENCE_LENS)
                         + f" | {r['recipe_choice']} {r['recipe_share']:.3f} {'✓' if r['meets_target'] else '✗'} |")
        lines.append("")
    if "training" in bench:
        t = bench["training"]
        lines += [f"- training ({t['settings']}): LoRA fp32 **{t['lora_fp32']['tokens_per_s']} tokens/s** "
                  f"(peak {t['lora_fp32']['peak_rss_gib']} GiB), QLoRA 4-bit **{t['qlora_4bit']['tokens_per_s']} "
                  f"tokens/s** (peak {t['qlora_4bit']['peak_rss_gib']} GiB); QLoRA/LoRA {t['qlora_over_lora_speed']}"]
    if "evaluation" in bench:
        e = bench["evaluation"]
        lines += [f"- evaluation: batch 1 {e['batch_1']['samples_per_s']} samples/s, batch 8 "
                  f"{e['batch_8']['samples_per_s']} samples/s (x{e['batch_8_over_batch_1']}); scoring "
                  f"{e['scoring_us_per_sample']} µs/sample"]
    if "predict" in bench:
        p = bench["predict"]
        for name in ("base", "finetuned"):
            if f"{name}_constrained" in p:
                free, constrained = p[f"{name}_unconstrained"], p[f"{name}_constrained"]
                lines.append(f"- predict, {name} model ({p['dialogues']} demo test dialogues, top-1): valid-code rate "
                             f"{free['valid_code_rate']} unconstrained vs **{constrained['valid_code_rate']} "
                             f"constrained**; exact {free['exact_match']} vs {constrained['exact_match']}; "
                             f"{free['dialogues_per_s']} vs {constrained['dialogues_per_s']} dialogues/s")
    if "retrieval" in bench:
        lines += retrieval_markdown(bench["retrieval"])
    if "approach_cost" in bench and "skipped" not in bench["approach_cost"]:
        c = bench["approach_cost"]
        lines += ["", f"CPU cost per real dialogue ({c['settings']}; {c['dialogues']} dialogues):", "",
                  "| approach | s per dialogue | repeats |", "| --- | --- | --- |"]
        lines += [f"| {name} | {v['s_per_dialogue']} | {v['repeats']} |" for name, v in c.items()
                  if isinstance(v, dict)]
        lines.append(f"\nOne prompt pass makes choice by likelihood {c['choice_speedup']}x faster.")
    if "prompt_cost" in bench:
        lines += [""] + prompt_cost_markdown(bench["prompt_cost"])
    if "app" in bench:
        lines += ["", "Workbench (make app):", ""] + app_markdown(bench["app"])
    return "\n".join(lines) + "\n"


def prompt_cost_markdown(c: dict[str, Any]) -> list[str]:
    """The prompt_cost stage as markdown lines (also docs/generated/bench-prompt_cost.md with --docs)."""
    lines = [f"The SLM's prompt, before (whole dialogue) and after (evidence window) ({c['settings']}; "
             f"{c['dialogues']} dialogues, medians of {c['repeats']} repeats):", "",
             "| prompt | tokens per prompt (median / max) | LoRA s per row | scoring s per row |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {v['tokens_per_prompt_median']} / {v['tokens_per_prompt_max']} | {v['lora_s_per_row']} "
              f"| {v['scoring_s_per_row']} |" for name, v in c.items() if isinstance(v, dict)]
    return lines


def app_markdown(a: dict[str, Any]) -> list[str]:
    """The app stage as markdown lines (also docs/generated/bench-app.md with --docs): per split, the served
    approach's calibration, band accuracy, reliability bins and seconds per suggestion; evidence; search."""
    lines = []
    for name, cal in a["calibration"].items():
        if isinstance(cal, dict):
            bands = ", ".join(f"{b} {v['accuracy'] if v['accuracy'] is not None else '–'} (n={v['n']})"
                              for b, v in cal["bands"].items())
            lines.append(f"- calibration on {name} ({cal['n']} dialogues, served: {cal.get('served')}, adapter "
                         f"{cal['adapter']}): ECE {cal['ece']}, top-1 accuracy {cal['accuracy']}; accuracy per "
                         f"band: {bands}; {cal.get('s_per_suggestion_median')} s per suggestion (median)")
            lines.append("  reliability (confidence bin: mean confidence → share right): " + "; ".join(
                f"[{b['range'][0]:.1f}, {b['range'][1]:.1f}) {b['mean_confidence']:.2f} → {b['accuracy']:.2f} "
                f"(n={b['n']})" for b in cal["bins"]))
    for name, ev in a["evidence"].items():
        lines.append(f"- evidence: gold code has a highlighted sentence in {ev['gold_with_evidence']:.0%} of "
                     f"{ev['n']} {name} dialogues")
    lines.append(f"- code search: {a['search_ms_median']} ms per query (median)")
    return lines


def retrieval_markdown(r: dict[str, Any]) -> list[str]:
    """The retrieval stage as markdown lines (also written to docs/generated/bench-retrieval.md with --docs)."""
    lines: list[str] = []
    if "real_dev" in r:
        lines += ["", f"Retriever variants on the dev rows of the real category folds ({r['real_dev']['rows']} "
                  "rows), recall@k of the gold code (category in brackets), CPU seconds per dialogue:", "",
                  "| retriever | @1 | @5 | @10 | @20 | @50 | s / dialogue |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, v in r["real_dev"]["variants"].items():
            code, category = v["recall"]["code"], v["recall"]["category"]
            lines.append(f"| {name} | " + " | ".join(f"{code[k]:.3f} ({category[k]:.3f})" for k in code)
                         + f" | {v['s_per_dialogue']} |")
    sc = r["scale"]
    lines += ["", f"- default retriever: index fit {sc['fit_s_median']} s (code embeddings loaded from the "
              f"cache), shortlist of {sc['dialogues']} dialogues {sc['shortlist_s_median']} s "
              f"({sc['ms_per_dialogue']} ms each; medians of {sc['repeats']}); index {sc['index_mb']} MB + "
              f"code embeddings {sc['code_embeddings_mb']} MB"]
    return lines
