"""Calibration from out-of-fold predictions: the served confidence fitted where every row is unseen.

The real-data experiment (:mod:`icd10_coder.experiment`) scores each SLM test row with the models of the
one fold that never trained on the row's category and logs the shortlist, the retrieval scores and both
models' log-likelihoods (``scores.jsonl``). Here, for one model (the served one):

1. **cross-fitted, to report**: for each fold, the normalisation, the fusion weight and every calibrator
   (:data:`icd10_coder.calibration.METHODS`) are chosen and fitted on the *other* folds' rows and applied to
   this fold's rows; pooled, each method gets its log loss, ECE (bootstrap 95% CI) and band accuracies;
2. **picked**: the method with the least cross-fitted log loss;
3. **served**: the normalisation, weight and picked calibrator fitted on every row, for the serving model
   (``tools/serving_model.py``).

Nothing here is an experiment result: the experiment's tables were made before and do not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from icd10_coder import calibration, choice

REFERENCE = "softmax at temperature 1 (no calibration)"


def scored_rows(records: Sequence[dict[str, Any]], model: str, scoring: choice.Scoring) -> list[tuple[list[float],
                                                                                                       bool]]:
    """(fused scores of the shortlist, the fused top candidate is the gold code) per row with a shortlist."""
    rows = []
    for record in records:
        if not record["candidates"]:
            continue
        fused = choice.shortlist_fused(record["candidates"], record["loglikelihoods"][model],
                                       record["candidate_scores"], scoring, record["token_counts"])
        top = choice.best_first(fused)[0]
        rows.append((fused, record["candidates"][top] == record["gold"]))
    return rows


def choose_scoring(records: Sequence[dict[str, Any]], model: str) -> tuple[choice.Scoring, float]:
    """The normalisation and fusion weight with the best exact match on ``records`` (ties: the earlier
    normalisation, the weight nearest 0.5), and that exact match."""
    best: tuple[float, choice.Scoring] | None = None
    for normalisation in choice.NORMALISATIONS:
        data = [(r["candidates"], choice.normalised(r["loglikelihoods"][model], r["candidates"], normalisation,
                                                    r["token_counts"]), r["candidate_scores"], r["gold"])
                for r in records if r["candidates"]]
        weight, curve = choice.choose_weight(data)
        if best is None or curve[weight] > best[0]:
            best = (curve[weight], choice.Scoring(normalisation, weight))
    if best is None:
        raise ValueError("no rows to choose the scoring on")
    exact = sum(right for _, right in scored_rows(records, model, best[1])) / len(records)
    return best[1], exact


def cross_fitted(records: Sequence[dict[str, Any]], model: str) -> dict[str, list[tuple[float, bool]]]:
    """Per method, (top candidate's probability, right) for every row, each fitted without the row's fold."""
    folds = sorted({r["fold"] for r in records})
    if len(folds) < 2:
        raise ValueError("cross-fitting needs rows from at least two folds")
    pairs: dict[str, list[tuple[float, bool]] | str] = {method: [] for method in (*calibration.METHODS, REFERENCE)}
    for held_out in folds:
        fitting = [r for r in records if r["fold"] != held_out]
        scoring, _ = choose_scoring(fitting, model)
        fit_rows = scored_rows(fitting, model, scoring)
        tested = scored_rows([r for r in records if r["fold"] == held_out], model, scoring)
        calibrators = {REFERENCE: calibration.Calibrator("temperature", 1.0)}
        for method in calibration.METHODS:
            try:
                calibrators[method] = calibration.fit(fit_rows, method, f"folds other than {held_out}")
            except ValueError as err:  # e.g. every fitting row right (a tiny slice): the method cannot be fitted
                pairs[method] = f"not fitted without fold {held_out}: {err}"
        for method, calibrator in calibrators.items():
            if isinstance(pairs[method], list):
                pairs[method] += [(calibrator.top_probability(fused), right) for fused, right in tested]
    return pairs


def calibrate(records: Sequence[dict[str, Any]], model: str, resamples: int = 1000) -> dict[str, Any]:
    """Every method's cross-fitted figures, the method picked by log loss, and the served scoring fitted on
    every row (``scoring``: a :class:`icd10_coder.choice.Scoring` record)."""
    if not records:
        raise ValueError("no out-of-fold rows: run the experiment (its scores.jsonl) first")
    methods: dict[str, Any] = {}
    for method, pairs in cross_fitted(records, model).items():
        if isinstance(pairs, str):
            methods[method] = {"skipped": pairs}
            continue
        measured = calibration.measure(pairs)
        low, high = calibration.ece_interval(pairs, resamples)
        methods[method] = {**measured, "log_loss": round(calibration.log_loss(pairs), 4),
                           "ece_95ci": [round(low, 4), round(high, 4)]}
    fitted = [m for m in calibration.METHODS if "skipped" not in methods[m]]
    picked = min(fitted, key=lambda m: (methods[m]["log_loss"], calibration.METHODS.index(m)))
    scoring, exact = choose_scoring(records, model)
    folds = sorted({r["fold"] for r in records})
    fitted_on = f"out-of-fold test rows of {len(folds)} category folds ({len(records)} rows)"
    calibrator = calibration.fit(scored_rows(records, model, scoring), picked, fitted_on)
    served = choice.Scoring(scoring.normalisation, scoring.fusion_weight, calibrator)
    return {"model": model, "rows": len(records), "folds": folds, "methods": methods, "picked": picked,
            "rule": "least cross-fitted log loss (each fold's rows scored by calibrators fitted on the other folds)",
            "scoring": served.as_record(), "served_exact_on_these_rows": round(exact, 4),
            "band_order_holds": bands_ordered(methods[picked])}


def bands_ordered(measured: dict[str, Any]) -> bool:
    """Whether higher bands were right more often (bands without rows are skipped)."""
    accuracies = [measured["bands"][name]["accuracy"] for name, _ in calibration.BANDS
                  if measured["bands"][name]["n"]]
    return all(a >= b for a, b in zip(accuracies, accuracies[1:], strict=False))


def markdown(result: dict[str, Any]) -> list[str]:
    """The generated table: every method's cross-fitted log loss, ECE with its CI and band accuracies."""
    band_names = [name for name, _ in calibration.BANDS]
    lines = [f"Out-of-fold rows: {result['rows']} ({result['model']} SLM, folds {', '.join(map(str, result['folds']))}"
             "; each fold's rows calibrated by what was fitted on the other folds).", "",
             "| method | log loss | ECE [95% CI] | mean confidence | top-1 right | "
             + " | ".join(f"band {b}: right (n)" for b in band_names) + " |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in band_names) + " |"]
    for method, m in result["methods"].items():
        if "skipped" in m:
            lines.append(f"| {method} | {m['skipped']} |" + " |" * (4 + len(band_names)))
            continue
        cells = [f"{m['bands'][b]['accuracy']:.2f} ({m['bands'][b]['n']})" if m["bands"][b]["n"] else "– (0)"
                 for b in band_names]
        name = f"**{method}** (picked)" if method == result["picked"] else method
        lines.append(f"| {name} | {m['log_loss']:.3f} | {m['ece']:.3f} [{m['ece_95ci'][0]:.3f}, "
                     f"{m['ece_95ci'][1]:.3f}] | {m['mean_confidence']:.3f} | {m['accuracy']:.3f} | "
                     + " | ".join(cells) + " |")
    served = result["scoring"]
    lines += ["", f"Picked by {result['rule']}. Served (fitted on every row): normalisation "
              f"{served['normalisation']}, fusion weight {served['fusion_weight']}, {served['calibration']['method']}"
              f" calibration; band accuracies {'in order' if result['band_order_holds'] else '**not in order**'}."]
    return lines
