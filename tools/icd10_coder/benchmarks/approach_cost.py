"""Stages 7 and 7b: seconds per dialogue of each approach; whole dialogue vs evidence window."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from icd10_coder import choice
from icd10_coder.benchmarks.common import TOOLS, median
from icd10_coder.codes import description
from icd10_coder.offline import subprocess_env, workspace_env
from icd10_coder.paths import EMBEDDED_MODEL, MEDSYNTH_SAMPLE, REPO_ROOT
from icd10_coder.predictor import Predictor, prompt_messages
from icd10_coder.prompts import render_answer
from icd10_coder.realdata import read_embedded_rows
from icd10_coder.retrieval import RetrievalSettings, Retriever
from icd10_coder.workspace import Workspace


def bench_approach_cost(work: Path, dialogues: int, repeats: int = 3) -> dict[str, Any]:
    """Seconds per real dialogue of each approach, through lm-eval as the evaluation runs them (model loaded once)."""
    if not MEDSYNTH_SAMPLE.is_file():
        return {"skipped": f"{MEDSYNTH_SAMPLE} is missing"}
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # Lazy on purpose: these modules import lm-eval (and through it torch) at their top; importing
    # RetrievalLM also registers icd10-retrieval.
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


def bench_prompt_cost(dialogues: int, repeats: int = 3, window_tokens: int = 384) -> dict[str, Any]:
    """Whole dialogue vs evidence window (:mod:`icd10_coder.window`) on real rows with a top-10 shortlist: tokens
    per prompt, seconds per row of one LoRA step (forward + backward + AdamW, rank 16 on every linear layer,
    as recipes/demo-cpu-shortlist.yml) and of scoring the ten candidates (one prompt pass), medians of repeats."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = read_embedded_rows()[:dialogues]
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
