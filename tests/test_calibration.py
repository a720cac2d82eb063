"""The served confidence: calibrators worked by hand, out-of-fold cross-fitting, and records that refuse to be
served once what they were fitted with has changed."""

from __future__ import annotations

import json

import pytest

from icd10_coder import calibration, choice, oof_calibration, serving
from icd10_coder.calibration import Calibrator


def test_platt_gives_the_top_its_probability_and_the_others_share_the_rest_by_softmax():
    # Margin 1.0 - 0.5 = 0.5; slope 2, intercept -1: sigmoid(0) = 0.5 for the top candidate.
    # Softmax at T=1 of [1, 0.5, 0]: e / (e + e^.5 + 1) = 0.5065, 0.3072, 0.1863; the rest 0.5 split 0.3072 : 0.1863.
    probabilities = Calibrator("platt", 1.0, platt=(2.0, -1.0)).probabilities([0.5, 1.0, 0.0])
    assert [round(p, 4) for p in probabilities] == [0.3112, 0.5, 0.1888]
    assert sum(probabilities) == pytest.approx(1.0)


def test_isotonic_interpolates_between_its_points_and_is_flat_beyond_them():
    calibrator = Calibrator("isotonic", 1.0, isotonic=((0.1, 0.5), (0.2, 0.6)))
    assert calibrator.top_probability([1.0, 0.7]) == pytest.approx(0.4)  # margin 0.3: halfway
    assert calibrator.top_probability([1.0, 0.95]) == 0.2  # margin 0.05: below the first point
    assert calibrator.top_probability([1.0, 0.1]) == 0.6  # margin 0.9: beyond the last
    assert calibrator.top_probability([1.0]) == 0.6  # one candidate: margin 1


def test_the_fitted_methods_follow_how_often_a_margin_was_right():
    # Margin 0.8 right 9 times in 10, margin 0.1 right 1 time in 10.
    rows = [([1.0, 0.2, 0.0], True)] * 9 + [([1.0, 0.2, 0.0], False)] + \
           [([1.0, 0.9, 0.0], True)] + [([1.0, 0.9, 0.0], False)] * 9
    platt = calibration.fit(rows, "platt", "test rows")
    isotonic = calibration.fit(rows, "isotonic", "test rows")
    for calibrator in (platt, isotonic):
        assert calibrator.top_probability([1.0, 0.2, 0.0]) == pytest.approx(0.9, abs=0.02)
        assert calibrator.top_probability([1.0, 0.9, 0.0]) == pytest.approx(0.1, abs=0.02)
    assert platt.platt[0] > 0 and platt.fitted_on == "test rows"
    # The temperature cannot tell the two apart as sharply: softmax only sees the same three scores' spread.
    assert calibration.log_loss([(platt.top_probability(f), ok) for f, ok in rows]) < \
        calibration.log_loss([(calibration.fit(rows, "temperature", "x").top_probability(f), ok) for f, ok in rows])
    with pytest.raises(ValueError, match="right and rows with it wrong"):
        calibration.fit([([1.0, 0.0], True)] * 3, "platt", "x")


def test_calibrators_and_scorings_travel_as_records():
    isotonic = Calibrator("isotonic", 0.5, isotonic=((0.0, 1.0), (0.1, 0.9)), fitted_on="oof")
    scoring = choice.Scoring("per_token", 0.3, isotonic)
    assert choice.Scoring.from_record(json.loads(json.dumps(scoring.as_record()))) == scoring
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibrator("magic")
    incomplete = {k: v for k, v in scoring.as_record().items() if k != "calibration"}
    with pytest.raises(ValueError, match="older version"):
        choice.Scoring.from_record(incomplete)


def test_the_ece_interval_is_zero_for_a_perfect_calibrator_and_wide_for_few_rows():
    perfect = [(1.0, True)] * 20 + [(0.0, False)] * 20
    assert calibration.ece_interval(perfect, 200) == (0.0, 0.0)
    few = [(0.5, True), (0.5, False), (0.5, True)]
    low, high = calibration.ece_interval(few, 200)
    assert low < high and high >= 0.5  # three rows: a resample can be all right or all wrong


def oof_records(rows_per_fold: int = 30) -> list[dict]:
    """Out-of-fold rows as the experiment logs them: the gold is the model's favourite when its margin is wide."""
    records = []
    for fold in range(3):
        for i in range(rows_per_fold):
            wide = i % 3 != 0
            gold_first = (i % 5 != 0) if wide else (i % 2 == 0)
            lls = [-2.0, -2.0 - (3.0 if wide else 0.2), -9.0]
            candidates = ["A00.0", "A00.1", "A01.0"] if gold_first else ["A00.1", "A00.0", "A01.0"]
            records.append({"id": f"r{fold}-{i}", "fold": fold, "gold": "A00.0", "candidates": candidates,
                            "candidate_scores": [0.03, 0.02, 0.01], "loglikelihoods": {"finetuned": lls},
                            "token_counts": [4, 4, 4], "window": True})
    return records


def test_out_of_fold_calibration_scores_every_row_once_with_calibrators_fitted_without_its_fold():
    records = oof_records()
    pairs = oof_calibration.cross_fitted(records, "finetuned")
    assert set(pairs) == {*calibration.METHODS, oof_calibration.REFERENCE}
    assert all(len(p) == len(records) for p in pairs.values())
    # Fold 0's rows: the calibrator fitted on folds 1 and 2 alone gives each of them its probability.
    scoring, _ = oof_calibration.choose_scoring([r for r in records if r["fold"] != 0], "finetuned")
    fitted = calibration.fit(oof_calibration.scored_rows([r for r in records if r["fold"] != 0], "finetuned", scoring),
                             "platt", "folds 1, 2")
    fold0 = oof_calibration.scored_rows([r for r in records if r["fold"] == 0], "finetuned", scoring)
    assert [p for p, _ in pairs["platt"][:len(fold0)]] == pytest.approx([fitted.top_probability(f) for f, _ in fold0])
    result = oof_calibration.calibrate(records, "finetuned", resamples=100)
    assert result["picked"] == min(calibration.METHODS, key=lambda m: result["methods"][m]["log_loss"])
    assert result["rows"] == 90 and result["methods"]["platt"]["n"] == 90
    assert choice.Scoring.from_record(result["scoring"]).calibrator.method == result["picked"]
    low, high = result["methods"]["platt"]["ece_95ci"]
    assert low <= result["methods"]["platt"]["ece"] <= high
    assert "| **" + result["picked"] + "** (picked) |" in "\n".join(oof_calibration.markdown(result))


def test_bands_in_order_is_checked_on_the_rows_that_have_them():
    def measured(high: float | None, medium: float, low: float) -> dict:
        return {"bands": {"high": {"n": 0 if high is None else 5, "accuracy": high},
                          "medium": {"n": 5, "accuracy": medium}, calibration.NOT_SURE: {"n": 5, "accuracy": low}}}

    assert oof_calibration.bands_ordered(measured(0.8, 0.5, 0.1))
    assert not oof_calibration.bands_ordered(measured(0.4, 0.5, 0.1))
    assert oof_calibration.bands_ordered(measured(None, 0.5, 0.1))


def test_a_record_is_refused_once_a_file_it_was_fitted_with_changes(tmp_path):
    from icd10_coder.paths import display_path
    from icd10_coder.retrieval import RetrievalSettings

    card = tmp_path / "data_card.json"
    card.write_text("{}")
    record = serving.scoring_record(
        approach="x-fused", base_model="m", adapter=None,
        shortlist={"k": 3, "retriever": RetrievalSettings(neighbours=0).as_record()},
        scoring=choice.Scoring().as_record(), dev={"split": "val", "rows": 1, "exact_match": 1.0},
        test_calibration={}, data_card=display_path(card), refit="python tools/fuse.py x")
    assert record["fitted_with"]["data_card"]["sha256"] == serving.file_hash(card)
    assert serving.stale_files(record) == []
    card.write_text('{"changed": true}')
    assert serving.stale_files(record) == [f"data_card {display_path(card)} changed since the record was fitted"]
    card.unlink()
    assert "is missing" in serving.stale_files(record)[0]


def test_served_by_says_what_was_trained_on_what():
    record = {"approach": "serving-finetuned-fused", "trained_on": {"rows": 1565},
              "chosen_on": {"split": "the experiment's out-of-fold test rows", "rows": 810},
              "calibration": Calibrator("isotonic", 0.3, isotonic=((0.0,), (0.5,)),
                                        fitted_on="out-of-fold test rows").as_record()}
    line = serving.served_by(record)
    assert "trained on 1565 real rows" in line and "isotonic calibration fitted on out-of-fold test rows" in line
    assert "810 rows" in line
