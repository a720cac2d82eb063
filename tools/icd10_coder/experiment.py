"""The real-data experiment (``make experiment-real``): category folds, choices on dev, test scored once.

Protocol, per category fold of every shared real row (:mod:`icd10_coder.realdata`; a fold's held-out
siblings are trained on: there is one test condition, unseen categories):

1. **dev stage** — the retriever's query encoder fine-tuned on every training row of the fold
   (``recipes/encoder-cpu.yml``); the retriever variants (zero-shot and fine-tuned encoder) scored on
   every dev row: the best fine-tuned variant by dev exact match is the approach "Retrieval (fine-tuned
   encoder)", the best variant by dev recall@K makes the SLM's shortlists; the prompt (evidence window
   or whole dialogue) by the zero-shot SLM's choice exact match on dev rows; the LoRA trained on
   ``lora_rows`` training rows with the gold code on every training list
   (``recipes/demo-cpu-shortlist.yml``); then for the zero-shot and the finetuned SLM the score
   normalisation and the fusion weight on ``slm_dev_rows`` of the fold's dev rows (the CPU budget: every
   SLM-scored row costs ~3 s a model); the best model approach on the pooled SLM dev rows.
   Every choice is written to ``choices.json`` with the split it was made on.
2. **test stage** — only now are the fold's test rows taken: both retrieval approaches rank every test
   row; the SLM approaches score ``slm_test_rows`` of them, once, with the choices above.

The SLM-scored dev rows are a subsample because of the CPU budget; ``rechoose_on_every_dev_row`` makes the
SLMs' choices of a finished run again on every dev row with the same fold models (no test row taken, the
test rows' recorded scores ranked anew).

The journal (``journal.jsonl``) records each time a split's rows are taken out of a fold and how long
each stage took; a test checks that no test row is taken before the choices are written.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from icd10_coder import choice
from icd10_coder.approach import label as approach_label
from icd10_coder.codes import validity
from icd10_coder.jsonl import append_jsonl, read_jsonl, write_jsonl
from icd10_coder.paths import REPO_ROOT, display_path, private_folder
from icd10_coder.realdata import Fold, RealRow, category_folds, subsample
from icd10_coder.records import gold_on_list, training_record
from icd10_coder.retrieval import RetrievalSettings, Retriever, recall_at
from icd10_coder.scoring import score_codes
from icd10_coder.stats import holm, mcnemar, wilson
from icd10_coder.workspace import Workspace

MODELS = ("baseline", "finetuned")
RETRIEVAL_APPROACHES = ("retrieval", "retrieval-encoder")
APPROACHES = (*RETRIEVAL_APPROACHES, "baseline-choice", "baseline-fused", "finetuned-choice", "finetuned-fused")
MODEL_APPROACHES = APPROACHES[2:]
# What each compared approach is, as the report's approach records say it (one labelling: approach.label).
RECORDS = {"retrieval": {"family": "retrieval"},
           "retrieval-encoder": {"family": "retrieval", "retriever_encoder": "per fold"},
           **{f"{model}-{how}": {"family": f"{model}-slm", "prompt": "shortlist", "scorer": "choice by likelihood",
                                 "fusion": {"with": "retrieval"} if how == "fused" else None}
              for model in MODELS for how in ("choice", "fused")}}
LABELS = {name: approach_label(record) for name, record in RECORDS.items()}
TABLES = {"every": "every test row (retrieval approaches)", "slm": "test rows scored by every approach"}
PROMPTS = ("window", "whole")  # the evidence window (icd10_coder.window) or the whole dialogue
ZERO_SHOT = "default retriever (zero-shot encoder)"
TARGET_POINTS = 0.05  # the fine-tuned approach must beat Retrieval by this much exact match (and Holm p < 0.05)


def retriever_variants(encoder: str) -> dict[str, RetrievalSettings]:
    """The retrievers a fold chooses among on dev: today's default (zero-shot encoder) and the same with the
    fold's fine-tuned query encoder, at the default and a higher dense weight, and the fine-tuned encoder alone."""
    base = RetrievalSettings(neighbours=0)
    tuned = replace(base, encoder=encoder)
    return {ZERO_SHOT: base,
            "default retriever, fine-tuned encoder": tuned,
            "default retriever, fine-tuned encoder, dense x4": replace(tuned, dense_weight=4.0),
            "fine-tuned encoder alone (dense)": replace(tuned, views=(), query_parts=("whole",), dense_weight=1.0)}


@dataclass(frozen=True)
class Settings:
    """Everything that sizes a run; written into ``choices.json`` and under the tables."""

    folds: int = 3
    seed: int = 0
    dev_share: float = 0.10  # of all categories: ~155 dev rows per fold, every one used for every choice
    lora_rows: int | None = 300  # training rows the LoRA learns from per fold (the encoder: every row)
    dev_rows: int | None = None  # None: every dev row (the encoder's evaluation and the retriever choices)
    slm_dev_rows: int | None = 60  # of those, the rows the SLMs score for their choices (None: all; ~3 s a row)
    prompt_choice_rows: int | None = 20  # dev rows per fold on which the zero-shot SLM compares the two prompts
    slm_test_rows: int | None = 270  # test rows per fold the SLM approaches score (retrieval: every test row)
    shortlist_k: int = 10
    window_tokens: int = 384
    epochs: int = 1
    max_steps: int | None = None
    encoder_epochs: float = 1.0
    recipe: str = "recipes/demo-cpu-shortlist.yml"
    encoder_recipe: str = "recipes/encoder-cpu.yml"
    retrieval_only: bool = False  # the encoder and both retrieval approaches only: no SLM trained or scored

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Settings:
        """The settings a run wrote into ``choices.json`` (keys this version does not know are left out)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in record.items() if key in known})


@dataclass
class Shortlisted:
    """A real row with its shortlist: what prepare's records are made of (``icd10_coder.records.Row``)."""

    row_id: str
    dialogue: str
    code: str
    candidates: tuple[str, ...]
    candidate_scores: tuple[float, ...]
    validity: str = ""
    window: str = ""  # the evidence window the prompt shows ("" = the whole dialogue)
    loglikelihoods: dict[str, list[float]] = field(default_factory=dict)  # model -> per candidate
    token_counts: list[int] = field(default_factory=list)


class Journal:
    """Append-only record of what the experiment did, in order (``journal.jsonl``)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **details: Any) -> None:
        append_jsonl(self.path, {"time": time.time(), "event": event, **details})

    def events(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)


def take(fold: Fold, split: str, limit: int | None, seed: int, journal: Journal) -> list[RealRow]:
    """The rows of one split of a fold (``train`` includes the held-out siblings), at most ``limit`` of them
    drawn reproducibly; the only way rows leave a fold."""
    source = fold.train + fold.sibling if split == "train" else getattr(fold, split)
    rows = subsample(source, limit, seed=f"{seed}-{fold.index}-{split}")
    journal.write("take", fold=fold.index, split=split, rows=len(rows))
    return rows


def shortlist(retriever: Retriever, rows: list[RealRow], k: int, window_tokens: int = 0) -> list[Shortlisted]:
    """Each row with the retriever's top ``k`` (and, with ``window_tokens``, its evidence window)."""
    from tqdm import tqdm

    found: list[list[tuple[str, float]]] = []
    for start in tqdm(range(0, len(rows), 64), desc="shortlist", unit="batch", disable=None):
        found += retriever.shortlist([r.dialogue for r in rows[start:start + 64]], k)
    result = []
    for r, ranked in zip(rows, found, strict=True):
        codes = tuple(c for c, _ in ranked)
        window = retriever.window(r.dialogue, list(codes), window_tokens) if window_tokens else ""
        result.append(Shortlisted(r.row_id, r.dialogue, r.code, codes, tuple(s for _, s in ranked),
                                  validity(r.code), window))
    return result


def score_with(predictor: Any, model: str, rows: list[Shortlisted], progress: str, excerpt: bool) -> None:
    """Log-likelihood of each row's candidates under ``predictor`` (one prompt pass per row); ``excerpt``:
    the prompt shows the row's evidence window."""
    from tqdm import tqdm

    for row in tqdm(rows, desc=progress, unit="dialogue"):
        text = row.window if excerpt and row.window else row.dialogue
        scored = predictor.candidate_loglikelihoods(text, list(row.candidates), excerpt=excerpt and bool(row.window))
        row.loglikelihoods[model] = [total for total, _ in scored]
        row.token_counts = [count for _, count in scored]


def model_scores(row: Shortlisted, model: str, normalisation: str) -> list[float]:
    return choice.normalised(row.loglikelihoods[model], row.candidates, normalisation, row.token_counts)


def ranked_codes(row: Shortlisted, approach: str, choices: dict[str, Any]) -> list[str]:
    """The codes a model approach answers for a row, best first, under the fold's choices."""
    if not row.candidates:
        return []
    model, how = approach.split("-")
    picked = choices[model]
    scores = model_scores(row, model, picked["normalisation"]["value"])
    if how == "fused":
        scores = choice.fused_scores(scores, list(row.candidate_scores), picked["fusion_weight"]["value"])
    return choice.rank(row.candidates, scores)


def choose_normalisation(rows: list[Shortlisted], model: str) -> dict[str, Any]:
    """The normalisation with the best dev exact match (ties: per character, the choice task's default)."""
    curve = {how: _exact(rows, model, how) for how in choice.NORMALISATIONS}
    best = max(curve.values())
    value = next(how for how in choice.NORMALISATIONS if curve[how] == best)
    return {"value": value, "split": "dev", "rows": len(rows), "dev_exact": {k: round(v, 4) for k, v in curve.items()}}


def _exact(rows: list[Shortlisted], model: str, normalisation: str = "per_char") -> float:
    """Share of rows whose top candidate by the model's scores alone is the gold code."""
    return sum(bool(r.candidates) and choice.rank(r.candidates, model_scores(r, model, normalisation))[0] == r.code
               for r in rows) / max(1, len(rows))


def choose_fusion(rows: list[Shortlisted], model: str, normalisation: str) -> dict[str, Any]:
    data = [(list(r.candidates), model_scores(r, model, normalisation), list(r.candidate_scores), r.code)
            for r in rows if r.candidates]
    weight, curve = choice.choose_weight(data)
    return {"value": weight, "split": "dev", "rows": len(rows), "dev_exact_by_weight": curve}


def choose_scoring(rows: list[Shortlisted]) -> dict[str, Any]:
    """Per model, the normalisation and then the fusion weight with the best exact match on these dev rows."""
    picked = {}
    for model in MODELS:
        normalisation = choose_normalisation(rows, model)
        picked[model] = {"normalisation": normalisation,
                         "fusion_weight": choose_fusion(rows, model, normalisation["value"])}
    return picked


def choose_prompt(rows_by_prompt: dict[str, list[Shortlisted]]) -> dict[str, Any]:
    """Evidence window or whole dialogue: the zero-shot SLM's choice exact match on the same dev rows (ties:
    the window, the cheaper prompt)."""
    exact = {prompt: round(_exact(rows, "baseline"), 4) for prompt, rows in rows_by_prompt.items()}
    value = "window" if exact["window"] >= exact["whole"] else "whole"
    return {"value": value, "split": "dev", "rows": len(rows_by_prompt["window"]), "model": "baseline SLM",
            "dev_exact": exact}


def outcome(row: RealRow, fold: int, retrieval: dict[str, list[str]], slm: Shortlisted | None,
            choices: dict[str, Any]) -> dict[str, Any]:
    """One scored test row (ids and codes, never its text): per approach its top codes and 0/1 metrics; the
    model approaches when the row was scored by the SLM (``slm``)."""
    result = {"id": row.row_id, "fold": fold, "gold": row.code, "chapter": row.code[0], "slm": slm is not None,
              "gold_in_shortlist": {name: row.code in ranked for name, ranked in retrieval.items()},
              "approaches": {}}
    ranked_by = dict(retrieval)
    if slm is not None:
        ranked_by.update({a: ranked_codes(slm, a, choices) for a in MODEL_APPROACHES})
    for approach, ranked in ranked_by.items():
        result["approaches"][approach] = {"top": ranked[:3], **score_codes(row.code, ranked)}
    return result


def oof_record(row: Shortlisted, fold: int) -> dict[str, Any]:
    """An SLM-scored test row as calibration reads it (:mod:`icd10_coder.calibration`): out of fold, because
    the fold's models never trained on the row's category."""
    return {"id": row.row_id, "fold": fold, "gold": row.code, "candidates": list(row.candidates),
            "candidate_scores": list(row.candidate_scores), "loglikelihoods": row.loglikelihoods,
            "token_counts": row.token_counts, "window": bool(row.window)}


# ---------------------------------------------------------------- tables


def pooled_table(outcomes: list[dict[str, Any]], table_name: str, folds: int) -> dict[str, Any]:
    """Per approach: pooled exact (Wilson 95% CI), per-fold mean and range, category, top-3; McNemar vs
    Retrieval on the pooled rows, Holm-corrected over the table's comparisons."""
    rows = [o for o in outcomes if table_name == "every" or o["slm"]]
    approaches = RETRIEVAL_APPROACHES if table_name == "every" else APPROACHES
    table: dict[str, Any] = {"rows": TABLES[table_name], "n": len(rows), "approaches": {}}
    for approach in approaches:
        exact = [o["approaches"][approach]["exact_match"] for o in rows]
        per_fold = [statistics.fmean([o["approaches"][approach]["exact_match"] for o in rows if o["fold"] == f])
                    for f in range(folds) if any(o["fold"] == f for o in rows)]
        low, high = wilson(sum(exact), len(exact)) if exact else (float("nan"), float("nan"))
        table["approaches"][approach] = {
            "exact": _mean(exact), "exact_ci95": [low, high], "exact_fold_mean": _mean(per_fold),
            "exact_fold_min": min(per_fold, default=float("nan")),
            "exact_fold_max": max(per_fold, default=float("nan")),
            "category": _mean(o["approaches"][approach]["category_match"] for o in rows),
            "top3": _mean(o["approaches"][approach]["top3_match"] for o in rows)}
    tests = []
    reference = {o["id"]: o["approaches"]["retrieval"]["exact_match"] for o in rows}
    for approach in approaches[1:]:
        other = {o["id"]: o["approaches"][approach]["exact_match"] for o in rows}
        tests.append({"a": "retrieval", "b": approach, "metric": "exact_match", **mcnemar(reference, other)})
    holm(tests)
    for test in tests:
        table["approaches"][test["b"]]["vs_retrieval"] = test
    table["shortlist_recall"] = {name: _mean(o["gold_in_shortlist"][name] for o in rows)
                                 for name in RETRIEVAL_APPROACHES}
    return table


def chapter_breakdown(outcomes: list[dict[str, Any]], approaches: Iterable[str]) -> dict[str, Any]:
    """Exact and category match per chapter letter for the given approaches, on every test row."""
    by_letter: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in outcomes:
        by_letter[o["chapter"]].append(o)
    return {letter: {"n": len(rows), **{a: {"exact": _mean(r["approaches"][a]["exact_match"] for r in rows),
                                             "category": _mean(r["approaches"][a]["category_match"] for r in rows)}
                                         for a in approaches}}
            for letter, rows in sorted(by_letter.items())}


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


def markdown(results: dict[str, Any], details: bool = True) -> str:
    """The results as markdown: one table per set of test rows; with ``details``, then the per-chapter breakdown
    and what dev chose in each fold."""
    settings, best = results["settings"], results["best_model_approach"]
    lines = []
    for table in results["tables"].values():
        recall = ", ".join(f"{LABELS[name]} {value:.3f}" for name, value in table["shortlist_recall"].items())
        lines += [f"**Unseen categories, {table['rows']}** — {table['n']} test dialogues pooled over "
                  f"{settings['folds']} category folds (gold code in the top {settings['shortlist_k']}: {recall}).",
                  "", "| approach | exact, pooled [95% CI] | exact per fold: mean (min–max) | category | top-3 "
                  "| vs Retrieval: only R / only approach | p (Holm) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for approach, row in table["approaches"].items():
            test = row.get("vs_retrieval")
            versus = f"{test['a_only']} / {test['b_only']}" if test else "—"
            p = f"{test['p_value']:.3f} ({test['p_holm']:.3f})" if test else "—"
            name = LABELS[approach] + (" ← best on dev" if approach == best else "")
            lines.append(f"| {name} | {row['exact']:.3f} [{row['exact_ci95'][0]:.3f}, {row['exact_ci95'][1]:.3f}] "
                         f"| {row['exact_fold_mean']:.3f} ({row['exact_fold_min']:.3f}–{row['exact_fold_max']:.3f}) "
                         f"| {row['category']:.3f} | {row['top3']:.3f} | {versus} | {p} |")
        lines.append("")
    if not details:
        return "\n".join(lines).rstrip("\n") + "\n"
    lines += ["Per chapter letter, every test row (exact / category).", "",
              "| chapter | n | " + " | ".join(LABELS[a] for a in RETRIEVAL_APPROACHES) + " |",
              "| --- | --- | --- | --- |"]
    for letter, row in results["chapters"].items():
        lines.append(f"| {letter} | {row['n']} | " + " | ".join(
            f"{row[a]['exact']:.2f} / {row[a]['category']:.2f}" for a in RETRIEVAL_APPROACHES) + " |")
    if found := results.get("retriever_defaults"):
        slm_rows = results["tables"]["slm"]["n"] if "slm" in results["tables"] else 0
        lines += ["", f"The default retriever's form (`RetrievalSettings()`, which every fold's variants start from) "
                      f"was chosen by `make retrieval-study` on {found['study_dev_rows']} dev rows of "
                      f"{', '.join(found['study_files'])}: {len(found['among_study_dev_rows'])} of these "
                      f"{found['test_rows']} test rows" + (f" ({found['among_slm_rows']} of the {slm_rows} SLM rows)"
                                                           if slm_rows else "")
                  + " were among them, so Retrieval (no model) and the variants built on it had them in view "
                    "(the folds' own choices did not)."]
    lines += ["", choices_markdown(results["choices"])]
    return "\n".join(lines) + "\n"


def choices_markdown(record: dict[str, Any]) -> str:
    """What dev chose in each fold, with the dev figures of every option (the variants that lost included)."""
    lines = ["Choices on dev, per fold (every option's dev figure, the ones that lost included; chosen in italics):",
             ""]
    for fold, picked in record["folds"].items():
        encoder = picked["encoder"]
        before, after = encoder.get("dev_recall_before") or {}, encoder.get("dev_recall_after") or {}
        trained = (f"encoder fine-tuned on {encoder['train_rows']} rows in {encoder['train_seconds']:.0f} s"
                   + (f", dense-alone dev recall@1 {before['recall@1']:.3f} → {after['recall@1']:.3f}, "
                      f"@10 {before['recall@10']:.3f} → {after['recall@10']:.3f}" if before and after else ""))
        variants = picked["retriever_variants"]
        shown = "; ".join(f"{name}: exact {v['exact']:.3f}, recall@{variants['k']} {v['recall']:.3f}"
                          for name, v in variants["dev"].items())
        line = (f"- fold {fold} ({variants['rows']} dev rows): {trained}. Retrievers — {shown}. "
                f"Retrieval (fine-tuned encoder): *{picked['retrieval_encoder']['value']}*; SLM shortlist: "
                f"*{picked['shortlist']['value']}*.")
        if "prompt" in picked:
            line += (f" Prompt: {_prompt_text(picked['prompt'])}. LoRA: {picked['lora']['rows']} rows, "
                     f"{picked['lora']['gold_inserted']} with the gold code put on the list. "
                     f"{_model_choices_text(picked)}.")
            earlier = (record.get("earlier") or {}).get("folds", {}).get(fold)
            if earlier:
                line += (f" Earlier, on {earlier['baseline']['normalisation']['rows']} dev rows: prompt "
                         f"{_prompt_text(earlier['prompt'])}; {_model_choices_text(earlier)}.")
        lines.append(line)
    best = record["best_model_approach"]
    if best:
        lines.append(f"- best model approach on the pooled dev rows: {_best_text(best)}.")
    if (record.get("earlier") or {}).get("best_model_approach"):
        lines.append(f"- earlier, on {record['earlier']['slm_dev_rows']} dev rows per fold: "
                     f"{_best_text(record['earlier']['best_model_approach'])}.")
    return "\n".join(lines)


def _prompt_text(prompt: dict[str, Any]) -> str:
    kept = f", every dev row preferred *{prompt['dev_choice']}*: {prompt['kept']}" if prompt.get("dev_choice") else ""
    return (f"*{prompt['value']}* (zero-shot choice exact on {prompt['rows']} dev rows: window "
            f"{prompt['dev_exact']['window']:.3f}, whole {prompt['dev_exact']['whole']:.3f}{kept})")


def _model_choices_text(picked: dict[str, Any]) -> str:
    return "; ".join(f"{model}: {picked[model]['normalisation']['value']}, fusion weight "
                     f"{picked[model]['fusion_weight']['value']}" for model in MODELS)


def _best_text(best: dict[str, Any]) -> str:
    figures = ", ".join(f"{LABELS[a]} {v:.3f}" for a, v in best["dev_exact"].items())
    return f"*{LABELS[best['value']]}* ({figures})"


def readme_summary(header: str, results: dict[str, Any]) -> str:
    """The README's share of the results: what ran, the verdict and the tables."""
    return f"{header}\n\n{verdict(results)}\n\n{markdown(results, details=False)}"


def verdict(results: dict[str, Any]) -> str:
    """The target in one paragraph: a fine-tuned approach beats Retrieval by >= 5 points exact, Holm p < 0.05,
    and the shortlist's recall@K >= 0.70."""
    found = []
    for table in results["tables"].values():
        floor = table["approaches"]["retrieval"]["exact"]
        for approach in ("retrieval-encoder", "finetuned-choice", "finetuned-fused"):
            row = table["approaches"].get(approach)
            if row:
                found.append((row["exact"] - floor, approach, row, floor, table))
    gain, approach, row, floor, table = max(found, key=lambda item: item[0])
    test = row["vs_retrieval"]
    reached = gain >= TARGET_POINTS and test["p_holm"] < 0.05
    recall = max(results["tables"]["every"]["shortlist_recall"].values())
    k = results["settings"]["shortlist_k"]
    return (f"{'Accuracy target reached' if reached else 'Accuracy target not reached'}: the best fine-tuned approach, "
            f"{LABELS[approach]}, {row['exact']:.3f} vs Retrieval {floor:.3f} on {table['n']} rows "
            f"({gain * 100:+.1f} points, Holm p {test['p_holm']:.3f}; the target is +{TARGET_POINTS * 100:.0f} points "
            f"with p < 0.05). Shortlist recall@{k}: {recall:.3f} at best "
            f"({'recall target 0.70 reached' if recall >= 0.70 else 'recall target 0.70 not reached'}).")


def summarise(outcomes: list[dict[str, Any]], best: str | None, settings: Settings) -> dict[str, Any]:
    tables = ("every",) if settings.retrieval_only else TABLES
    return {"settings": asdict(settings), "best_model_approach": best,
            "tables": {name: pooled_table(outcomes, name, settings.folds) for name in tables},
            "chapters": chapter_breakdown(outcomes, RETRIEVAL_APPROACHES)}


def best_model_approach(dev: dict[int, list[Shortlisted]], choices: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The model approach with the best exact match on the pooled dev rows (ties: the simpler, earlier one)."""
    scores = {}
    for approach in MODEL_APPROACHES:
        hits = [ranked_codes(r, approach, choices[f])[:1] == [r.code] for f, rows in dev.items() for r in rows]
        scores[approach] = round(sum(hits) / max(1, len(hits)), 4)
    best = max(scores.values())
    value = next(a for a in MODEL_APPROACHES if scores[a] == best)
    return {"value": value, "split": "dev (pooled over folds)", "dev_exact": scores}


# A tool run as the user would type it: (stage name, arguments after `python`, the workspace it runs in).
ToolRunner = Callable[[str, list[str], Workspace], None]


# ---------------------------------------------------------------- the run


def fold_workspace(space: Workspace, fold: int) -> Workspace:
    """Each fold trains in its own workspace inside the experiment's (prepared data, adapter, encoder, MLflow)."""

    return Workspace.at(space.root / f"fold-{fold}")


def write_pairs(path: Path, rows: list[RealRow]) -> Path:
    """(dialogue, gold code) rows as the encoder recipe reads them (owner-only: they quote dialogues)."""

    private_folder(path.parent)
    return write_jsonl(path, ({"dialogue": r.dialogue, "gold_code": r.code} for r in rows), private=True)


def write_training_data(folder: Path, train: list[Shortlisted], dev: list[Shortlisted], k: int,
                        retriever: dict[str, Any], window_tokens: int, seed: int,
                        source: str = "shared real MedSynth rows (experiment fold)") -> int:
    """The fold's axolotl data as prepare writes it (train.jsonl with the gold code on every list, val.jsonl =
    dev rows as retrieved, data card with K, retriever and prompt), which tools/train.py copies into the
    adapter's prompt record. Returns how many training lists got the gold code put on."""
    import random

    private_folder(folder)
    rng, inserted = random.Random(seed), 0
    taught = []
    for row in train:
        candidates, scores, changed = gold_on_list(row.candidates, row.candidate_scores, row.code, rng)
        inserted += changed
        taught.append(replace(row, candidates=candidates, candidate_scores=scores))
    for name, rows in (("train.jsonl", taught), ("val.jsonl", dev)):
        write_jsonl(folder / name, [training_record(row) for row in rows])
    card = {"source": source, "splits": {"train": len(train), "val": len(dev)},
            "shortlist": {"k": k, "retriever": retriever, "evidence_window": window_tokens,
                          "recall_at_k": {"train": _mean(r.code in r.candidates for r in train),
                                          "val": _mean(r.code in r.candidates for r in dev) if dev else None},
                          "gold_on_training_lists": {"inserted": inserted, "rows": len(train)}}}
    (folder / "data_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return inserted


def dev_retrievers(dev: list[RealRow], variants: dict[str, RetrievalSettings],
                   k: int) -> tuple[dict[str, Retriever], dict[str, Any]]:
    """Every variant fitted and scored on the fold's dev rows: exact (top-1) and recall@k."""
    retrievers, scores = {}, {}
    for name, settings in variants.items():
        retrievers[name] = Retriever.fit(settings)
        ranked = [[c for c, _ in found] for found in
                  _shortlists(retrievers[name], [r.dialogue for r in dev], k, f"dev: {name}")]
        measured = recall_at(ranked, [r.code for r in dev], (1, k))
        scores[name] = {"exact": measured["code"][1], "recall": measured["code"][k],
                        "settings": settings.as_record()}
    return retrievers, scores


def _shortlists(retriever: Retriever, dialogues: list[str], k: int, progress: str) -> list[list[tuple[str, float]]]:
    from tqdm import tqdm

    found: list[list[tuple[str, float]]] = []
    for start in tqdm(range(0, len(dialogues), 64), desc=progress, unit="batch", disable=None):
        found += retriever.shortlist(dialogues[start:start + 64], k)
    return found


def _best(scores: dict[str, Any], names: Iterable[str], first: str, second: str) -> str:
    """The name with the best ``first`` figure (ties: ``second``, then the earlier name)."""
    names = list(names)
    return max(enumerate(names), key=lambda item: (scores[item[1]][first], scores[item[1]][second], -item[0]))[1]


def run_experiment(space: Workspace, rows: list[RealRow], settings: Settings, run_tool: ToolRunner,
                   load_predictor: Callable[[Path | None], Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole protocol (module docstring); returns the results also written to ``space.report_dir``."""

    journal = Journal(space.root / "journal.jsonl")
    folds = category_folds(rows, folds=settings.folds, dev_share=settings.dev_share, seed=settings.seed)
    journal.write("folds", sizes=[f.sizes() for f in folds])
    k = settings.shortlist_k
    choices: dict[int, dict[str, Any]] = {}
    retrievers: dict[int, dict[str, Retriever]] = {}
    dev: dict[int, list[Shortlisted]] = {}
    adapters: dict[int, Path] = {}
    for fold in folds:
        fold_space = fold_workspace(space, fold.index)
        train_rows = take(fold, "train", None, settings.seed, journal)
        dev_rows = take(fold, "dev", settings.dev_rows, settings.seed, journal)
        # 1. The encoder learns from every training row of the fold.
        data = fold_space.root / "encoder-data"
        encoder_dir = fold_space.outputs / "encoders" / "minilm-query"
        started = time.perf_counter()
        run_tool(f"fold {fold.index}: fine-tune the query encoder on {len(train_rows)} rows",
                 ["tools/train_encoder.py", settings.encoder_recipe, "--workspace", str(fold_space.root),
                  "--set", f"train_data={write_pairs(data / 'train.jsonl', train_rows)}",
                  "--set", f"dev_data={write_pairs(data / 'dev.jsonl', dev_rows)}",
                  "--set", f"output_dir={encoder_dir}", "--set", f"num_train_epochs={settings.encoder_epochs}"],
                 fold_space)
        journal.write("encoder trained", fold=fold.index, seconds=round(time.perf_counter() - started, 1))
        encoder_record = json.loads((encoder_dir / "encoder_training.json").read_text())
        # 2. Retrievers on dev: the fine-tuned approach's variant (exact) and the SLM's shortlist (recall@K).
        variants = retriever_variants(display_path(encoder_dir))
        retrievers[fold.index], dev_scores = dev_retrievers(dev_rows, variants, k)
        tuned = _best(dev_scores, list(variants)[1:], "exact", "recall")
        listed = _best(dev_scores, variants, "recall", "exact")
        log(f"fold {fold.index}: retrieval (fine-tuned encoder) '{tuned}', SLM shortlist '{listed}'")
        choices[fold.index] = {
            "encoder": {**{key: encoder_record[key] for key in ("train_rows", "train_seconds", "dev_recall_before",
                                                                 "dev_recall_after")}, "split": "train (dev: recall)"},
            "retriever_variants": {"rows": len(dev_rows), "k": k, "split": "dev", "dev": dev_scores},
            "retrieval_encoder": {"value": tuned, "split": "dev", "by": "exact, then recall"},
            "shortlist": {"value": listed, "split": "dev", "by": f"recall@{k}, then exact"},
            "fixed_in_advance": {"shortlist_k": k, "window_tokens": settings.window_tokens, "epochs": settings.epochs,
                                 "recipe": settings.recipe, "encoder_recipe": settings.encoder_recipe,
                                 "why": "not tuned: one training per fold fits the CPU budget"}}
        if settings.retrieval_only:
            continue
        slm_dev = subsample(dev_rows, settings.slm_dev_rows, seed=f"{settings.seed}-{fold.index}-slm-dev")
        journal.write("take", fold=fold.index, split="dev (SLM)", rows=len(slm_dev))
        dev[fold.index] = shortlist(retrievers[fold.index][listed], slm_dev, k, settings.window_tokens)
        # 3. Evidence window or whole dialogue: the zero-shot SLM on the same dev rows, both prompts.
        compared = subsample(dev[fold.index], settings.prompt_choice_rows, seed=f"{settings.seed}-{fold.index}-prompt")
        whole = [replace(r, window="", loglikelihoods={}) for r in compared]
        window = [replace(r, loglikelihoods={}) for r in compared]
        zero_shot = load_predictor(None)
        score_with(zero_shot, "baseline", window, f"fold {fold.index} dev: zero-shot SLM, window", excerpt=True)
        score_with(zero_shot, "baseline", whole, f"fold {fold.index} dev: zero-shot SLM, whole", excerpt=False)
        del zero_shot
        prompt = choose_prompt({"window": window, "whole": whole})
        window_tokens = settings.window_tokens if prompt["value"] == "window" else 0
        if not window_tokens:
            for row in dev[fold.index]:
                row.window = ""
        # 4. The LoRA on the chosen prompt, the gold code on every training list.
        lora_rows = subsample(train_rows, settings.lora_rows, seed=f"{settings.seed}-{fold.index}-lora")
        training = shortlist(retrievers[fold.index][listed], lora_rows, k, window_tokens)
        inserted = write_training_data(fold_space.prepared_shortlist, training, dev[fold.index], k,
                                       dev_scores[listed]["settings"], window_tokens, settings.seed)
        log(f"fold {fold.index}: prompt '{prompt['value']}', LoRA on {len(training)} rows ({inserted} with the gold "
            f"code put on the list), {len(dev[fold.index])} dev rows")
        started = time.perf_counter()
        run_tool(f"fold {fold.index}: LoRA on {len(training)} shortlist prompts",
                 ["tools/train.py", settings.recipe, "--workspace", str(fold_space.root), *train_overrides(settings)],
                 fold_space)
        journal.write("trained", fold=fold.index, seconds=round(time.perf_counter() - started, 1))
        adapters[fold.index] = adapter_dir(fold_space, settings)
        choices[fold.index].update(prompt=prompt, lora={"rows": len(training), "gold_inserted": inserted,
                                                        "split": "train"})
    if not settings.retrieval_only:
        _score_all(dev, adapters, load_predictor, "dev", choices)
        for fold in folds:
            choices[fold.index].update(choose_scoring(dev[fold.index]))
    record = {"settings": asdict(settings), "folds": {str(f): c for f, c in choices.items()},
              "best_model_approach": None if settings.retrieval_only else best_model_approach(dev, choices)}
    space.report_dir.mkdir(parents=True, exist_ok=True)
    (space.report_dir / "choices.json").write_text(json.dumps(record, indent=2) + "\n")
    journal.write("choices written")
    log(f"choices made on dev: {json.dumps(record['best_model_approach'])}")
    return run_test_stage(space, folds, settings, choices, retrievers, adapters, load_predictor, journal)


def run_test_stage(space: Workspace, folds: list[Fold], settings: Settings, choices: dict[int, dict[str, Any]],
               retrievers: dict[int, dict[str, Retriever]], adapters: dict[int, Path],
               load_predictor: Callable[[Path | None], Any], journal: Journal) -> dict[str, Any]:
    """The only place test rows are taken, ranked and scored, with the choices made on dev. Writes
    ``outcomes.jsonl`` (top codes and metrics per approach), ``scores.jsonl`` (every SLM-scored row's shortlist,
    retrieval scores and both models' log-likelihoods: the out-of-fold predictions calibration is fitted on;
    codes and numbers, no dialogue text) and ``results.json``."""
    record = json.loads((space.report_dir / "choices.json").read_text())
    k = settings.shortlist_k
    outcomes = []
    slm_rows: dict[int, list[Shortlisted]] = {}
    rankings: dict[int, dict[str, dict[str, list[str]]]] = {}
    tested: dict[int, list[RealRow]] = {}
    for fold in folds:
        test_rows = tested[fold.index] = take(fold, "test", None, settings.seed, journal)
        picked = choices[fold.index]
        names = {"retrieval": ZERO_SHOT, "retrieval-encoder": picked["retrieval_encoder"]["value"]}
        rankings[fold.index] = {}
        for approach, name in names.items():
            found = _shortlists(retrievers[fold.index][name], [r.dialogue for r in test_rows], k,
                                f"fold {fold.index} test: {LABELS[approach]}")
            rankings[fold.index][approach] = {r.row_id: [c for c, _ in f] for r, f in zip(test_rows, found,
                                                                                           strict=True)}
        if settings.retrieval_only:
            continue
        scored = subsample(test_rows, settings.slm_test_rows, seed=f"{settings.seed}-{fold.index}-slm")
        journal.write("take", fold=fold.index, split="test (SLM)", rows=len(scored))
        window_tokens = settings.window_tokens if picked["prompt"]["value"] == "window" else 0
        slm_rows[fold.index] = shortlist(retrievers[fold.index][picked["shortlist"]["value"]], scored, k,
                                         window_tokens)
    if slm_rows:
        _score_all(slm_rows, adapters, load_predictor, "test", choices)
    for fold in folds:
        by_id = {r.row_id: r for r in slm_rows.get(fold.index, [])}
        for row in tested[fold.index]:
            ranked = {a: rankings[fold.index][a][row.row_id] for a in RETRIEVAL_APPROACHES}
            outcomes.append(outcome(row, fold.index, ranked, by_id.get(row.row_id), choices[fold.index]))
    journal.write("test scored", rows=len(outcomes), slm_rows=sum(o["slm"] for o in outcomes))
    write_jsonl(space.report_dir / "scores.jsonl", (oof_record(r, fold) for fold, rs in slm_rows.items() for r in rs))
    return write_results(space, outcomes, record, settings, folds)


def write_results(space: Workspace, outcomes: list[dict[str, Any]], record: dict[str, Any], settings: Settings,
                  folds: list[Fold]) -> dict[str, Any]:
    """``outcomes.jsonl`` and the summarised ``results.json`` (with the choices ``record``) of a test stage."""
    best = record["best_model_approach"]
    results = summarise(outcomes, best["value"] if best else None, settings)
    results["choices"] = record
    results["fold_sizes"] = [f.sizes() for f in folds]
    write_jsonl(space.report_dir / "outcomes.jsonl", outcomes)
    (space.report_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _finished_run(space: Workspace, rows: list[RealRow]) -> tuple[dict[str, Any], Settings, list[Fold],
                                                                    dict[int, dict[str, Any]], dict[int, Path]]:
    """A finished run's choices record, settings, folds, per-fold choices and trained adapters (every one
    checked), for the stages that redo part of it with the same fold models."""
    recorded = space.report_dir / "choices.json"
    if not recorded.is_file():
        raise FileNotFoundError(f"{display_path(recorded)}: no finished run here; run the experiment first")
    record = json.loads(recorded.read_text())
    settings = Settings.from_record(record["settings"])
    if settings.retrieval_only:
        raise ValueError("a retrieval-only run has no SLM to score with; run the experiment again instead")
    folds = category_folds(rows, folds=settings.folds, dev_share=settings.dev_share, seed=settings.seed)
    choices = {int(fold): picked for fold, picked in record["folds"].items()}
    adapters = {}
    for fold in folds:
        adapters[fold.index] = adapter_dir(fold_workspace(space, fold.index), settings)
        if not (adapters[fold.index] / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{display_path(adapters[fold.index])}: fold {fold.index}'s adapter is missing")
    return record, settings, folds, choices, adapters


def _recorded_retriever(picked: dict[str, Any], name: str) -> Retriever:
    """The retriever variant ``name`` exactly as a fold's dev stage recorded it."""
    return Retriever.fit(RetrievalSettings.from_record(picked["retriever_variants"]["dev"][name]["settings"]))


def rescore_test(space: Workspace, rows: list[RealRow], load_predictor: Callable[[Path | None], Any]) -> dict[str, Any]:
    """The test stage again with a finished run's trained fold models (encoders, adapters) and its recorded
    choices (``choices.json``), nothing chosen anew: for a run made before a scoring change, e.g. before
    ``scores.jsonl`` existed."""
    record, settings, folds, choices, adapters = _finished_run(space, rows)
    journal = Journal(space.root / "journal.jsonl")
    journal.write("rescore test stage")
    retrievers = {}
    for fold in folds:
        picked = choices[fold.index]
        wanted = {ZERO_SHOT, picked["retrieval_encoder"]["value"], picked["shortlist"]["value"]}
        retrievers[fold.index] = {name: _recorded_retriever(picked, name) for name in wanted}
    return run_test_stage(space, folds, settings, choices, retrievers, adapters, load_predictor, journal)


def rechoose_on_every_dev_row(space: Workspace, rows: list[RealRow],
                              load_predictor: Callable[[Path | None], Any]) -> dict[str, Any]:
    """The SLMs' choices of a finished run made again on every dev row of each fold, with the same fold models:
    the prompt comparison (window vs whole, zero-shot), each model's normalisation and fusion weight, the best
    model approach on the pooled dev rows. The run's own choices (made on ``slm_dev_rows``) are kept in
    ``choices.json`` under ``earlier``. A fold's LoRA was trained on the prompt its dev rows chose first: if
    every dev row prefers the other prompt, that is recorded and the trained prompt stays (retraining is a full
    run). The test rows are not scored again: their recorded scores (``scores.jsonl``) are ranked with the new
    choices. Writes ``dev_scores.jsonl`` (codes and numbers) so the choices can be checked without a model."""
    record, settings, folds, choices, adapters = _finished_run(space, rows)
    journal = Journal(space.root / "journal.jsonl")
    journal.write("rechoose on every dev row")
    k = settings.shortlist_k
    dev: dict[int, list[Shortlisted]] = {}
    whole: dict[int, list[Shortlisted]] = {}
    for fold in folds:
        picked = choices[fold.index]
        retriever = _recorded_retriever(picked, picked["shortlist"]["value"])
        dev[fold.index] = shortlist(retriever, take(fold, "dev", settings.dev_rows, settings.seed, journal), k,
                                    settings.window_tokens)
        whole[fold.index] = [replace(r, window="", loglikelihoods={}) for r in dev[fold.index]]
    zero_shot = load_predictor(None)
    for fold, fold_rows in dev.items():
        score_with(zero_shot, "baseline", fold_rows, f"baseline SLM, fold {fold} dev, window", excerpt=True)
        score_with(zero_shot, "baseline", whole[fold], f"baseline SLM, fold {fold} dev, whole", excerpt=False)
    del zero_shot
    earlier = {str(f): {key: choices[f][key] for key in ("prompt", *MODELS)} for f in dev}
    for fold, fold_rows in dev.items():
        trained = choices[fold]["prompt"]["value"]
        prompt = choose_prompt({"window": fold_rows, "whole": whole[fold]})
        if prompt["value"] != trained:
            prompt.update(value=trained, dev_choice=prompt["value"],
                          kept="the fold's LoRA was trained on this prompt; retraining on the other is a full run")
        choices[fold]["prompt"] = prompt
        if trained == "whole":
            dev[fold] = whole[fold]
        score_with(load_predictor(adapters[fold]), "finetuned", dev[fold], f"finetuned SLM, fold {fold} dev",
                   excerpt=trained == "window")
        choices[fold].update(choose_scoring(dev[fold]))
    record.setdefault("earlier", {"slm_dev_rows": settings.slm_dev_rows,  # the run's own (a second re-choice too)
                                  "prompt_choice_rows": settings.prompt_choice_rows, "folds": earlier,
                                  "best_model_approach": record["best_model_approach"]})
    record["best_model_approach"] = best_model_approach(dev, choices)
    record["folds"] = {str(f): c for f, c in choices.items()}
    record["rechosen_on_every_dev_row"] = True
    write_jsonl(space.report_dir / "dev_scores.jsonl",
                ({**oof_record(r, fold), "whole_baseline": w.loglikelihoods["baseline"]}
                 for fold in dev for r, w in zip(dev[fold], whole[fold], strict=True)))
    (space.report_dir / "choices.json").write_text(json.dumps(record, indent=2) + "\n")
    journal.write("choices written", rechosen=True)
    return rerank_test(space, folds, settings, record)


def rerank_test(space: Workspace, folds: list[Fold], settings: Settings, record: dict[str, Any]) -> dict[str, Any]:
    """The test outcomes again from the recorded out-of-fold scores (``scores.jsonl``) under the choices in
    ``record``: the model approaches re-ranked without running a model, the retrieval approaches as they were."""
    choices = {int(fold): picked for fold, picked in record["folds"].items()}
    scored = {(s["fold"], s["id"]): s for s in read_jsonl(space.report_dir / "scores.jsonl")}
    outcomes = read_jsonl(space.report_dir / "outcomes.jsonl")
    for o in outcomes:
        if not o["slm"]:
            continue
        s = scored[(o["fold"], o["id"])]
        row = Shortlisted(s["id"], "", s["gold"], tuple(s["candidates"]), tuple(s["candidate_scores"]),
                          loglikelihoods=s["loglikelihoods"], token_counts=s["token_counts"])
        for approach in MODEL_APPROACHES:
            ranked = ranked_codes(row, approach, choices[o["fold"]])
            o["approaches"][approach] = {"top": ranked[:3], **score_codes(o["gold"], ranked)}
    return write_results(space, outcomes, record, settings, folds)


def train_overrides(settings: Settings) -> list[str]:
    """The recipe's own CPU settings for real dialogues, stated here too (the experiment's protocol)."""
    overrides = [f"--num_epochs={settings.epochs}", "--sequence_len=2048", "--micro_batch_size=1",
                 "--gradient_accumulation_steps=2"]
    return overrides + ([f"--max_steps={settings.max_steps}"] if settings.max_steps else [])


def adapter_dir(fold_space: Workspace, settings: Settings) -> Path:
    """Where ``settings.recipe`` writes its adapter inside ``fold_space``."""
    import yaml

    recipe = yaml.safe_load((REPO_ROOT / settings.recipe).read_text())
    return fold_space.map(recipe["output_dir"])


def _score_all(rows: dict[int, list[Shortlisted]], adapters: dict[int, Path],
               load_predictor: Callable[[Path | None], Any], split: str, choices: dict[int, dict[str, Any]]) -> None:
    """Zero-shot scores of every fold's rows (one model load), then each fold's finetuned scores, each fold with
    the prompt its dev rows chose."""
    baseline = load_predictor(None)
    for fold, fold_rows in rows.items():
        excerpt = choices[fold]["prompt"]["value"] == "window"
        score_with(baseline, "baseline", fold_rows, f"baseline SLM, fold {fold} {split}", excerpt)
    del baseline
    for fold, fold_rows in rows.items():
        excerpt = choices[fold]["prompt"]["value"] == "window"
        score_with(load_predictor(adapters[fold]), "finetuned", fold_rows, f"finetuned SLM, fold {fold} {split}",
                   excerpt)
