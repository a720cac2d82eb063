"""How far a suggestion's confidence can be trusted: bands, their measured accuracy, and the ECE.

A confidence (icd10_coder.predictor: the top code's share of the beams' probability mass)
is shown to coders as a band, never as a bare number: "high", "medium" or "low", each with
the accuracy ``make bench`` measured for that band (stage ``app``). The expected calibration
error (ECE, 10 equal-width bins) says how far the raw numbers are from observed accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Lower edge of each band, highest first.
BANDS: tuple[tuple[str, float], ...] = (("high", 0.6), ("medium", 0.3), ("low", 0.0))
ECE_BINS = 10


def band(confidence: float | None) -> str:
    if confidence is None:
        return "unknown"
    return next(name for name, low in BANDS if confidence >= low)


def measure(pairs: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """(confidence of the top suggestion, was it right) pairs -> ECE, reliability bins and band accuracy."""
    n = len(pairs)
    if n == 0:
        return {"n": 0, "ece": None, "bins": [], "bands": {}}
    bins = []
    ece = 0.0
    for i in range(ECE_BINS):
        low, high = i / ECE_BINS, (i + 1) / ECE_BINS
        inside = [(c, ok) for c, ok in pairs if low <= c < high or (i == ECE_BINS - 1 and c == 1.0)]
        if inside:
            confidence = sum(c for c, _ in inside) / len(inside)
            accuracy = sum(ok for _, ok in inside) / len(inside)
            ece += len(inside) / n * abs(accuracy - confidence)
            bins.append({"range": [low, high], "n": len(inside), "mean_confidence": round(confidence, 4),
                         "accuracy": round(accuracy, 4)})
    bands = {}
    for name, _ in BANDS:
        inside = [ok for c, ok in pairs if band(c) == name]
        bands[name] = {"n": len(inside), "accuracy": round(sum(inside) / len(inside), 4) if inside else None}
    return {"n": n, "ece": round(ece, 4), "accuracy": round(sum(ok for _, ok in pairs) / n, 4),
            "bins": bins, "bands": bands}
