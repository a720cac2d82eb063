"""Which retriever finds the code: recall of retriever variants on the dev rows of the real category folds.

Every variant is a :class:`RetrievalSettings`; none uses training dialogues (``neighbours=0``):
a code never trained on cannot be found among training dialogues. The variants are scored on the
**dev** split of each category fold (:mod:`icd10_coder.realdata`), never on test rows; the
experiment picks each fold's retriever on that fold's dev rows, and the project's default is the
variant with the best pooled dev recall@10 (``tools/retrieval_study.py`` writes the table).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from icd10_coder.realdata import Fold, RealRow
from icd10_coder.retrieval import RetrievalSettings, Retriever, recall_at

KS = (1, 5, 10, 20, 50)
# Name -> settings; the first is the retriever before this study (TF-IDF over two code views).
VARIANTS: dict[str, RetrievalSettings] = {
    "tfidf (previous default)": RetrievalSettings(neighbours=0),
    "tfidf, description view only": RetrievalSettings(neighbours=0, views=("description",)),
    "tfidf + doctor's turns": RetrievalSettings(neighbours=0, query_parts=("whole", "doctor")),
    "tfidf + cue sentences": RetrievalSettings(neighbours=0, query_parts=("whole", "cues")),
    "tfidf + cue sentences x2": RetrievalSettings(neighbours=0, query_parts=("whole", "cues"), part_weight=2.0),
    "tfidf on cue sentences only": RetrievalSettings(neighbours=0, query_parts=("cues",)),
    "tfidf + categories first (hierarchical)": RetrievalSettings(neighbours=0, category_weight=1.0),
    "dense (MiniLM) alone": RetrievalSettings(neighbours=0, views=(), dense_weight=1.0),
    "tfidf + dense": RetrievalSettings(neighbours=0, dense_weight=1.0),
    "tfidf + dense x2": RetrievalSettings(neighbours=0, dense_weight=2.0),
    "tfidf + cue sentences + dense": RetrievalSettings(neighbours=0, query_parts=("whole", "cues"),
                                                       dense_weight=1.0),
    "tfidf + cue sentences + dense x2": RetrievalSettings(neighbours=0, query_parts=("whole", "cues"),
                                                          dense_weight=2.0),
    "tfidf + cue sentences + dense + categories": RetrievalSettings(
        neighbours=0, query_parts=("whole", "cues"), dense_weight=1.0, category_weight=1.0),
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
    from icd10_coder import retrieval

    dev_rows = {row.row_id: row for fold in folds for row in fold.dev}
    results: dict[str, Any] = {}
    for name, settings in variants.items():
        if cold:
            retrieval._DENSE_MEMO.clear()
        built = time.perf_counter()
        retriever = Retriever.fit(settings)
        build_s = time.perf_counter() - built
        started = time.perf_counter()
        ranked = rankings(retriever, list(dev_rows.values()))
        per_dialogue = (time.perf_counter() - started) / max(1, len(dev_rows))
        pooled_rows = [row for fold in folds for row in fold.dev]
        pooled = recall_at([ranked[r.row_id] for r in pooled_rows], [r.code for r in pooled_rows], KS)
        by_fold = {fold.index: recall_at([ranked[r.row_id] for r in fold.dev], [r.code for r in fold.dev], KS)
                   for fold in folds}
        results[name] = {"settings": _plain(settings), "pooled": pooled, "by_fold": by_fold,
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


def _plain(settings: RetrievalSettings) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(settings).items()}


def markdown_table(results: dict[str, Any], chosen: str) -> str:
    """The pooled dev recall table: one row per variant, the chosen default in bold."""
    header = ("| variant | recall@1 | @5 | @10 | @20 | @50 | category@10 | s / dialogue |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [header]
    for name, result in results.items():
        code, category = result["pooled"]["code"], result["pooled"]["category"]
        label = f"**{name}** (default)" if name == chosen else name
        lines.append(f"| {label} | " + " | ".join(f"{code[k]:.3f}" for k in KS)
                     + f" | {category[10]:.3f} | {result['seconds_per_dialogue']:.2f} |")
    return "\n".join(lines)
