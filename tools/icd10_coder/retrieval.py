"""Shortlist retrieval: the ICD-10-CM codes whose wording best matches a dialogue (no model).

scikit-learn TF-IDF retrievers (word 1-3-grams, cosine similarity), fused by reciprocal rank:

- **description**: every billable code's official description;
- **full**: the description plus the inclusion terms ``simple-icd-10-cm`` holds for the code
  and its ancestors, and the ancestors' descriptions (more words to match, more noise:
  better at rank 1, slightly worse at rank 10 on its own; fused with the above, best);
- **neighbours** (when training dialogues are given): the codes of the nearest training
  dialogues, which helps when a code has several training rows, as in MedSynth (~5 per code).

Measured on the 121 real MedSynth rows of the shared sample (GUIDE.md section 6, make bench):
recall@1 0.26 -> 0.42 and recall@10 0.63 -> 0.64 against TF-IDF over descriptions alone.

Deterministic (no randomness; ties broken by code). A fitted index is cached under
``<workspace>/retrieval-cache/`` keyed by a hash of everything it was built from, so it
is rebuilt exactly when its inputs change.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from icd10_coder.codes import billable_codes, description

# What the index is built from; part of the cache key.
INDEX_VERSION = 1
RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al. 2009)


VIEWS = ("description", "full")


@dataclass(frozen=True)
class RetrievalSettings:
    """The knobs of the retriever; every field is part of the cache key."""

    views: tuple[str, ...] = VIEWS  # code texts, each its own TF-IDF index, fused by rank
    neighbours: int = 10  # training dialogues consulted per query (0: codes only)
    # Weight of the neighbour ranking in the fusion (one code view weighs 1). Not measurable on the
    # shared sample (one row per code, so no neighbour ever holds the gold code); for codes never
    # trained on, neighbours can only add wrong codes.
    neighbour_weight: float = 1.0
    ngram_max: int = 3


def code_text(code: str, view: str) -> str:
    """What a code is matched on in one view (see the module docstring)."""
    import simple_icd_10_cm as cm

    parts = [description(code) or ""]
    if view == "full":
        lineage = [code] + [a for a in cm.get_ancestors(code) if not cm.is_chapter_or_block(a)]
        for item in lineage:
            parts += cm.get_inclusion_term(item)
        parts += [cm.get_description(a) for a in lineage[1:]]
    elif view != "description":
        raise ValueError(f"unknown retrieval view {view!r} (known: {', '.join(VIEWS)})")
    return " ; ".join(p for p in parts if p)


def _vectorizer(ngram_max: int):
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Dialogues are long and chatty: sublinear tf keeps one repeated word from dominating.
    return TfidfVectorizer(sublinear_tf=True, ngram_range=(1, ngram_max), stop_words="english",
                           token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b", dtype="float32")


@dataclass
class Retriever:
    """A fitted shortlist index: call :meth:`shortlist` with dialogues."""

    settings: RetrievalSettings
    codes: list[str]
    indexes: list[tuple[Any, Any]]  # (vectorizer, code matrix) per view
    train_codes: list[str] = field(default_factory=list)
    train_vectorizer: Any = None
    train_matrix: Any = None

    @classmethod
    def fit(cls, settings: RetrievalSettings = RetrievalSettings(),
            train: list[tuple[str, str]] | None = None) -> Retriever:
        """Fit on all billable codes and, optionally, (dialogue, gold code) training pairs."""
        codes = list(billable_codes())
        indexes = []
        for view in settings.views:
            vectorizer = _vectorizer(settings.ngram_max)
            indexes.append((vectorizer, vectorizer.fit_transform([code_text(c, view) for c in codes])))
        retriever = cls(settings, codes, indexes)
        if train and settings.neighbours:
            retriever.train_codes = [code for _, code in train]
            retriever.train_vectorizer = _vectorizer(settings.ngram_max)
            retriever.train_matrix = retriever.train_vectorizer.fit_transform([d for d, _ in train])
        return retriever

    def shortlist(self, dialogues: list[str], k: int = 10,
                  exclude_self: list[int | None] | None = None) -> list[list[tuple[str, float]]]:
        """Top ``k`` (code, fused score) per dialogue, best first.

        ``exclude_self[i]``: index of dialogue i in the training pairs, left out of its own
        neighbours (shortlists for training rows must not peek at their own gold code).
        """
        from sklearn.metrics.pairwise import linear_kernel

        view_scores = [linear_kernel(vectorizer.transform(dialogues), matrix) for vectorizer, matrix in self.indexes]
        neighbour_scores = None
        if self.train_matrix is not None:
            neighbour_scores = linear_kernel(self.train_vectorizer.transform(dialogues), self.train_matrix)
        results = []
        depth = max(k, 100)
        for i in range(len(dialogues)):
            fused: dict[str, float] = defaultdict(float)
            for scores in view_scores:
                for rank, j in enumerate(_top(scores[i], depth, self.codes)):
                    if scores[i][j] > 0:  # a code sharing no word with the dialogue earns no rank credit
                        fused[self.codes[j]] += 1.0 / (RRF_K + rank + 1)
            if neighbour_scores is not None:
                for rank, code in enumerate(self._neighbour_ranking(neighbour_scores[i], exclude_self, i)):
                    fused[code] += self.settings.neighbour_weight / (RRF_K + rank + 1)
            ranked = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
            results.append([(code, round(score, 6)) for code, score in ranked])
        return results

    def _neighbour_ranking(self, similarities, exclude_self: list[int | None] | None, i: int) -> list[str]:
        """Codes of the nearest training dialogues, ranked by summed similarity."""
        skip = exclude_self[i] if exclude_self else None
        nearest = [j for j in _top(similarities, self.settings.neighbours + 1, self.train_codes) if j != skip]
        votes: dict[str, float] = defaultdict(float)
        for j in nearest[: self.settings.neighbours]:
            if similarities[j] > 0:
                votes[self.train_codes[j]] += float(similarities[j])
        return [code for code, _ in sorted(votes.items(), key=lambda item: (-item[1], item[0]))]


def _top(scores, n: int, names: list[str]) -> list[int]:
    """Indices of the ``n`` highest scores, ties broken by name (deterministic)."""
    import numpy as np

    n = min(n, len(names))
    candidates = np.argpartition(-scores, n - 1)[: n * 2 if n * 2 < len(names) else len(names)]
    threshold = np.sort(scores)[-n]
    candidates = np.union1d(candidates, np.nonzero(scores >= threshold)[0])
    return sorted(candidates.tolist(), key=lambda j: (-scores[j], names[j]))[:n]


# ---------------------------------------------------------------- cache


def cache_key(settings: RetrievalSettings, train: list[tuple[str, str]] | None) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"index": INDEX_VERSION, "settings": settings.__dict__,
                              "sklearn": version("scikit-learn"), "icd": version("simple-icd-10-cm")},
                             sort_keys=True).encode())
    for dialogue, code in train or []:
        digest.update(code.encode() + b"\0" + dialogue.encode() + b"\0")
    return digest.hexdigest()[:16]


def load_or_fit(cache_dir: Path | None, settings: RetrievalSettings = RetrievalSettings(),
                train: list[tuple[str, str]] | None = None) -> Retriever:
    """The fitted index for these inputs: from ``cache_dir`` when built before, else fitted and stored."""
    import joblib

    from icd10_coder.paths import private_folder

    path = cache_dir / f"index-{cache_key(settings, train)}.joblib" if cache_dir else None
    if path is not None and path.is_file():
        return joblib.load(path)
    retriever = Retriever.fit(settings, train)
    if path is not None:
        private_folder(cache_dir)  # the neighbour index holds training dialogues' vocabulary
        joblib.dump(retriever, path)
        path.chmod(0o600)
    return retriever


def read_training_pairs(train_jsonl: Path) -> list[tuple[str, str]]:
    """(dialogue, gold code) pairs from a prepared ``train.jsonl`` (its ``dialogue`` and ``gold_code``)."""
    pairs = []
    for line in train_jsonl.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            pairs.append((record["dialogue"], record["gold_code"]))
    return pairs


def recall_at(ranked: list[list[str]], gold: list[str], ks: tuple[int, ...] = (1, 5, 10, 20, 50)) -> dict[str, Any]:
    """Share of dialogues whose gold code (and 3-character category) is in the top k."""
    def category(code: str) -> str:
        return re.sub(r"\..*$", "", code)

    n = len(gold)
    return {"n": n,
            "code": {k: round(sum(g in r[:k] for r, g in zip(ranked, gold, strict=True)) / n, 4) for k in ks},
            "category": {k: round(sum(category(g) in {category(c) for c in r[:k]}
                                      for r, g in zip(ranked, gold, strict=True)) / n, 4) for k in ks}}
