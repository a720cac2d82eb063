"""Benchmark arithmetic (the figures themselves come from `make bench`, not from tests)."""

from __future__ import annotations

from icd10_coder import benchmarks as bench
from icd10_coder.benchmarks.data import padded_share


def test_padding_shares_on_known_lengths():
    # two batches of 2: [10, 10] wastes nothing, [10, 5] wastes 5 of 20
    assert padded_share([[10, 10], [10, 5]]) == 35 / 40
    lengths = [100, 100, 50, 50]
    assert bench.length_grouped_batches(lengths, 2) == 1.0  # sorted: [100, 100], [50, 50]
    assert bench.packed([60, 50, 40, 30, 20], 100) == 200 / 200  # 60+40, 50+30+20
    assert bench.packed([70, 70, 70], 100) == 210 / 300  # nothing pairs up


def test_narrow_lengths_favour_grouping_over_packing_at_2048():
    """MedSynth-like lengths (1,000-1,500 tokens): the recipe's choice must beat packing into 2048."""
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1000, 1500) for _ in range(400)]
    grouped = bench.length_grouped_batches(lengths, 4)
    assert grouped >= 0.95
    assert bench.packed(lengths, 2048) < 0.8 < bench.packed(lengths, 8192)
    assert bench.random_batches(lengths, 4) < grouped


def test_synthetic_rows_are_medsynth_shaped():
    rows = bench.synthetic_rows(50)
    assert len(rows) == 50 and set(rows[0]) == {" Note", "Dialogue", "ICD10", "ICD10_desc"}
    assert all("." not in r["ICD10"] and r["Dialogue"].startswith("[doctor]:") for r in rows)
    assert all(2000 < len(r["Dialogue"]) < 7000 for r in rows)
