"""How far a suggestion's confidence can be trusted: the calibrator, bands, their measured accuracy, the ECE.

The one home of "confidence": the probability a :class:`Calibrator` gives the top candidate of a scored
shortlist (choice by likelihood fused with retrieval, ``icd10_coder.choice.score_shortlist``). Beam
search's share of the beams is not a confidence and gets no band. A calibrator is one of

- **temperature**: softmax of the shortlist's fused scores at a fitted temperature;
- **platt**: logistic regression of "the top candidate is right" on the top candidate's margin (its fused
  score minus the runner-up's), which keeps how far ahead the top is;
- **isotonic**: the same, monotone and non-parametric (scikit-learn's isotonic regression).

For platt and isotonic the top candidate gets the fitted probability and the others share the rest in
their softmax proportions. Fitted on the dev split (``tools/fuse.py``: temperature) or on out-of-fold
predictions (``tools/calibrate.py``: all three, picked by cross-validated log loss).

A confidence is shown to coders as a band with the accuracy measured for that band on held-out real
rows: "high", "medium", or below that "not sure", where the page says "not sure — search the codes"
instead of offering a code as likely. The expected calibration error (ECE, 10 equal-width bins) says how
far the numbers are from observed accuracy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

NOT_SURE = "not sure"
# Lower edge of each band, highest first. Below 0.3 a calibrated suggestion is right less than a
# third of the time: the coder is told to search instead.
BANDS: tuple[tuple[str, float], ...] = (("high", 0.6), ("medium", 0.3), (NOT_SURE, 0.0))
ECE_BINS = 10
METHODS = ("temperature", "platt", "isotonic")
# Temperatures tried: 0.01 .. 10, geometric.
TEMPERATURE_GRID: tuple[float, ...] = tuple(round(10 ** (-2 + i / 20), 5) for i in range(61))
CLIP = 1e-6  # probabilities kept inside (CLIP, 1 - CLIP) for the log loss


def probabilities(fused: Sequence[float], temperature: float) -> list[float]:
    """Softmax of the fused scores at ``temperature``: a probability over the shortlist."""
    if not fused:
        return []
    scaled = [f / temperature for f in fused]
    top = max(scaled)
    weights = [math.exp(s - top) for s in scaled]
    total = sum(weights)
    return [w / total for w in weights]


def margin(fused: Sequence[float]) -> float:
    """The top candidate's fused score minus the runner-up's (1 when the list has one candidate)."""
    ordered = sorted(fused, reverse=True)
    return ordered[0] - ordered[1] if len(ordered) > 1 else 1.0


@dataclass(frozen=True)
class Calibrator:
    """Fused scores of a shortlist -> a probability per candidate; the top's is the shown confidence."""

    method: str = "temperature"
    temperature: float = 1.0  # softmax temperature (every method: it spreads what the top does not take)
    platt: tuple[float, float] = (0.0, 0.0)  # slope, intercept on the top margin
    isotonic: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())  # margins -> probabilities, increasing
    fitted_on: str = ""  # where, in words (split, rows)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r} (known: {', '.join(METHODS)})")

    def top_probability(self, fused: Sequence[float]) -> float:
        """The probability that the top candidate is the right code."""
        if self.method == "temperature":
            return max(probabilities(fused, self.temperature))
        x = margin(fused)
        if self.method == "platt":
            slope, intercept = self.platt
            return 1 / (1 + math.exp(-(slope * x + intercept)))
        xs, ys = self.isotonic
        return _interpolate(x, xs, ys)

    def probabilities(self, fused: Sequence[float]) -> list[float]:
        """A probability per candidate (list order)."""
        softmax = probabilities(fused, self.temperature)
        if self.method == "temperature" or not fused:
            return softmax
        top = max(range(len(fused)), key=lambda i: (fused[i], -i))
        confidence = self.top_probability(fused)
        rest = 1 - softmax[top]
        others = len(fused) - 1
        return [confidence if i == top else (1 - confidence) * (p / rest if rest > 0 else 1 / others)
                for i, p in enumerate(softmax)]

    def as_record(self) -> dict[str, Any]:
        return {"method": self.method, "temperature": self.temperature, "platt": list(self.platt),
                "isotonic": {"margin": list(self.isotonic[0]), "probability": list(self.isotonic[1])},
                "fitted_on": self.fitted_on}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Calibrator:
        missing = [key for key in ("method", "temperature", "platt", "isotonic", "fitted_on") if key not in record]
        if missing:
            raise ValueError(f"calibration record lacks {missing}: written by an older version; run tools/fuse.py "
                             "(or tools/calibrate.py) again")
        return cls(method=record["method"], temperature=float(record["temperature"]),
                   platt=(float(record["platt"][0]), float(record["platt"][1])),
                   isotonic=(tuple(map(float, record["isotonic"]["margin"])),
                             tuple(map(float, record["isotonic"]["probability"]))),
                   fitted_on=str(record["fitted_on"]))


def _interpolate(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """Piecewise-linear through (xs, ys), flat beyond the ends (isotonic regression's own prediction)."""
    if not xs:
        raise ValueError("an isotonic calibrator without points")
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    right = next(i for i, edge in enumerate(xs) if edge >= x)
    x0, x1, y0, y1 = xs[right - 1], xs[right], ys[right - 1], ys[right]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1


def log_loss(pairs: Sequence[tuple[float, bool]]) -> float:
    """Mean log loss of (probability the top candidate is right, was it right) pairs."""
    total = 0.0
    for p, right in pairs:
        p = min(1 - CLIP, max(CLIP, p))
        total -= math.log(p if right else 1 - p)
    return total / len(pairs)


def top_log_loss(rows: Sequence[tuple[list[float], bool]], temperature: float) -> float:
    """Mean log loss of "the top candidate is right" with the top's probability at ``temperature``; rows are
    (fused scores of the shortlist, was the top candidate the gold code)."""
    return log_loss([(max(probabilities(fused, temperature)), right) for fused, right in rows])


def fit_temperature(rows: Sequence[tuple[list[float], bool]],
                    grid: Sequence[float] = TEMPERATURE_GRID) -> float:
    """The temperature whose top-candidate probability best predicts top-1 correctness (least log loss): the
    shown confidence then means "how often a suggestion like this was right". A gold code missing from the
    list counts as wrong, so the probability also carries the shortlist's misses."""
    if not rows:
        raise ValueError("no rows to fit the temperature on")
    return min(grid, key=lambda t: (round(top_log_loss(rows, t), 9), t))


def fit(rows: Sequence[tuple[list[float], bool]], method: str, fitted_on: str) -> Calibrator:
    """A calibrator of ``method`` fitted on (fused scores, top candidate right) rows."""
    temperature = fit_temperature(rows)
    if method == "temperature":
        return Calibrator("temperature", temperature, fitted_on=fitted_on)
    margins = [[margin(fused)] for fused, _ in rows]
    right = [int(ok) for _, ok in rows]
    if len(set(right)) < 2:
        raise ValueError(f"{method} calibration needs rows with the top candidate right and rows with it wrong")
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1e6).fit(margins, right)  # almost unregularised: Platt's fit
        return Calibrator("platt", temperature, platt=(float(model.coef_[0][0]), float(model.intercept_[0])),
                          fitted_on=fitted_on)
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit([m[0] for m in margins], right)
        return Calibrator("isotonic", temperature,
                          isotonic=(tuple(float(x) for x in model.X_thresholds_),
                                    tuple(float(y) for y in model.y_thresholds_)), fitted_on=fitted_on)
    raise ValueError(f"unknown calibration method {method!r} (known: {', '.join(METHODS)})")


def ece_interval(pairs: Sequence[tuple[float, bool]], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of the ECE (rows resampled with replacement, percentile method)."""
    rng = random.Random(seed)
    values = sorted(measure([pairs[rng.randrange(len(pairs))] for _ in pairs])["ece"] for _ in range(resamples))
    return values[int(0.025 * resamples)], values[min(resamples - 1, int(0.975 * resamples))]


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


def plot_reliability(measured: dict[str, dict[str, Any]], labels: dict[str, str], path: Any,
                     title: str = "Reliability on held-out test dialogues") -> None:
    """Reliability diagram: per confidence bin, the share of top suggestions that were right."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for name, m in measured.items():
        xs = [b["mean_confidence"] for b in m["bins"]]
        ys = [b["accuracy"] for b in m["bins"]]
        axis.plot(xs, ys, marker="o", label=f"{labels.get(name, name)} (ECE {m['ece']:.2f}, n={m['n']})")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence of the top suggestion", ylabel="share right",
             title=title)
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
