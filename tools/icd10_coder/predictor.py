"""Dialogue in, ranked ICD-10-CM codes out: the one predictor behind ``tools/predict.py`` and the app.

This module scores; :mod:`icd10_coder.loading` picks and loads the served model and
:mod:`icd10_coder.dialogue_input` checks what a user hands in.

Same prompt templates, dialogue clean-up and answer parser as training and evaluation.
With ``constrain`` decoding may only start with a real billable ICD-10-CM code; beam search
gives the ranked alternatives (the first code of each beam). Each code gets its **beam share**:
the share of the beams' probability mass (softmax over the beams' sequence scores) whose
answer starts with it — not calibrated, so it is never called a confidence nor given a band.
Only choice by likelihood (:meth:`Predictor.choose`) gives a **confidence**: the calibrated
probability (``choice.score_shortlist``) that a code is the right one, which the bands apply to.
With a shortlist, each code also gets its **shortlist probability**:
the model's likelihood of its answer line, normalised over the shortlist (the choice task's
scores, ``icd10_coder.choice``). On a GPU the model runs in bf16 (fp16 on T4/V100);
:class:`VllmPredictor` hands large batches to vLLM.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from icd10_coder.calibration import NOT_SURE, band
from icd10_coder.choice import (
    PromptOpenings,
    Scoring,
    answer_lines,
    continuation_loglikelihoods,
    score_shortlist,
    split_continuations,
)
from icd10_coder.codes import description, hierarchy, validity
from icd10_coder.dialogue import clean_dialogue
from icd10_coder.dialogue_input import PredictionError
from icd10_coder.parsing import extract_codes
from icd10_coder.prompts import chat_messages, prompt_openings
from icd10_coder.retrieval import RetrievalSettings, load_or_fit, read_training_pairs
from icd10_coder.serving import served_by

# Beams searched even when fewer codes are asked for: the beam shares need alternatives.
MIN_BEAMS = 3


MAX_NEW_TOKENS = 48


def pick_dtype(device: str):
    """fp32 on the CPU; bf16 on GPUs that have it (Ampere+), else fp16 (T4, V100)."""
    import torch

    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def code_entry(rank: int, code: str, confidence: float | None) -> dict[str, Any]:
    """One ranked code as predict and the app show it: description, validity, place in the hierarchy, and its
    ``confidence`` (a calibrated probability; None where there is none)."""

    place = hierarchy(code)
    return {"rank": rank, "code": code, "description": description(code), "validity": validity(code),
            "billable": validity(code) == "billable",
            "path": [place.chapter, place.block, place.category] if place else [],
            "confidence": None if confidence is None else round(confidence, 4)}


def rank_codes(answers: list[str], top_k: int, beam_probabilities: list[float] | None = None) -> dict[str, Any]:
    """Answers best first (beams, or one answer with alternatives) -> ranked unique codes with descriptions.

    ``beam_probabilities`` (one per answer, summing to 1) give each code its ``beam_share``: the
    probability mass of the answers that start with it (0 for a code only named as an alternative).
    Not calibrated: ``confidence`` stays None.
    """

    ranked: list[str] = []
    mass: dict[str, float] = {}
    for index, answer in enumerate(answers):  # keep each answer's codes in order
        codes = extract_codes(answer)
        for code in codes:
            if code not in ranked:
                ranked.append(code)
        if codes and beam_probabilities:
            mass[codes[0]] = mass.get(codes[0], 0.0) + beam_probabilities[index]
    return {"codes": [{**code_entry(rank, code, None),
                       "beam_share": round(mass.get(code, 0.0), 4) if beam_probabilities else None}
                      for rank, code in enumerate(ranked[:top_k], 1)],
            "raw_answer": answers[0] if answers else ""}


def prompt_messages(dialogue: str, candidates: list[str] | None = None, excerpt: bool = False) -> list[dict[str, str]]:
    """The chat prompt for a dialogue (or, with ``excerpt``, its evidence window) and shortlist."""

    cleaned = clean_dialogue(dialogue)
    if not cleaned:
        raise PredictionError("the dialogue is empty")
    return chat_messages(cleaned, candidates=candidates, excerpt=excerpt)


class Shortlister:
    """The retrieval shortlist an adapter was trained with, for the same prompts at prediction time."""

    def __init__(self, k: int, train_jsonl: Path | None, cache_dir: Path, settings: dict[str, Any] | None = None,
                 window_tokens: int = 0):
        """``settings``: the retriever record the adapter was trained with (``icd10_prompt.json``); None: defaults.
        ``window_tokens``: the prompts show evidence windows of this budget (0: the whole dialogue)."""

        self.settings = RetrievalSettings.from_record(settings)
        pairs = read_training_pairs(train_jsonl) if train_jsonl and train_jsonl.is_file() else None
        self.k = k
        self.window_tokens = window_tokens
        self.retriever = load_or_fit(cache_dir, self.settings, pairs if self.settings.neighbours else None)

    def __call__(self, dialogues: list[str]) -> list[list[tuple[str, float]]]:

        return self.retriever.shortlist([clean_dialogue(d) for d in dialogues], self.k)

    def prompt_texts(self, dialogues: list[str], lists: list[list[tuple[str, float]]]) -> list[str]:
        """What each prompt shows: the evidence window for its shortlist, or the dialogue itself."""

        if not self.window_tokens:
            return dialogues
        return [self.retriever.window(clean_dialogue(d), [code for code, _ in ranked], self.window_tokens)
                for d, ranked in zip(dialogues, lists, strict=True)]


class Predictor:
    """Base model (+ optional LoRA adapter) with the project's prompt and parser, on CPU or GPU."""

    def __init__(self, base_model: Path | str, adapter: Path | None, constrain: bool, device: str = "cpu"):
        import torch  # noqa: F401  (loaded before transformers picks a device)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(adapter or base_model)
        self.tokenizer.padding_side = "left"  # batched generation: every prompt ends where answers start
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=pick_dtype(device))
        if adapter is not None:
            from peft import PeftModel

            # Serving only: merged weights skip the adapter's extra matmuls (measured on 2 cores, 10 real dialogues:
            # 1.63 -> 1.35 s a suggestion, the same probabilities to 4 decimals).
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        self.model = model.to(device).eval()
        self.constraint = None
        if constrain:
            from icd10_coder.constrained import CodePrefixConstraint  # lazy on purpose: imports torch

            self.constraint = CodePrefixConstraint(self.tokenizer)

    @cached_property
    def openings(self) -> PromptOpenings:
        """The prompt openings' key/value caches: each shortlist prompt then runs only from its dialogue on."""
        return PromptOpenings.compute(self.model, prompt_openings(self.tokenizer), self.device)

    def predict(self, dialogue: str, top_k: int) -> dict[str, Any]:
        return self.predict_batch([dialogue], top_k)[0]

    def choose(self, dialogue: str, shortlist: list[tuple[str, float]], scoring: Scoring, top_k: int,
               excerpt: bool = False) -> dict[str, Any]:
        """Choice by likelihood, the served default: one prompt pass scores every shortlist candidate's answer
        line, fused with the retriever's score and turned into a calibrated probability by the scorer
        (``choice.score_shortlist``, as fuse scored the evaluated approach). No generation. ``excerpt``:
        ``dialogue`` is the evidence window the approach was evaluated with."""

        candidates = [code for code, _ in shortlist]
        scores = self.candidate_loglikelihoods(dialogue, candidates, excerpt)
        scored = score_shortlist(candidates, [total for total, _ in scores], [score for _, score in shortlist],
                                 scoring, token_counts=[n for _, n in scores])
        codes = [{**code_entry(rank, item.code, item.probability), "fused_score": item.fused}
                 for rank, item in enumerate(scored[:top_k], 1)]
        top = codes[0]["confidence"] if codes else None
        return {"codes": codes, "raw_answer": "", "scored_by": "choice by likelihood, fused with retrieval",
                "band": band(top), "not_sure": band(top) == NOT_SURE}

    def predict_batch(self, dialogues: list[str], top_k: int, candidates: list[list[str]] | None = None,
                      excerpt: bool = False) -> list[dict[str, Any]]:
        """Beam search over a left-padded batch; the beams of each dialogue give its ranked codes and their
        beam shares; with ``candidates``, each code also gets its probability over the shortlist. ``excerpt``:
        the dialogues are evidence windows."""
        import torch

        shortlists = candidates or [None] * len(dialogues)
        inputs = self.tokenizer.apply_chat_template([prompt_messages(d, c, excerpt)
                                                     for d, c in zip(dialogues, shortlists, strict=True)],
                                                    add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True, padding=True).to(self.device)
        prompt_length = inputs["input_ids"].shape[1]
        beams = max(MIN_BEAMS, top_k)
        with torch.no_grad():
            output = self.model.generate(
                **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=beams,
                num_return_sequences=beams, pad_token_id=self.tokenizer.pad_token_id,
                output_scores=True, return_dict_in_generate=True,
                prefix_allowed_tokens_fn=self.constraint.hook(prompt_length) if self.constraint else None)
        answers = [self.tokenizer.decode(seq[prompt_length:], skip_special_tokens=True).strip()
                   for seq in output.sequences]
        # Length-normalised beam log-probabilities -> a distribution over each dialogue's beams.
        probabilities = torch.softmax(output.sequences_scores.float().view(len(dialogues), beams), dim=-1).tolist()
        results = [rank_codes(answers[i * beams:(i + 1) * beams], top_k, probabilities[i])
                   for i in range(len(dialogues))]
        for result, dialogue, shortlist in zip(results, dialogues, shortlists, strict=True):
            if shortlist:
                over_list = self.shortlist_probabilities(dialogue, shortlist, excerpt)
                for code in result["codes"]:
                    code["shortlist_probability"] = round(over_list.get(code["code"], 0.0), 4)
        return results

    def shortlist_probabilities(self, dialogue: str, candidates: list[str], excerpt: bool = False) -> dict[str, float]:
        """P(answer line | prompt) of each candidate, renormalised over the shortlist (a softmax of the summed
        log-likelihoods: a probability, where the choice task's per-character scores only rank)."""
        import torch

        scores = self.candidate_loglikelihoods(dialogue, candidates, excerpt)
        probabilities = torch.softmax(torch.tensor([total for total, _ in scores]), dim=-1).tolist()
        return dict(zip(candidates, probabilities, strict=True))

    def candidate_loglikelihoods(self, dialogue: str, candidates: list[str],
                                 excerpt: bool = False) -> list[tuple[float, int]]:
        """(summed log-likelihood, token count) of each candidate's answer line after the shortlist prompt: the
        choice task's numbers, from one prompt pass (``choice.continuation_loglikelihoods``). ``excerpt``:
        ``dialogue`` is an evidence window."""

        prompt = self.tokenizer.apply_chat_template(prompt_messages(dialogue, candidates, excerpt),
                                                    add_generation_prompt=True, tokenize=False)
        context, lines = split_continuations(lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"],
                                             prompt, answer_lines(candidates))
        scores = continuation_loglikelihoods(self.model, context, lines, self.device, self.openings)
        return [(total, len(tokens)) for (total, _), tokens in zip(scores, lines, strict=True)]


class VllmPredictor:
    """The same prompt and parser through vLLM (GPU, large batches): greedy answers, no constrained decoding."""

    def __init__(self, base_model: Path | str, adapter: Path | None):
        if importlib.util.find_spec("vllm") is None:
            raise PredictionError("--engine vllm needs vLLM, which has its own environment: on a CUDA machine "
                                  "run `make vllm-env`, then `.venv-vllm/bin/python tools/predict.py "
                                  "--engine vllm ...`")
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        rank = json.loads((adapter / "adapter_config.json").read_text())["r"] if adapter else None
        self.llm = LLM(model=str(base_model), enable_lora=adapter is not None, max_lora_rank=rank or 16,
                       max_model_len=4096, seed=42)
        self.params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
        self.lora = LoRARequest("adapter", 1, str(adapter)) if adapter else None

    def predict_batch(self, dialogues: list[str], top_k: int, candidates: list[list[str]] | None = None,
                      excerpt: bool = False) -> list[dict[str, Any]]:
        shortlists = candidates or [None] * len(dialogues)
        outputs = self.llm.chat([prompt_messages(d, c, excerpt) for d, c in zip(dialogues, shortlists, strict=True)],
                                self.params, lora_request=self.lora, use_tqdm=False)
        return [rank_codes([output.outputs[0].text.strip()], top_k) for output in outputs]


@dataclass
class Suggester:
    """A loaded model and, when its adapter was trained on shortlist prompts, the shortlist for its prompts."""

    predictor: Predictor | VllmPredictor
    shortlister: Shortlister | None
    base_model: str
    adapter: Path | None
    scoring: Scoring | None = None  # set: choice by likelihood + fusion (the served default); None: generation
    record: dict[str, Any] | None = None  # the scoring record it was loaded from (serving.json / icd10_scoring.json)
    not_evaluated: str | None = None  # set when served with settings other than the record's (--force): says which

    @property
    def chooses(self) -> bool:
        return self.scoring is not None and self.shortlister is not None and isinstance(self.predictor, Predictor)

    def suggest(self, dialogues: list[str], top_k: int) -> list[dict[str, Any]]:
        """Ranked codes per dialogue (see :func:`rank_codes`), with the shortlist when one is used."""
        lists = self.shortlister(dialogues) if self.shortlister else None
        codes = [[code for code, _ in ranked] for ranked in lists] if lists else None
        excerpt = bool(self.shortlister and self.shortlister.window_tokens)
        texts = self.shortlister.prompt_texts(dialogues, lists) if self.shortlister else dialogues
        if self.chooses:
            results = [self.predictor.choose(text, shortlist, self.scoring, top_k, excerpt)
                       for text, shortlist in zip(texts, lists, strict=True)]
        else:
            results = self.predictor.predict_batch(texts, top_k, codes, excerpt)
        for index, result in enumerate(results):
            if self.record is not None and self.chooses:
                result["served_by"] = served_by(self.record)
            if self.not_evaluated:
                result["not_evaluated"] = self.not_evaluated
            if lists:
                result["shortlist"] = [{"code": code, "description": description(code), "score": score}
                                       for code, score in lists[index]]
        return results


