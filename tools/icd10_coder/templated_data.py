"""Offline demo data: small, deterministic, clearly synthetic dialogues for a handful of codes.

Lets the whole pipeline run on a fresh machine without the dataset hub. Each dialogue
is assembled from a few phrase variants per code plus the code's official ICD-10-CM
description (read from ``simple-icd-10-cm``, never typed here), so it is learnable by a
135M model in a few CPU minutes. It is **not** MedSynth and not clinical evidence.
"""

from __future__ import annotations

import itertools

from icd10_coder.codes import description

# Common primary-care codes, each with complaint phrases a patient might say.
TEMPLATED_COMPLAINTS: dict[str, tuple[str, ...]] = {
    "E11.9": ("I'm always thirsty and I pee a lot", "my sugar readings at home are high",
              "I've been tired and my vision gets blurry"),
    "I10": ("my blood pressure was high at the pharmacy", "I get headaches and my pressure readings are up",
            "the cuff at home keeps showing high numbers"),
    "J06.9": ("I have a runny nose, sore throat and a cough", "I caught a cold and my nose is blocked",
              "my throat is scratchy and I keep sneezing"),
    "M54.50": ("my lower back hurts when I bend", "I have pain low in my back after lifting boxes",
               "my lower back is stiff and sore every morning"),
    "N39.0": ("it burns when I urinate", "I need to pee all the time and it stings",
              "my urine is cloudy and it hurts to go"),
    "K21.9": ("I get heartburn after meals", "there's a burning feeling rising in my chest at night",
              "acid comes up into my throat when I lie down"),
    "F41.1": ("I worry about everything all day", "I feel nervous and restless most days",
              "I can't stop worrying and I sleep badly"),
    "M25.562": ("my left knee hurts when I climb stairs", "the pain is in my left knee after running",
                "my left knee aches and feels stiff"),
}
DURATIONS = ("two days", "a week", "three weeks", "a month")
OPENINGS = ("What brings you in today?", "How can I help you today?", "What seems to be the problem?")
ROWS_PER_CODE = 12


def templated_rows() -> list[dict[str, str]]:
    """``ROWS_PER_CODE`` dialogues per demo code, MedSynth-shaped (``ID, Dialogue, ICD10, ICD10_desc``)."""
    rows: list[dict[str, str]] = []
    for code, complaints in TEMPLATED_COMPLAINTS.items():
        desc = description(code)
        if desc is None:
            raise RuntimeError(f"demo code {code} is not in this ICD-10-CM release")
        variants = itertools.islice(itertools.cycle(itertools.product(complaints, DURATIONS, OPENINGS)),
                                    0, ROWS_PER_CODE * 5, 5)
        for number, (complaint, duration, opening) in enumerate(variants):
            dialogue = (
                f"[doctor]: {opening}"
                f"[patient]: Doctor, {complaint}. It has been going on for about {duration}."
                "[doctor]: Any fever, weight loss or other new symptoms?"
                f"[patient]: Nothing else really, just that {complaint}."
                f"[doctor]: Based on what you describe, this is {desc.lower()}. We will start treatment today."
                "[patient]: Thank you, doctor."
            )
            rows.append({
                "ID": f"demo-{code}-{number:02d}",
                "Dialogue": dialogue,
                "ICD10": code.replace(".", ""),  # MedSynth writes codes without the dot
                "ICD10_desc": desc,
            })
    return rows
