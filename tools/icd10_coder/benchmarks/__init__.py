"""The benchmark stages of ``make bench`` (``tools/bench.py`` is the command line): what users pay for.

One module per stage; each ``bench_*`` function measures its stage and returns a JSON-able dict that says
what was measured on what, and :mod:`.markdown` renders them. :data:`STAGES` lists them in the order
``make bench`` runs them.
"""

from __future__ import annotations

from icd10_coder.benchmarks.app import bench_app
from icd10_coder.benchmarks.approach_cost import bench_approach_cost, bench_prompt_cost
from icd10_coder.benchmarks.common import hardware, median, synthetic_rows
from icd10_coder.benchmarks.data import (
    SEQUENCE_LENS,
    TARGET_SHARE,
    bench_prepare,
    bench_tokens,
    length_grouped_batches,
    packed,
    random_batches,
)
from icd10_coder.benchmarks.evaluation import bench_eval
from icd10_coder.benchmarks.markdown import (
    app_markdown,
    markdown,
    page_summary,
    prompt_cost_markdown,
    retrieval_markdown,
)
from icd10_coder.benchmarks.prediction import bench_predict
from icd10_coder.benchmarks.retrieval_cost import bench_retrieval
from icd10_coder.benchmarks.training import bench_training

STAGES = ("prepare", "tokens", "training", "evaluation", "predict", "retrieval", "approach_cost", "prompt_cost",
          "app")

__all__ = ["SEQUENCE_LENS", "STAGES", "TARGET_SHARE", "app_markdown", "bench_app", "bench_approach_cost", "bench_eval",
           "bench_predict", "bench_prepare", "bench_prompt_cost", "bench_retrieval", "bench_tokens", "bench_training",
           "hardware", "length_grouped_batches", "markdown", "median", "packed", "page_summary", "prompt_cost_markdown",
           "random_batches", "retrieval_markdown", "synthetic_rows"]
