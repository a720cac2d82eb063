"""How far a suggestion's confidence can be trusted: bands, their measured accuracy, and the ECE.

A confidence (the served default: the top candidate's probability over the shortlist at the
temperature fitted on dev, ``icd10_coder.choice``; with ``--generate``, the top code's share of
the beams' probability mass) is shown to coders as a band with the accuracy measured for that
band on held-out real rows: "high", "medium", or below that "not sure", where the page says
"not sure — search the codes" instead of offering a code as likely. The expected calibration
error (ECE, 10 equal-width bins) says how far the numbers are from observed accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NOT_SURE = "not sure"
# Lower edge of each band, highest first. Below 0.3 a calibrated suggestion is right less than a
# third of the time: the coder is told to search instead.
BANDS: tuple[tuple[str, float], ...] = (("high", 0.6), ("medium", 0.3), (NOT_SURE, 0.0))
ECE_BINS = 10


def band(confidence: float | None) -> str:
    if confidence is None:
        return "unknown"
    return next(name for name, low in BANDS if confidence >= low)


def measure(pairs: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """(confidence of the top suggestion, was it right) pairs -> ECE, reliability bins and band accuracy."""
    n = len(pairs)
    if n == 0:
        return {"n": 0, "ece": None, "mean_confidence": None, "bins": [], "bands": {}}
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
            "mean_confidence": round(sum(c for c, _ in pairs) / n, 4),
            "bins": bins, "bands": bands}


def markdown(measured: dict[str, dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """Report lines: per approach ECE, top-1 accuracy and each band's accuracy, then the reliability bins."""
    if not measured:
        return []
    band_names = [name for name, _ in BANDS]
    lines = ["| approach | n | top-1 right | mean confidence | ECE | "
             + " | ".join(f"band {b}: right (n)" for b in band_names) + " |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in band_names) + " |"]
    for name, m in measured.items():
        cells = [f"{m['bands'][b]['accuracy']:.2f} ({m['bands'][b]['n']})" if m["bands"][b]["n"] else "– (0)"
                 for b in band_names]
        lines.append(f"| {labels.get(name, name)} | {m['n']} | {m['accuracy']:.3f} | {m['mean_confidence']:.3f} | "
                     f"{m['ece']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Reliability (confidence bin: mean confidence → share right, n):", ""]
    for name, m in measured.items():
        bins = "; ".join(f"[{b['range'][0]:.1f}, {b['range'][1]:.1f}): {b['mean_confidence']:.2f} → "
                         f"{b['accuracy']:.2f} ({b['n']})" for b in m["bins"])
        lines.append(f"- {labels.get(name, name)}: {bins}")
    return lines


def plot_reliability(measured: dict[str, dict[str, Any]], labels: dict[str, str], path: Any) -> None:
    """Reliability diagram: per confidence bin, the share of top suggestions that were right."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for name, m in measured.items():
        xs = [b["mean_confidence"] for b in m["bins"]]
        ys = [b["accuracy"] for b in m["bins"]]
        axis.plot(xs, ys, marker="o", label=f"{labels.get(name, name)} (ECE {m['ece']:.2f}, n={m['n']})")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence of the top suggestion", ylabel="share right",
             title="Reliability on held-out test dialogues")
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
