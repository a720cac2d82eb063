"""Glue between lm-eval and the shared package: data loading, parsing, scoring.

All logic lives in ``icd10_coder`` (installed with the project), so this task scores
exactly as ``tools/predict.py`` and ``tools/report.py`` do.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from icd10_coder import choice
from icd10_coder.jsonl import read_jsonl
from icd10_coder.parsing import extract_codes
from icd10_coder.scoring import score_codes
from icd10_coder.workspace import Workspace

CODE_SEPARATOR = ", "


def _load_split(file_name: str, data_dir: str | None) -> datasets.DatasetDict:
    folder = Path(data_dir or os.environ.get("ICD10_DATA_DIR") or Workspace.at().prepared)
    path = folder / file_name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `make prepare` first (or point data_dir elsewhere)")
    # Built in memory: no copy of the dialogues lands in the datasets cache (~/.cache).
    rows = read_jsonl(path)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_prepared(data_dir: str | None = None, **_: object) -> datasets.DatasetDict:
    """The prepared test split: ``data_dir`` from --metadata, else $ICD10_DATA_DIR, else the workspace's."""
    return _load_split("test.jsonl", data_dir)


def load_prepared_unseen(data_dir: str | None = None, **_: object) -> datasets.DatasetDict:
    """The test split of codes never trained on (``prepare --unseen-codes``)."""
    return _load_split("test_unseen.jsonl", data_dir)


def load_prepared_val(data_dir: str | None = None, **_: object) -> datasets.DatasetDict:
    """The validation split (training-format rows), as test-format documents: system and user
    prompt from the messages, gold code and shortlist from the row (choice task, fusion weight)."""
    split = _load_split("val.jsonl", data_dir)["test"]
    return datasets.DatasetDict({"test": split.map(_as_test_document, remove_columns=["messages"])})


def _as_test_document(row: dict) -> dict:
    messages = {m["role"]: m["content"] for m in row["messages"]}
    return {"system": messages["system"], "user": messages["user"]}


def parse_responses(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter: each raw answer becomes its parsed codes, joined ('' when none parsed)."""
    return [[CODE_SEPARATOR.join(extract_codes(answer)) for answer in answers] for answers in resps]


def process_results(doc: dict, results: list[str]) -> dict[str, int]:
    codes = [code for code in results[0].split(CODE_SEPARATOR) if code]
    return score_codes(doc["gold_code"], codes)


def choice_lines(doc: dict) -> list[str]:
    """The candidates' answer lines the choice task scores (needs prompts with a shortlist)."""
    if not doc.get("candidates"):
        raise ValueError(f"row {doc.get('id')}: no shortlist candidates; the choice task needs data prepared "
                         "with --shortlist K (run_eval.py --shortlist)")
    return choice.answer_lines(doc["candidates"])


def process_choice_results(doc: dict, results: list[tuple[float, bool]]) -> dict[str, int]:
    """Rank the candidates by log-likelihood per character; score the ranking like an answer."""
    loglikelihoods = [float(ll) for ll, _ in results]
    return score_codes(doc["gold_code"], choice.rank(doc["candidates"], choice.per_char(loglikelihoods,
                                                                                         doc["candidates"])))
