"""Shortlist retrieval: the ICD-10-CM codes whose wording best matches a dialogue (no model).

Rankings combined by reciprocal rank (:func:`rank_fusion`), each one signal:

- **TF-IDF** (scikit-learn, word 1-3-grams, cosine) of each code text view against the dialogue and,
  with ``query_parts``, against parts of it (the doctor's turns; the sentences with diagnostic cue
  words, where MedSynth's doctors name the diagnosis). Views: **description** (the official text)
  and **full** (plus inclusion terms and the ancestors' descriptions);
- **dense** (``dense_weight``): all-MiniLM-L6-v2 embeddings of each code's description against the
  dialogue's sentences, the best sentence counting (:mod:`icd10_coder.dense`; offline, CPU);
- **categories first** (``category_weight``): a code found above also earns its category's rank;
- **neighbours** (when training dialogues are given): the codes of the nearest training
  dialogues, which helps when a code has several training rows, as in MedSynth (~5 per code).

The defaults are the variant with the best recall@10 on the dev rows of the real category folds
(``tools/retrieval_study.py``; the table is in GUIDE.md, a test keeps the defaults in step with it).

Deterministic (no randomness; ties broken by code). A fitted index is cached under
``<workspace>/retrieval-cache/`` keyed by a hash of everything it was built from, so it
is rebuilt exactly when its inputs change.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tqdm import tqdm

from icd10_coder.codes import billable_codes, description
from icd10_coder.dense import cached_encode, encode, ensure_encoder
from icd10_coder.dialogue import CUE_PATTERN, SENTENCE_BREAK, sentences, speaker_sentences
from icd10_coder.jsonl import read_jsonl
from icd10_coder.paths import REPO_ROOT, private_folder
from icd10_coder.window import evidence_window

# What the index is built from; part of the cache key.
INDEX_VERSION = 2
RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al. 2009)


def rank_credit(rank: int, weight: float = 1.0) -> float:
    """What the item at 0-based ``rank`` of one ranking adds to its combined score (reciprocal-rank fusion)."""
    return weight / (RRF_K + rank + 1)


def rank_fusion(rankings: Iterable[tuple[float, Iterable[str]]], k: int | None = None) -> list[tuple[str, float]]:
    """Weighted rankings combined by reciprocal rank: (code, score) best first, ties by code; the top ``k``."""
    combined: dict[str, float] = defaultdict(float)
    for weight, ranking in rankings:
        for rank, code in enumerate(ranking):
            combined[code] += rank_credit(rank, weight)
    return sorted(combined.items(), key=lambda item: (-item[1], item[0]))[:k]


VIEWS = ("description", "full")


QUERY_PARTS = ("whole", "doctor", "cues")


# The dev rows today's RetrievalSettings() defaults were chosen on (written by ``make retrieval-study``): a test
# split that holds some of them is scored by a retriever tuned partly on its own rows, and its report says so.
DEFAULTS_CHOSEN_ON = REPO_ROOT / "docs" / "generated" / "retrieval-study-dev-rows.json"


def defaults_chosen_on(test_ids: Iterable[str], record: Path = DEFAULTS_CHOSEN_ON) -> dict[str, Any] | None:
    """Which rows of a test split (real MedSynth row ids) the retriever's defaults were chosen on; None when the
    study's record is absent."""
    if not record.is_file():
        return None
    study = json.loads(record.read_text())
    test_ids = list(dict.fromkeys(test_ids))
    return {"test_rows": len(test_ids), "among_study_dev_rows": sorted(set(test_ids) & set(study["row_ids"])),
            "study_dev_rows": len(study["row_ids"]), "study_files": study["files"]}


@dataclass(frozen=True)
class RetrievalSettings:
    """The knobs of the retriever; every field is part of the cache key."""

    views: tuple[str, ...] = VIEWS  # code texts, each its own TF-IDF index, combined by rank
    neighbours: int = 10  # training dialogues consulted per query (0: codes only)
    # Weight of the neighbour ranking in the rank fusion (one code view weighs 1). Not measurable on the
    # shared sample (one row per code, so no neighbour ever holds the gold code); for codes never
    # trained on, neighbours can only add wrong codes.
    neighbour_weight: float = 1.0
    ngram_max: int = 3
    # Parts of the dialogue matched against the code texts, each its own ranking: "whole", the
    # "doctor"'s turns, the sentences with diagnostic "cues" (CUE_PATTERN); parts other than the
    # whole dialogue weigh ``part_weight`` in the rank fusion.
    query_parts: tuple[str, ...] = ("whole", "cues")
    part_weight: float = 1.0
    # Dense ranking (icd10_coder.dense): each code's description against the dialogue's sentences
    # (best sentence counts); 0 = off.
    dense_weight: float = 2.0
    # Hierarchical: a code also earns its category's rank among category texts (the category's own
    # description and all its codes'); 0 = off.
    category_weight: float = 0.0
    # The dense ranking's query encoder: a fine-tuned sentence-transformers folder (tools/train_encoder.py,
    # relative to the checkout) or "" for the base encoder. Code vectors always come from the base encoder.
    encoder: str = ""

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> RetrievalSettings:
        """The settings a data card or an adapter's prompt record wrote (``None``: today's defaults).

        A record must name every setting: one that lacks some was written by an older version, and guessing
        what it meant would silently serve another retriever than the one evaluated.
        """
        if record is None:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown, missing = set(record) - known, known - set(record)
        if unknown:
            raise ValueError(f"retriever record has unknown settings {sorted(unknown)}: written by a newer version?")
        if missing:
            raise ValueError(f"retriever record lacks {sorted(missing)}: written by an older version; run "
                             "`make prepare` (and train again) to record the retriever in full")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})

    def as_record(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists), what data cards and prompt records hold."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


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


def query_text(dialogue: str, part: str) -> str:
    """The part of a dialogue one query ranking reads; the whole dialogue when the part is empty."""
    if part == "whole":
        return dialogue
    if part == "doctor":
        chosen = [line for line in dialogue.split("\n") if line.lower().startswith("doctor:")]
    elif part == "cues":
        chosen = [s for s in SENTENCE_BREAK.split(dialogue) if CUE_PATTERN.search(s)]
    else:
        raise ValueError(f"unknown query part {part!r} (known: {', '.join(QUERY_PARTS)})")
    return "\n".join(chosen) or dialogue


# Sentence embeddings of recent dialogues per encoder (a study ranks the same rows with many settings): ~60 KB each.
DENSE_MEMO_SIZE = 2048
_DENSE_MEMO: dict[tuple[str, str], Any] = {}


@lru_cache(maxsize=2)
def code_description_vectors(codes: tuple[str, ...]) -> Any:
    """Unit embeddings of every code's description (float32), shared by all workspaces (see dense)."""

    return cached_encode([description(c) or "" for c in codes], ensure_encoder(), "codes-description").astype(
        "float32")


def clear_caches(dialogues_only: bool = False) -> None:
    """Forget the dialogue embeddings and (unless ``dialogues_only``) the code indexes this process built: a
    benchmark's cold start."""
    _DENSE_MEMO.clear()
    if not dialogues_only:
        _code_index.cache_clear()
        code_description_vectors.cache_clear()


def _category_documents(codes: list[str]) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """Category ids, their texts (own description + every code's) and the code positions per category."""
    members: dict[str, list[int]] = defaultdict(list)
    for position, code in enumerate(codes):
        members[code[:3]].append(position)
    names = sorted(members)
    texts = [" ; ".join([description(name) or ""] + [description(codes[j]) or "" for j in members[name]])
             for name in names]
    return names, texts, members


@lru_cache(maxsize=4)
def _code_index(view: str, ngram_max: int) -> tuple[Any, Any]:
    """TF-IDF over every billable code's text in one view (~15 s; shared by retrievers in one process)."""
    vectorizer = _vectorizer(ngram_max)
    return vectorizer, vectorizer.fit_transform([code_text(c, view) for c in billable_codes()])


@dataclass
class Retriever:
    """A fitted shortlist index: call :meth:`shortlist` with dialogues."""

    settings: RetrievalSettings
    codes: list[str]
    indexes: list[tuple[Any, Any]]  # (vectorizer, code matrix) per view
    train_codes: list[str] = field(default_factory=list)
    train_vectorizer: Any = None
    train_matrix: Any = None
    categories: list[str] = field(default_factory=list)
    category_index: tuple[Any, Any] | None = None
    category_members: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def fit(cls, settings: RetrievalSettings = RetrievalSettings(),
            train: list[tuple[str, str]] | None = None) -> Retriever:
        """Fit on all billable codes and, optionally, (dialogue, gold code) training pairs."""
        for part in settings.query_parts:
            query_text("x", part)  # unknown parts fail here, not at the first query
        codes = list(billable_codes())
        retriever = cls(settings, codes, [_code_index(view, settings.ngram_max) for view in settings.views])
        if train and settings.neighbours:
            retriever.train_codes = [code for _, code in train]
            retriever.train_vectorizer = _vectorizer(settings.ngram_max)
            retriever.train_matrix = retriever.train_vectorizer.fit_transform([d for d, _ in train])
        if settings.category_weight:
            names, texts, members = _category_documents(codes)
            vectorizer = _vectorizer(settings.ngram_max)
            retriever.categories, retriever.category_members = names, members
            retriever.category_index = (vectorizer, vectorizer.fit_transform(texts))
        return retriever

    def shortlist(self, dialogues: list[str], k: int = 10,
                  exclude_self: list[int | None] | None = None) -> list[list[tuple[str, float]]]:
        """Top ``k`` (code, rank-fusion score) per dialogue, best first.

        ``exclude_self[i]``: index of dialogue i in the training pairs, left out of its own
        neighbours (shortlists for training rows must not peek at their own gold code).
        """
        from sklearn.metrics.pairwise import linear_kernel

        settings = self.settings
        weighted = []  # (weight, score matrix dialogues x codes)
        for part in settings.query_parts:
            queries = [query_text(d, part) for d in dialogues]
            weight = 1.0 if part == "whole" else settings.part_weight
            weighted += [(weight, linear_kernel(vectorizer.transform(queries), matrix))
                         for vectorizer, matrix in self.indexes]
        if settings.dense_weight:
            weighted.append((settings.dense_weight, self._dense_scores(dialogues)))
        category_scores = None
        if self.category_index is not None:
            vectorizer, matrix = self.category_index
            category_scores = linear_kernel(vectorizer.transform(dialogues), matrix)
        neighbour_scores = None
        if self.train_matrix is not None:
            neighbour_scores = linear_kernel(self.train_vectorizer.transform(dialogues), self.train_matrix)
        results = []
        depth = max(k, 100)
        for i in range(len(dialogues)):
            # a code sharing no word with the dialogue earns no rank credit
            rankings = [(weight, [self.codes[j] for j in _top(scores[i], depth, self.codes) if scores[i][j] > 0])
                        for weight, scores in weighted]
            credit = defaultdict(float, rank_fusion(rankings))
            if category_scores is not None:
                for rank, j in enumerate(_top(category_scores[i], 10, self.categories)):
                    for member in self.category_members[self.categories[j]]:
                        if self.codes[member] in credit:  # lifts the category's codes already found
                            credit[self.codes[member]] += rank_credit(rank, settings.category_weight)
            if neighbour_scores is not None:
                for rank, code in enumerate(self._neighbour_ranking(neighbour_scores[i], exclude_self, i)):
                    credit[code] += rank_credit(rank, settings.neighbour_weight)
            ranked = sorted(credit.items(), key=lambda item: (-item[1], item[0]))[:k]
            results.append([(code, round(score, 6)) for code, score in ranked])
        return results

    def sentence_vectors(self, dialogues: list[str]) -> list[Any]:
        """Unit vectors of each dialogue's :func:`sentences` under this retriever's query encoder (memoised)."""

        path = _encoder_path(self.settings.encoder)
        # A retrained encoder in the same folder must not meet the old one's vectors.
        encoder = f"{path}@{(path / 'model.safetensors').stat().st_mtime_ns}" if path else ""
        found = {d: _DENSE_MEMO[(encoder, d)] for d in dict.fromkeys(dialogues) if (encoder, d) in _DENSE_MEMO}
        todo = [d for d in dict.fromkeys(dialogues) if d not in found]
        # One dialogue per encoder call: a dialogue's vectors then never depend on which other dialogues
        # were encoded beside it (the batch's shape changes the float rounding), so a shortlist served for
        # one dialogue is the very shortlist its evaluation logged. Costs ~1.3x encoding a split at once
        # (150 dialogues, 2 cores: 28 s vs 22 s); batches of 16 keep the padding small.
        progress = tqdm(todo, desc="sentence vectors", unit="dialogue", disable=None if len(todo) > 50 else True)
        for dialogue in progress:
            found[dialogue] = encode(sentences(dialogue), batch_size=16, encoder=path)
            if len(_DENSE_MEMO) >= DENSE_MEMO_SIZE:
                _DENSE_MEMO.pop(next(iter(_DENSE_MEMO)))
            _DENSE_MEMO[(encoder, dialogue)] = found[dialogue]
        return [found[d] for d in dialogues]

    def code_vectors(self, codes: list[str]) -> Any:
        """The fixed (base encoder) description vectors of ``codes``; zeros for a code outside the code set."""
        import numpy as np

        matrix = code_description_vectors(tuple(self.codes))
        position = _positions(tuple(self.codes))
        return np.stack([matrix[position[c]] if c in position else np.zeros(matrix.shape[1], dtype=matrix.dtype)
                         for c in codes]) if codes else np.zeros((0, matrix.shape[1]), dtype=matrix.dtype)

    def _dense_scores(self, dialogues: list[str]) -> Any:
        """Per dialogue and code: the best cosine similarity of any of its sentences to the code's description."""
        import numpy as np

        codes = code_description_vectors(tuple(self.codes))
        return np.stack([(vectors @ codes.T).max(axis=0) for vectors in self.sentence_vectors(dialogues)])

    def window(self, dialogue: str, candidates: list[str], budget: int) -> str:
        """The dialogue's evidence window for ``candidates`` (:func:`icd10_coder.window.evidence_window`)."""

        units = speaker_sentences(dialogue)
        if not units:
            return dialogue
        vectors = self.sentence_vectors([dialogue])[0]
        similarity = (vectors @ self.code_vectors(candidates).T).max(axis=1) if candidates else vectors[:, 0] * 0
        return evidence_window(units, [float(s) for s in similarity], budget)

    def _neighbour_ranking(self, similarities, exclude_self: list[int | None] | None, i: int) -> list[str]:
        """Codes of the nearest training dialogues, ranked by summed similarity."""
        skip = exclude_self[i] if exclude_self else None
        nearest = [j for j in _top(similarities, self.settings.neighbours + 1, self.train_codes) if j != skip]
        votes: dict[str, float] = defaultdict(float)
        for j in nearest[: self.settings.neighbours]:
            if similarities[j] > 0:
                votes[self.train_codes[j]] += float(similarities[j])
        return [code for code, _ in sorted(votes.items(), key=lambda item: (-item[1], item[0]))]


def _encoder_path(encoder: str) -> Path | None:
    """A recorded encoder folder as a path on this machine (None: the base encoder)."""
    if not encoder:
        return None

    path = Path(encoder) if Path(encoder).is_absolute() else REPO_ROOT / encoder
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{encoder}: the fine-tuned query encoder is missing (tools/train_encoder.py "
                                "writes it)")
    return path


@lru_cache(maxsize=2)
def _positions(codes: tuple[str, ...]) -> dict[str, int]:
    return {code: index for index, code in enumerate(codes)}


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
    for number, record in enumerate(read_jsonl(train_jsonl), start=1):
        if not record.get("dialogue") or not record.get("gold_code"):
            raise ValueError(f"{train_jsonl} record {number}: no dialogue or gold_code")
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
