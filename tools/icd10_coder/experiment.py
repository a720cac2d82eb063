"""The real-data experiment (``make experiment-real``): category folds, choices on dev, test scored once.

Protocol, per category fold of the 805 shared real rows (:mod:`icd10_coder.realdata`):

1. **dev stage** — the retriever variant (pooled ``retrieval_study`` variants, best dev recall@K), the
   LoRA trained on the fold's training codes (shortlist prompts, ``recipes/demo-cpu-shortlist.yml``),
   then for the zero-shot and the finetuned SLM the score normalisation and the fusion weight, each
   chosen on the fold's dev rows; the best model approach is chosen on the pooled dev rows. Every
   choice is written to ``choices.json`` with the split it was made on.
2. **test stage** — only now are the fold's test rows (unseen categories) and sibling rows (unseen
   codes whose category siblings were trained) shortlisted and scored, once, with the choices above.

The journal (``journal.jsonl``) records each time a split's rows are taken out of the fold; a test
checks that no test or sibling row is taken before the last choice is written.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icd10_coder import choice
from icd10_coder.realdata import Fold, RealRow, subsample
from icd10_coder.retrieval import Retriever
from icd10_coder.scoring import score_codes
from icd10_coder.stats import holm, mcnemar, wilson

if TYPE_CHECKING:
    from icd10_coder.workspace import Workspace

CONDITIONS = {"test": "unseen categories", "sibling": "unseen codes, seen siblings"}
MODELS = ("baseline", "finetuned")
APPROACHES = ("retrieval", "baseline-choice", "baseline-fused", "finetuned-choice", "finetuned-fused")
LABELS = {"retrieval": "Retrieval (no model)",
          "baseline-choice": "Baseline SLM, choice by likelihood",
          "baseline-fused": "Baseline SLM, choice fused with retrieval",
          "finetuned-choice": "Finetuned SLM, choice by likelihood",
          "finetuned-fused": "Finetuned SLM, choice fused with retrieval"}


@dataclass(frozen=True)
class Settings:
    """Everything that sizes a run; written into ``choices.json`` and under the tables."""

    folds: int = 3
    seed: int = 0
    dev_share: float = 0.15
    train_rows: int | None = 30
    dev_rows: int | None = 30
    test_rows: int | None = 70
    sibling_rows: int | None = 25
    shortlist_k: int = 10
    epochs: int = 1
    max_steps: int | None = None
    recipe: str = "recipes/demo-cpu-shortlist.yml"
    retriever_variants: tuple[str, ...] = ()  # empty: every variant of retrieval_study.VARIANTS


@dataclass
class Shortlisted:
    """A real row with its shortlist: what prepare's records are made of (``icd10_coder.records.Row``)."""

    row_id: str
    dialogue: str
    code: str
    candidates: tuple[str, ...]
    candidate_scores: tuple[float, ...]
    validity: str = ""
    loglikelihoods: dict[str, list[float]] = field(default_factory=dict)  # model -> per candidate
    token_counts: list[int] = field(default_factory=list)


class Journal:
    """Append-only record of what the experiment did, in order (``journal.jsonl``)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **details: Any) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": time.time(), "event": event, **details}) + "\n")

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def take(fold: Fold, split: str, settings: Settings, journal: Journal) -> list[RealRow]:
    """The rows of one split of a fold, subsampled to the run's size; the only way rows leave a fold."""
    limits = {"train": settings.train_rows, "dev": settings.dev_rows, "test": settings.test_rows,
              "sibling": settings.sibling_rows}
    rows = subsample(getattr(fold, split), limits[split], seed=f"{settings.seed}-{fold.index}-{split}")
    journal.write("take", fold=fold.index, split=split, rows=len(rows))
    return rows


def shortlist(retriever: Retriever, rows: list[RealRow], k: int) -> list[Shortlisted]:
    from icd10_coder.codes import validity

    found = retriever.shortlist([r.dialogue for r in rows], k) if rows else []
    return [Shortlisted(r.row_id, r.dialogue, r.code, tuple(c for c, _ in ranked), tuple(s for _, s in ranked),
                        validity(r.code))
            for r, ranked in zip(rows, found, strict=True)]


def score_with(predictor: Any, model: str, rows: list[Shortlisted], progress: str) -> None:
    """Log-likelihood of each row's candidates under ``predictor`` (one prompt pass per row)."""
    from tqdm import tqdm

    for row in tqdm(rows, desc=progress, unit="dialogue"):
        scored = predictor.candidate_loglikelihoods(row.dialogue, list(row.candidates))
        row.loglikelihoods[model] = [total for total, _ in scored]
        row.token_counts = [count for _, count in scored]


def model_scores(row: Shortlisted, model: str, normalisation: str) -> list[float]:
    return choice.normalised(row.loglikelihoods[model], row.candidates, normalisation, row.token_counts)


def ranked_codes(row: Shortlisted, approach: str, choices: dict[str, Any]) -> list[str]:
    """The codes an approach answers for a row, best first, under the fold's choices."""
    if approach == "retrieval" or not row.candidates:
        return list(row.candidates)
    model, how = approach.split("-")
    picked = choices[model]
    scores = model_scores(row, model, picked["normalisation"]["value"])
    if how == "fused":
        scores = choice.fused_scores(scores, list(row.candidate_scores), picked["fusion_weight"]["value"])
    return choice.rank(row.candidates, scores)


def choose_normalisation(rows: list[Shortlisted], model: str) -> dict[str, Any]:
    """The normalisation with the best dev exact match (ties: per character, the choice task's default)."""
    curve = {how: sum(bool(r.candidates) and choice.rank(r.candidates, model_scores(r, model, how))[0] == r.code
                      for r in rows) / max(1, len(rows))
             for how in choice.NORMALISATIONS}
    best = max(curve.values())
    value = next(how for how in choice.NORMALISATIONS if curve[how] == best)
    return {"value": value, "split": "dev", "rows": len(rows), "dev_exact": {k: round(v, 4) for k, v in curve.items()}}


def choose_fusion(rows: list[Shortlisted], model: str, normalisation: str) -> dict[str, Any]:
    data = [(list(r.candidates), model_scores(r, model, normalisation), list(r.candidate_scores), r.code)
            for r in rows if r.candidates]
    weight, curve = choice.choose_weight(data)
    return {"value": weight, "split": "dev", "rows": len(rows), "dev_exact_by_weight": curve}


def outcome(row: Shortlisted, condition: str, fold: int, choices: dict[str, Any]) -> dict[str, Any]:
    """One scored test row: per approach its top codes and 0/1 metrics."""
    result = {"id": row.row_id, "fold": fold, "condition": condition, "gold": row.code, "chapter": row.code[0],
              "gold_in_shortlist": row.code in row.candidates, "approaches": {}}
    for approach in APPROACHES:
        ranked = ranked_codes(row, approach, choices)
        result["approaches"][approach] = {"top": ranked[:3], **score_codes(row.code, ranked)}
    return result


# ---------------------------------------------------------------- tables


def pooled_table(outcomes: list[dict[str, Any]], condition: str, folds: int) -> dict[str, Any]:
    """Per approach: pooled exact (Wilson 95% CI), per-fold mean and range, category, top-3; McNemar vs
    Retrieval on the pooled rows, Holm-corrected over the table's comparisons."""
    rows = [o for o in outcomes if o["condition"] == condition]
    table: dict[str, Any] = {"condition": CONDITIONS[condition], "n": len(rows), "approaches": {}}
    for approach in APPROACHES:
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
    for approach in APPROACHES[1:]:
        other = {o["id"]: o["approaches"][approach]["exact_match"] for o in rows}
        tests.append({"a": "retrieval", "b": approach, "metric": "exact_match", **mcnemar(reference, other)})
    holm(tests)
    for test in tests:
        table["approaches"][test["b"]]["vs_retrieval"] = test
    table["shortlist_recall"] = _mean(o["gold_in_shortlist"] for o in rows)
    return table


def chapter_breakdown(outcomes: list[dict[str, Any]], condition: str, approaches: Iterable[str]) -> dict[str, Any]:
    """Exact and category match per chapter letter for the given approaches."""
    by_letter: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in outcomes:
        if o["condition"] == condition:
            by_letter[o["chapter"]].append(o)
    return {letter: {"n": len(rows), **{a: {"exact": _mean(r["approaches"][a]["exact_match"] for r in rows),
                                             "category": _mean(r["approaches"][a]["category_match"] for r in rows)}
                                         for a in approaches}}
            for letter, rows in sorted(by_letter.items())}


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


def markdown(results: dict[str, Any], conditions: Iterable[str] | None = None, chapters: bool = True) -> str:
    """The results as markdown: one table per condition (all by default), then the per-chapter breakdown."""
    settings, best = results["settings"], results["best_model_approach"]
    lines = []
    for name, table in results["tables"].items():
        if conditions is not None and name not in conditions:
            continue
        lines += [f"**{table['condition'].capitalize()}** — {table['n']} test dialogues pooled over "
                  f"{settings['folds']} category folds (gold code on the top-{settings['shortlist_k']} shortlist: "
                  f"{table['shortlist_recall']:.3f}).", "",
                  "| approach | exact, pooled [95% CI] | exact per fold: mean (min–max) | category | top-3 "
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
    if not chapters:
        return "\n".join(lines).rstrip("\n") + "\n"
    breakdown = results["chapters"]
    lines += [f"Per chapter letter, unseen categories (exact / category): Retrieval vs {LABELS[best]} "
              "(the model approach best on dev).", "",
              "| chapter | n | Retrieval | " + LABELS[best] + " |", "| --- | --- | --- | --- |"]
    for letter, row in breakdown.items():
        lines.append(f"| {letter} | {row['n']} | {row['retrieval']['exact']:.2f} / {row['retrieval']['category']:.2f} "
                     f"| {row[best]['exact']:.2f} / {row[best]['category']:.2f} |")
    return "\n".join(lines) + "\n"


def readme_summary(header: str, results: dict[str, Any]) -> str:
    """The README's share of the results: what ran, the verdict and the unseen-categories table."""
    return f"{header}\n\n{verdict(results)}\n\n{markdown(results, conditions=['test'], chapters=False)}"


def verdict(results: dict[str, Any]) -> str:
    """One sentence on the target: best model approach > Retrieval on unseen categories, Holm p < 0.05."""
    best = results["best_model_approach"]
    table = results["tables"]["test"]["approaches"]
    row, floor = table[best], table["retrieval"]
    test = row["vs_retrieval"]
    numbers = ", ".join(f"{LABELS[a]} {table[a]['exact']:.3f}" for a in APPROACHES)
    if row["exact"] > floor["exact"] and test["p_holm"] < 0.05:
        return (f"Target reached: {LABELS[best]} beats Retrieval on unseen categories ({row['exact']:.3f} vs "
                f"{floor['exact']:.3f}, Holm p {test['p_holm']:.3f}). Exact match: {numbers}.")
    return (f"Target not reached: on unseen categories no model approach beats Retrieval with Holm p < 0.05 "
            f"({LABELS[best]}, best on dev: {row['exact']:.3f} vs Retrieval {floor['exact']:.3f}, "
            f"Holm p {test['p_holm']:.3f}). Exact match: {numbers}.")


def summarise(outcomes: list[dict[str, Any]], best: str, settings: Settings) -> dict[str, Any]:
    return {"settings": asdict(settings), "best_model_approach": best,
            "tables": {c: pooled_table(outcomes, c, settings.folds) for c in CONDITIONS},
            "chapters": chapter_breakdown(outcomes, "test", ("retrieval", best))}


def best_model_approach(dev: dict[int, list[Shortlisted]], choices: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The model approach with the best exact match on the pooled dev rows (ties: the simpler, earlier one)."""
    scores = {}
    for approach in APPROACHES[1:]:
        hits = [ranked_codes(r, approach, choices[f])[:1] == [r.code] for f, rows in dev.items() for r in rows]
        scores[approach] = round(sum(hits) / max(1, len(hits)), 4)
    best = max(scores.values())
    value = next(a for a in APPROACHES[1:] if scores[a] == best)
    return {"value": value, "split": "dev (pooled over folds)", "dev_exact": scores}


Runner = Callable[[str, list[str]], None]


# ---------------------------------------------------------------- the run


def fold_workspace(space: Workspace, fold: int) -> Workspace:
    """Each fold trains in its own workspace inside the experiment's (prepared data, adapter, MLflow)."""
    from icd10_coder.workspace import Workspace

    return Workspace.at(space.root / f"fold-{fold}")


def write_training_data(folder: Path, train: list[Shortlisted], dev: list[Shortlisted], k: int,
                        retriever: dict[str, Any]) -> None:
    """The fold's axolotl data as prepare writes it (train.jsonl, val.jsonl = dev rows, data card with the
    shortlist's K and retriever settings, which tools/train.py copies into the adapter's prompt record)."""
    from icd10_coder.paths import private_folder
    from icd10_coder.preparation import write_jsonl
    from icd10_coder.records import training_record

    private_folder(folder)
    for name, rows in (("train.jsonl", train), ("val.jsonl", dev)):
        write_jsonl(folder / name, [training_record(row) for row in rows])
    card = {"source": "shared real MedSynth rows (experiment fold)", "splits": {"train": len(train), "val": len(dev)},
            "shortlist": {"k": k, "retriever": retriever,
                          "recall_at_k": {"train": _mean(r.code in r.candidates for r in train),
                                          "val": _mean(r.code in r.candidates for r in dev)}}}
    (folder / "data_card.json").write_text(json.dumps(card, indent=2) + "\n")


def run_experiment(space: Workspace, rows: list[RealRow], settings: Settings, train: Runner,
                   load_predictor: Callable[[Path | None], Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole protocol (module docstring); returns the results also written to ``space.report_dir``."""
    from icd10_coder.realdata import category_folds
    from icd10_coder.retrieval_study import KS, VARIANTS, best_variant, dev_recall

    journal = Journal(space.root / "journal.jsonl")
    folds = category_folds(rows, folds=settings.folds, dev_share=settings.dev_share, seed=settings.seed)
    journal.write("folds", sizes=[f.sizes() for f in folds])
    variants = {n: VARIANTS[n] for n in (settings.retriever_variants or VARIANTS)}
    # Retriever per fold: recall@K on the fold's (subsampled) dev rows.
    dev_rows = {f.index: take(f, "dev", settings, journal) for f in folds}
    sized = [Fold(f.index, (), tuple(dev_rows[f.index]), (), ()) for f in folds]
    log(f"retriever variants on dev: {len(variants)}")
    study = dev_recall(sized, variants, cold=False)
    choices: dict[int, dict[str, Any]] = {}
    retrievers: dict[int, Retriever] = {}
    dev: dict[int, list[Shortlisted]] = {}
    recall_k = next((k for k in KS if k >= settings.shortlist_k), KS[-1])  # the study's nearest depth >= K
    for fold in folds:
        name = best_variant(study, k=recall_k, fold=fold.index)
        retrievers[fold.index] = Retriever.fit(variants[name])
        choices[fold.index] = {"retriever": {"value": name, "split": "dev", "rows": len(dev_rows[fold.index]),
                                             "settings": study[name]["settings"],
                                             "dev_recall_at": recall_k,
                                             "dev_recall": {n: r["by_fold"][fold.index]["code"][recall_k]
                                                            for n, r in study.items()}},
                               "fixed_in_advance": {"shortlist_k": settings.shortlist_k, "epochs": settings.epochs,
                                                    "recipe": settings.recipe,
                                                    "why": "not tuned: one training per fold fits the CPU budget"}}
        k = settings.shortlist_k
        dev[fold.index] = shortlist(retrievers[fold.index], dev_rows[fold.index], k)
        training = shortlist(retrievers[fold.index], take(fold, "train", settings, journal), k)
        data = fold_workspace(space, fold.index).prepared_shortlist
        write_training_data(data, training, dev[fold.index], k, study[name]["settings"])
        log(f"fold {fold.index}: retriever '{name}', {len(training)} training rows, {len(dev[fold.index])} dev rows")
        started = time.perf_counter()
        train(f"fold {fold.index}: LoRA on shortlist prompts", ["--workspace", str(data.parent)])
        journal.write("trained", fold=fold.index, seconds=round(time.perf_counter() - started, 1))
    adapters = {f.index: _adapter(space, f.index, settings) for f in folds}
    _score_all(dev, adapters, load_predictor, "dev")
    for fold in folds:
        for model in MODELS:
            normalisation = choose_normalisation(dev[fold.index], model)
            fusion = choose_fusion(dev[fold.index], model, normalisation["value"])
            choices[fold.index][model] = {"normalisation": normalisation, "fusion_weight": fusion}
    record = {"settings": asdict(settings), "folds": {str(f): c for f, c in choices.items()},
              "best_model_approach": best_model_approach(dev, choices)}
    space.report_dir.mkdir(parents=True, exist_ok=True)
    (space.report_dir / "choices.json").write_text(json.dumps(record, indent=2) + "\n")
    journal.write("choices written")
    log(f"choices made on dev: {json.dumps(record['best_model_approach'])}")
    # ---- test stage: the only place test and sibling rows are taken, shortlisted and scored.
    test = {f.index: shortlist(retrievers[f.index], take(f, "test", settings, journal), settings.shortlist_k)
            for f in folds}
    sibling = {f.index: shortlist(retrievers[f.index], take(f, "sibling", settings, journal), settings.shortlist_k)
               for f in folds}
    both = {f: test[f] + sibling[f] for f in test}
    _score_all(both, adapters, load_predictor, "test")
    outcomes = [outcome(r, "test", f, choices[f]) for f, rows_ in test.items() for r in rows_]
    outcomes += [outcome(r, "sibling", f, choices[f]) for f, rows_ in sibling.items() for r in rows_]
    journal.write("test scored", rows=len(outcomes))
    results = summarise(outcomes, record["best_model_approach"]["value"], settings)
    results["choices"] = record
    results["fold_sizes"] = [f.sizes() for f in folds]
    (space.report_dir / "outcomes.jsonl").write_text("".join(json.dumps(o) + "\n" for o in outcomes))
    (space.report_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _adapter(space: Workspace, fold: int, settings: Settings) -> Path:
    import yaml

    from icd10_coder.paths import REPO_ROOT

    recipe = yaml.safe_load((REPO_ROOT / settings.recipe).read_text())
    return fold_workspace(space, fold).map(recipe["output_dir"])


def _score_all(rows: dict[int, list[Shortlisted]], adapters: dict[int, Path],
               load_predictor: Callable[[Path | None], Any], split: str) -> None:
    """Zero-shot scores of every fold's rows (one model load), then each fold's finetuned scores."""
    baseline = load_predictor(None)
    for fold, fold_rows in rows.items():
        score_with(baseline, "baseline", fold_rows, f"baseline SLM, fold {fold} {split}")
    del baseline
    for fold, fold_rows in rows.items():
        score_with(load_predictor(adapters[fold]), "finetuned", fold_rows, f"finetuned SLM, fold {fold} {split}")
