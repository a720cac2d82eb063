"""The statistics every comparison uses: Wilson intervals, exact McNemar tests, Holm's correction.

Small real test sets (tens to hundreds of dialogues) need intervals that stay honest at small n
and near 0 or 1, and paired tests on the same dialogues: two approaches scored on the same rows
differ only where one is right and the other wrong.
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval: honest at small n and at 0 or 1, unlike mean +- 2 stderr."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar(a: dict[str, int], b: dict[str, int], lower_is_better: bool = False) -> dict[str, Any]:
    """Exact McNemar test on the items both approaches answered (two-sided binomial on discordant pairs).

    ``a_only``/``b_only`` count items where only A (only B) scores 1; ``a_better``/``b_better``
    turn that into who did better, which for a lower-is-better metric is the other one.
    """
    common = sorted(set(a) & set(b))
    only_a = sum(1 for k in common if a[k] and not b[k])
    only_b = sum(1 for k in common if b[k] and not a[k])
    discordant = only_a + only_b
    if discordant == 0:
        p_value = 1.0
    else:
        tail = sum(math.comb(discordant, i) for i in range(0, min(only_a, only_b) + 1)) / 2**discordant
        p_value = min(1.0, 2 * tail)
    diff = (sum(b[k] for k in common) - sum(a[k] for k in common)) / len(common) if common else math.nan
    a_better, b_better = (only_b, only_a) if lower_is_better else (only_a, only_b)
    return {"n_paired": len(common), "a_only": only_a, "b_only": only_b, "a_better": a_better,
            "b_better": b_better, "difference_b_minus_a": diff, "p_value": p_value}


def holm(tests: list[dict[str, Any]]) -> None:
    """Add ``p_holm`` to every test: Holm's step-down correction over all of them (family-wise error 5%)."""
    order = sorted(range(len(tests)), key=lambda i: tests[i]["p_value"])
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(tests) - rank) * tests[index]["p_value"]))
        tests[index]["p_holm"] = running
