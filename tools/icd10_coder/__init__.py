"""Shared code of the ICD-10 SLM project: codes, prompts, answer parsing and scoring.

Imported by ``tools/`` (prepare, predict, report, bench) and by the lm-eval task in
``tasks/icd10_medsynth``, so every approach is prompted and scored by the same code.
"""

__version__ = "0.1.0"
