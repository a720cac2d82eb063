"""Hand-labelled model outputs: what the parser must extract and how each answer scores.

Columns: raw answer, gold code, expected parsed codes, expected metrics as a 7-digit
string in the order of ``METRICS``: exact, category, block, chapter, top-3, valid
(first code billable), parse failure.
"""

from __future__ import annotations

import pytest

from icd10_coder.codes import description, normalize_code, validity
from icd10_coder.parsing import extract_codes
from icd10_coder.prompts import render_answer
from icd10_coder.scoring import METRICS, score_answer, score_codes

LABELLED = [
    # --- the trained format and its everyday variants
    ("M25.562 - Pain in left knee", "M25.562", ["M25.562"], "1111110"),
    ("m25562", "M25.562", ["M25.562"], "1111110"),
    ("**M25.562** - Pain in left knee", "M25.562", ["M25.562"], "1111110"),
    ("ICD-10: M25.562", "M25.562", ["M25.562"], "1111110"),
    ("ICD-10-CM code: M25.562 (Pain in left knee)", "M25.562", ["M25.562"], "1111110"),
    ("Pain in left knee (M25.562)", "M25.562", ["M25.562"], "1111110"),
    ("ICD10 M25562", "M25.562", ["M25.562"], "1111110"),
    ("M25.562 or M25.561", "M25.562", ["M25.562", "M25.561"], "1111110"),
    ("E119", "E11.9", ["E11.9"], "1111110"),
    ("e11.9", "E11.9", ["E11.9"], "1111110"),
    ("E11.9.", "E11.9", ["E11.9"], "1111110"),
    ("`E11.9`", "E11.9", ["E11.9"], "1111110"),
    ("HbA1c is elevated; diagnosis E11.9", "E11.9", ["E11.9"], "1111110"),
    ("I10 - Essential (primary) hypertension", "I10", ["I10"], "1111110"),
    ("i10", "I10", ["I10"], "1111110"),
    ("Code: I10", "I10", ["I10"], "1111110"),
    ("COVID-19 (U07.1)", "U07.1", ["U07.1"], "1111110"),
    ("J06.9 J06.9 J06.9", "J06.9", ["J06.9"], "1111110"),
    ("S00.81XA - Abrasion of other part of head, initial encounter", "S00.81XA", ["S00.81XA"], "1111110"),
    ("S0081XA", "S00.81XA", ["S00.81XA"], "1111110"),
    ("N10 - Acute pyelonephritis", "N10", ["N10"], "1111110"),
    ("Answer: n10", "N10", ["N10"], "1111110"),
    ("C50.911", "C50.911", ["C50.911"], "1111110"),
    ("C4A.9 - Merkel cell carcinoma, unspecified", "C4A.9", ["C4A.9"], "1111110"),
    ("F41.1\n\nGeneralized anxiety disorder", "F41.1", ["F41.1"], "1111110"),
    ("Vitamin B12 deficiency anemia: D51.0", "D51.0", ["D51.0"], "1111110"),
    # --- near misses: right family, wrong code
    ("- M25.561 - Pain in right knee\n- M25.562 - Pain in left knee", "M25.562", ["M25.561", "M25.562"], "0111110"),
    ("1. E11.65 - Type 2 diabetes mellitus with hyperglycemia\n2. E11.9 - Type 2 diabetes mellitus without"
     " complications", "E11.9", ["E11.65", "E11.9"], "0111110"),
    ("E11.65\nE11.8\nE11.69\nE11.9", "E11.9", ["E11.65", "E11.8", "E11.69", "E11.9"], "0111010"),
    ("J02.9 - Acute pharyngitis, unspecified", "J06.9", ["J02.9"], "0011010"),
    ("M54.50 - Low back pain, unspecified", "M25.562", ["M54.50"], "0001010"),
    ("Diagnosis codes:\n* **M17.12** Unilateral primary osteoarthritis, left knee\n* **M25.562** Pain in left knee",
     "M25.562", ["M17.12", "M25.562"], "0001110"),
    # --- parents (not billable) and hallucinated codes
    ("M25.56 - Pain in knee", "M25.562", ["M25.56"], "0111000"),
    ("M25.5 - Pain in joint", "M25.562", ["M25.5"], "0111000"),
    ("M25.999", "M25.562", ["M25.999"], "0111000"),
    ("Z99.999", "M25.562", ["Z99.999"], "0000000"),
    ("E11.9 - Type 2 diabetes mellitus without complications", "M25.562", ["E11.9"], "0000010"),
    ("H40.11X1", "H40.11X1", ["H40.11X1"], "1111100"),  # gold itself retired from this release
    # --- nothing usable
    ("", "M25.562", [], "0000001"),
    (None, "M25.562", [], "0000001"),
    ("I don't know.", "M25.562", [], "0000001"),
    ("The ICD-10-CM code for the main diagnosis is:", "J06.9", [], "0000001"),
    ("The most likely diagnosis is acute pyelonephritis.", "N10", [], "0000001"),
    ("Pain in left knee", "M25.562", [], "0000001"),
    ("I1O", "I10", [], "0000001"),  # letter O, not zero: no such category
]


@pytest.mark.parametrize(("answer", "gold", "codes", "metrics"), LABELLED,
                         ids=[f"{i:02d}" for i in range(len(LABELLED))])
def test_hand_labelled_answers(answer, gold, codes, metrics):
    assert extract_codes(answer) == codes
    expected = dict(zip(METRICS, (int(bit) for bit in metrics), strict=True))
    assert score_answer(gold, answer) == expected


def test_table_is_large_enough():
    assert len(LABELLED) >= 40


@pytest.mark.parametrize("code", ["M25.562", "S00.81XA", "N10", "E11.9", "C4A.9", "U07.1", "F41.1"])
def test_gold_answer_scores_one_on_every_match_metric(code):
    scores = score_answer(code, render_answer(code, description(code)))
    assert scores == {"exact_match": 1, "category_match": 1, "block_match": 1, "chapter_match": 1,
                      "top3_match": 1, "valid_code_rate": 1, "parse_failure_rate": 0}


@pytest.mark.parametrize(("raw", "canonical"), [
    ("M25562", "M25.562"), ("m25.562", "M25.562"), ("N10", "N10"), ("S0081XA", "S00.81XA"),
    ("H4011X1", "H40.11X1"), (" e11 9 ", "E11.9"), ("ICD", None), ("12345", None), ("", None),
    ("M25.56234", None),
])
def test_normalize_code(raw, canonical):
    assert normalize_code(raw) == canonical


def test_validity_levels():
    assert validity("M25.562") == "billable"
    assert validity("M25.56") == "parent"
    assert validity("M25") == "parent"
    assert validity("M25.999") == "unknown"
    # chapters and blocks are "valid items" in simple-icd-10-cm but never codes
    assert validity("M20-M25") == "unknown"


def test_bad_gold_is_an_error_not_a_silent_zero():
    with pytest.raises(ValueError):
        score_codes("not a code", ["M25.562"])
