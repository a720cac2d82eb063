"""Which retriever finds the code: recall of retriever variants on the dev rows of the real category folds.

Every variant is a :class:`RetrievalSettings`; none uses training dialogues (``neighbours=0``):
a code never trained on cannot be found among training dialogues. The variants are scored on the
**dev** split of each category fold (:mod:`icd10_coder.realdata`), never on test rows; the
experiment picks each fold's retriever on that fold's dev rows, and the project's default is the
variant with the best pooled dev recall@10 (``tools/retrieval_study.py`` writes the table).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from icd10_coder import retrieval
from icd10_coder.predictor import Predictor
from icd10_coder.prompts import render_diagnosis_question
from icd10_coder.realdata import Fold, RealRow
from icd10_coder.retrieval import VIEWS, RetrievalSettings, Retriever, rank_fusion, recall_at

KS = (1, 5, 10, 20, 50)
# Name -> settings, each spelled out from the TF-IDF retriever that came before this study (two code views,
# the whole dialogue as the query), so a change of RetrievalSettings' defaults never changes a variant.
PREVIOUS = RetrievalSettings(views=VIEWS, neighbours=0, query_parts=("whole",), part_weight=1.0, dense_weight=0.0,
                             category_weight=0.0)
VARIANTS: dict[str, RetrievalSettings] = {
    "tfidf (previous default)": PREVIOUS,
    "tfidf, description view only": replace(PREVIOUS, views=("description",)),
    "tfidf + doctor's turns": replace(PREVIOUS, query_parts=("whole", "doctor")),
    "tfidf + cue sentences": replace(PREVIOUS, query_parts=("whole", "cues")),
    "tfidf + cue sentences x2": replace(PREVIOUS, query_parts=("whole", "cues"), part_weight=2.0),
    "tfidf on cue sentences only": replace(PREVIOUS, query_parts=("cues",)),
    "tfidf + categories first (hierarchical)": replace(PREVIOUS, category_weight=1.0),
    "dense (MiniLM) alone": replace(PREVIOUS, views=(), dense_weight=1.0),
    "tfidf + dense": replace(PREVIOUS, dense_weight=1.0),
    "tfidf + dense x2": replace(PREVIOUS, dense_weight=2.0),
    "tfidf + cue sentences + dense": replace(PREVIOUS, query_parts=("whole", "cues"), dense_weight=1.0),
    "tfidf + cue sentences + dense x2": replace(PREVIOUS, query_parts=("whole", "cues"), dense_weight=2.0),
    "tfidf + cue sentences + dense + categories": replace(PREVIOUS, query_parts=("whole", "cues"),
                                                          dense_weight=1.0, category_weight=1.0),
}


def rankings(retriever: Retriever, rows: list[RealRow], k: int = max(KS), batch: int = 64) -> dict[str, list[str]]:
    """Row id -> the retriever's top ``k`` codes."""
    ranked: dict[str, list[str]] = {}
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        for row, found in zip(chunk, retriever.shortlist([r.dialogue for r in chunk], k), strict=True):
            ranked[row.row_id] = [code for code, _ in found]
    return ranked


def dev_recall(folds: list[Fold], variants: dict[str, RetrievalSettings] = VARIANTS,
               progress: Any = None, cold: bool = True) -> dict[str, Any]:
    """Recall@1/5/10/20/50 (code and category) of each variant on every fold's dev rows, pooled and per fold,
    with the seconds per dialogue (index build excluded) and the index build time.

    ``cold``: forget the dense encodings between variants, so each variant's time includes its own encoding
    (honest costs, slower); off, variants share the dialogues' encodings (same rankings)."""

    dev_rows = {row.row_id: row for fold in folds for row in fold.dev}
    results: dict[str, Any] = {}
    for name, settings in variants.items():
        if cold:
            retrieval.clear_caches(dialogues_only=True)
        built = time.perf_counter()
        retriever = Retriever.fit(settings)
        build_s = time.perf_counter() - built
        started = time.perf_counter()
        ranked = rankings(retriever, list(dev_rows.values()))
        per_dialogue = (time.perf_counter() - started) / max(1, len(dev_rows))
        pooled_rows = [row for fold in folds for row in fold.dev]
        pooled = recall_at([ranked[r.row_id] for r in pooled_rows], [r.code for r in pooled_rows], KS)
        by_fold = {fold.index: recall_at([ranked[r.row_id] for r in fold.dev], [r.code for r in fold.dev], KS)
                   for fold in folds if fold.dev}
        results[name] = {"settings": settings.as_record(), "pooled": pooled, "by_fold": by_fold,
                         "seconds_per_dialogue": round(per_dialogue, 4), "index_build_s": round(build_s, 1)}
        if progress:
            progress(name, results[name])
    return results


def best_variant(results: dict[str, Any], k: int = 10, fold: int | None = None) -> str:
    """The variant with the best code recall@k (pooled, or on one fold's dev rows); ties: recall@1, then
    the earlier (simpler) variant."""
    def key(item: tuple[int, str]) -> tuple[float, float, int]:
        position, name = item
        scores = results[name]["pooled"] if fold is None else results[name]["by_fold"][fold]
        return (scores["code"][k], scores["code"][1], -position)

    return max(enumerate(results), key=key)[1]


def markdown_table(results: dict[str, Any], chosen: str) -> str:
    """The pooled dev recall table: code recall (category recall in brackets) per depth, one row per variant,
    the chosen default in bold."""
    lines = ["| variant | recall@1 | @5 | @10 | @20 | @50 | s / dialogue |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, result in results.items():
        code, category = result["pooled"]["code"], result["pooled"]["category"]
        label = f"**{name}** (default)" if name == chosen else name
        lines.append(f"| {label} | " + " | ".join(f"{code[k]:.3f} ({category[k]:.3f})" for k in KS)
                     + f" | {result['seconds_per_dialogue']:.2f} |")
    return "\n".join(lines)


def diagnosis_phrases(dialogues: list[str], model_dir: Any, max_new_tokens: int = 16) -> tuple[list[str], float]:
    """The SLM's few-word diagnosis for each dialogue (greedy; ``prompts/diagnosis_phrase.j2``), and the
    seconds it took per dialogue."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    phrases = []
    started = time.perf_counter()
    for dialogue in tqdm(dialogues, desc="SLM diagnosis phrase", unit="dialogue"):
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": render_diagnosis_question(dialogue)}],
                                               add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        phrase = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        phrases.append(phrase.strip().split("\n")[0])
    return phrases, (time.perf_counter() - started) / max(1, len(dialogues))


def rewrite_recall(rows: list[RealRow], base: RetrievalSettings, model_dir: Any,
                   weight: float = 1.0) -> dict[str, Any]:
    """Recall of ``base`` alone and combined (reciprocal rank, ``weight``) with a ranking of the SLM's diagnosis
    phrase (TF-IDF + dense over the code texts), on the same rows."""

    phrases, seconds = diagnosis_phrases([r.dialogue for r in rows], model_dir)
    alone = rankings(Retriever.fit(base), rows, k=100)
    phrase_retriever = Retriever.fit(replace(PREVIOUS, dense_weight=1.0))
    by_phrase = phrase_retriever.shortlist([p or r.dialogue for p, r in zip(phrases, rows, strict=True)], 100)
    with_phrase = [[code for code, _ in rank_fusion([(1.0, alone[row.row_id]), (weight, [c for c, _ in ranked])],
                                                     max(KS))]
                   for row, ranked in zip(rows, by_phrase, strict=True)]
    gold = [r.code for r in rows]
    return {"rows": len(rows), "slm_seconds_per_dialogue": round(seconds, 2),
            "examples": [{"gold": r.code, "phrase": p} for r, p in list(zip(rows, phrases, strict=True))[:8]],
            "base": recall_at([alone[r.row_id] for r in rows], gold, KS),
            "phrase_alone": recall_at([[c for c, _ in found] for found in by_phrase], gold, KS),
            "with_phrase": recall_at(with_phrase, gold, KS)}


def choice_cost(rows: list[RealRow], settings: RetrievalSettings, model_dir: Any) -> dict[str, Any]:
    """Median seconds of the choice step (one prompt pass, all candidates scored) with K = 10 and K = 20."""
    import statistics

    predictor = Predictor(model_dir, None, constrain=False, device="cpu")
    lists = Retriever.fit(settings).shortlist([r.dialogue for r in rows], 20)
    seconds: dict[int, list[float]] = {10: [], 20: []}
    for row, found in zip(rows, lists, strict=True):
        for k in (10, 20):
            started = time.perf_counter()
            predictor.candidate_loglikelihoods(row.dialogue, [code for code, _ in found[:k]])
            seconds[k].append(time.perf_counter() - started)
    return {"rows": len(rows), "seconds_k10": round(statistics.median(seconds[10]), 2),
            "seconds_k20": round(statistics.median(seconds[20]), 2)}
