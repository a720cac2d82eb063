"""Stage 6: the retriever: index build, seconds per dialogue, recall on real dev rows."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from icd10_coder import retrieval
from icd10_coder.benchmarks.common import median, synthetic_rows
from icd10_coder.codes import normalize_code
from icd10_coder.paths import DENSE_ENCODER
from icd10_coder.realdata import REAL_FILES, category_folds, load_real_rows
from icd10_coder.retrieval import RetrievalSettings, Retriever
from icd10_coder.retrieval_study import VARIANTS, dev_recall


def bench_retrieval(rows: int, repeats: int = 3) -> dict[str, Any]:
    """Recall and CPU cost of the previous and the default retriever on the dev rows of the real category folds,
    and the default index's size, build time and cost per dialogue at scale."""
    import joblib

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
        retrieval.clear_caches()
        started = time.perf_counter()
        retriever = Retriever.fit(RetrievalSettings(), train)
        retriever.shortlist(texts[:1], 10)  # loads the code embeddings
        fits.append(time.perf_counter() - started)
        retrieval.clear_caches(dialogues_only=True)
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
                       "settings": RetrievalSettings().as_record()}
    return result
