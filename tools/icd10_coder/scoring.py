"""Per-answer metrics, shared by the lm-eval task, the report and predict's measurements.

Each metric is 0/1 per sample; lm-eval averages them (mean + stderr) and the report
adds confidence intervals and paired tests on the same per-sample values.
"""

from __future__ import annotations

from icd10_coder.codes import hierarchy, is_billable, normalize_code
from icd10_coder.parsing import extract_codes

# Order used by every table and plot.
METRICS: tuple[str, ...] = (
    "exact_match",
    "category_match",
    "block_match",
    "chapter_match",
    "top3_match",
    "valid_code_rate",
    "parse_failure_rate",
)
# parse_failure_rate is the one metric where lower is better.
LOWER_IS_BETTER = frozenset({"parse_failure_rate"})


def _same_level(gold: str, predicted: str, level: str) -> bool:
    gold_h, pred_h = hierarchy(gold), hierarchy(predicted)
    if gold_h is None or pred_h is None:
        return False
    gold_value, pred_value = getattr(gold_h, level), getattr(pred_h, level)
    return gold_value is not None and gold_value == pred_value


def score_codes(gold: str, predicted: list[str]) -> dict[str, int]:
    """Score parsed, canonical predicted codes (best first) against one gold code."""
    gold_code = normalize_code(gold)
    if gold_code is None:
        raise ValueError(f"gold code {gold!r} is not an ICD-10 code")
    if not predicted:
        return {m: int(m == "parse_failure_rate") for m in METRICS}
    first = predicted[0]
    return {
        "exact_match": int(first == gold_code),
        "category_match": int(first[:3] == gold_code[:3]),
        "block_match": int(_same_level(gold_code, first, "block")),
        "chapter_match": int(_same_level(gold_code, first, "chapter")),
        "top3_match": int(gold_code in predicted[:3]),
        "valid_code_rate": int(is_billable(first)),
        "parse_failure_rate": 0,
    }


def score_answer(gold: str, answer: str | None) -> dict[str, int]:
    """Parse a raw model answer and score it."""
    return score_codes(gold, extract_codes(answer))
