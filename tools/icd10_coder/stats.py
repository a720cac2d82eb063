"""The statistics every comparison uses: Wilson intervals, exact McNemar tests, Holm's correction.

Small real test sets (tens to hundreds of dialogues) need intervals that stay honest at small n
and near 0 or 1, and paired tests on the same dialogues: two approaches scored on the same rows
differ only where one is right and the other wrong. The computations are statsmodels' (the field's
standard); this module only shapes the inputs (per-item 0/1 dicts) and outputs (the report's keys).
"""

from __future__ import annotations

import math
from typing import Any


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval: honest at small n and at 0 or 1, unlike mean +- 2 stderr."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return (math.nan, math.nan)
    low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
    return (max(0.0, float(low)), min(1.0, float(high)))


def mcnemar(a: dict[str, int], b: dict[str, int], lower_is_better: bool = False) -> dict[str, Any]:
    """Exact McNemar test on the items both approaches answered (two-sided binomial on discordant pairs).

    ``a_only``/``b_only`` count items where only A (only B) scores 1; ``a_better``/``b_better``
    turn that into who did better, which for a lower-is-better metric is the other one.
    """
    from statsmodels.stats.contingency_tables import mcnemar as exact_mcnemar

    common = sorted(set(a) & set(b))
    only_a = sum(1 for k in common if a[k] and not b[k])
    only_b = sum(1 for k in common if b[k] and not a[k])
    both = sum(1 for k in common if a[k] and b[k])
    p_value = 1.0 if only_a + only_b == 0 else min(1.0, float(exact_mcnemar(
        [[both, only_a], [only_b, len(common) - both - only_a - only_b]], exact=True).pvalue))
    diff = (sum(b[k] for k in common) - sum(a[k] for k in common)) / len(common) if common else math.nan
    a_better, b_better = (only_b, only_a) if lower_is_better else (only_a, only_b)
    return {"n_paired": len(common), "a_only": only_a, "b_only": only_b, "a_better": a_better,
            "b_better": b_better, "difference_b_minus_a": diff, "p_value": p_value}


def holm(tests: list[dict[str, Any]]) -> None:
    """Add ``p_holm`` to every test: Holm's step-down correction over all of them (family-wise error 5%)."""
    from statsmodels.stats.multitest import multipletests

    if not tests:
        return
    corrected = multipletests([t["p_value"] for t in tests], alpha=0.05, method="holm")[1]
    for test, p_holm in zip(tests, corrected, strict=True):
        test["p_holm"] = float(p_holm)
