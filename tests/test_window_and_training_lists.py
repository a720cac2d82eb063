"""Evidence windows, the gold code on training lists, and the encoder's training rows: hand-worked examples."""

from __future__ import annotations

import random

import pytest

from icd10_coder.dialogue import speaker_sentences
from icd10_coder.encoder_training import EncoderRecipe, pick_sentences, training_table
from icd10_coder.records import gold_on_list
from icd10_coder.window import evidence_window, tokens

DIALOGUE = ("Doctor: Good morning, what brings you in today?\n"
            "Patient: I have had a cough for three weeks. It gets worse at night.\n"
            "Doctor: Your chest X-ray is consistent with community acquired pneumonia. We will start antibiotics.\n"
            "Patient: Okay, thank you so much doctor.")


def test_speaker_sentences_keep_each_turns_speaker_and_drop_short_fragments():
    assert speaker_sentences(DIALOGUE) == [
        ("Doctor", "Good morning, what brings you in today?"),
        ("Patient", "I have had a cough for three weeks."),
        ("Patient", "It gets worse at night."),
        ("Doctor", "Your chest X-ray is consistent with community acquired pneumonia."),
        ("Doctor", "We will start antibiotics."),
        ("Patient", "Okay, thank you so much doctor."),
    ]


def test_the_window_takes_cue_sentences_first_then_the_nearest_in_dialogue_order_within_budget():
    units = speaker_sentences(DIALOGUE)
    similarity = [0.1, 0.9, 0.2, 0.3, 0.8, 0.0]
    cue = "Doctor: Your chest X-ray is consistent with community acquired pneumonia."
    # Budget for the cue sentence (16 + 3 tokens) and the most similar other one (9 + 3), not a third.
    window = evidence_window(units, similarity, budget=tokens(units[3][1]) + 3 + tokens(units[1][1]) + 3)
    assert window == "Patient: I have had a cough for three weeks.\n" + cue
    assert evidence_window(units, similarity, budget=1) == cue  # one sentence is always kept
    everything = evidence_window(units, similarity, budget=10_000)
    assert everything.splitlines() == [f"{s}: {t}" for s, t in units]
    with pytest.raises(ValueError):
        evidence_window(units, similarity[:2])


def test_gold_code_takes_a_random_place_on_a_training_list_only_when_missing():
    rng = random.Random(0)
    codes, scores = ("A00.0", "A00.1", "A00.9"), (0.3, 0.2, 0.1)
    assert gold_on_list(codes, scores, "A00.1", rng) == (codes, scores, False)
    places = set()
    for _ in range(60):
        listed, values, changed = gold_on_list(codes, scores, "J18.9", rng)
        assert changed and len(listed) == 3 and "J18.9" in listed and "A00.9" not in listed
        assert len(values) == 3
        places.add(listed.index("J18.9"))
    assert places == {0, 1, 2}  # a random position, not always first or last


def test_encoder_rows_put_cue_sentences_first_and_skip_codes_outside_the_code_set():
    rng = random.Random(1)
    picked = pick_sentences(DIALOGUE, 8, rng)
    assert picked[0] == "Your chest X-ray is consistent with community acquired pneumonia."
    assert len(picked) == 8 and set(picked) == {text for _, text in speaker_sentences(DIALOGUE)}
    table, skipped = training_table([(DIALOGUE, "J18.9"), (DIALOGUE, "S30.1XXA")], {"J18.9": 7}, 4, seed=0)
    assert skipped == 1 and table["label"] == [7] and sorted(table) == ["label"] + [f"sentence_{i}" for i in range(4)]


def test_an_encoder_recipe_with_an_unknown_or_missing_key_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        EncoderRecipe.from_dict({"base_encoder": "a", "output_dir": "b", "train_data": "c", "epochs": 1})
    with pytest.raises(ValueError, match="train_data"):
        EncoderRecipe.from_dict({"base_encoder": "a", "output_dir": "b"})


def test_train_encoder_refuses_unknown_keys_and_missing_data_with_what_to_do(tmp_path):
    from click.testing import CliRunner

    from train_encoder import main

    runner = CliRunner()
    bad_key = runner.invoke(main, ["recipes/encoder-cpu.yml", "--workspace", str(tmp_path), "--set", "epochs=2"])
    assert bad_key.exit_code != 0 and "unknown encoder recipe keys ['epochs']" in bad_key.output
    no_data = runner.invoke(main, ["recipes/encoder-cpu.yml", "--workspace", str(tmp_path)])
    assert no_data.exit_code != 0 and "prepared data missing; run tools/prepare.py first" in no_data.output
