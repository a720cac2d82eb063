"""Preparing MedSynth rows: loading, cleaning, splitting, shortlists, choice rows and writing (``tools/prepare.py``).

Pure functions of their inputs (the seed decides every split), so the CLI stays a thin click command and
tests and other tools can call each step. The data card lives in ``icd10_coder.datacard``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from icd10_coder import deid
from icd10_coder.codes import normalize_code, validity
from icd10_coder.datacard import data_card, data_card_markdown, over_length_warnings, token_lengths
from icd10_coder.dialogue import clean_dialogue
from icd10_coder.jsonl import write_jsonl
from icd10_coder.paths import make_private
from icd10_coder.realdata import read_embedded_rows
from icd10_coder.records import Example, PrepareError, evaluation_record, gold_on_list, training_record
from icd10_coder.retrieval import RetrievalSettings, load_or_fit
from icd10_coder.templated_data import templated_rows

HUB_DATASET = "Ahmad0067/MedSynth"
REQUIRED_COLUMNS = ("Dialogue", "ICD10")
SPLIT_FILES = {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl", "test_unseen": "test_unseen.jsonl"}
CODE_POLICIES = {
    "keep": "keep every code-shaped code, flag parent/unknown in the data card (default)",
    "drop-unknown": "drop codes that are not in ICD-10-CM, keep parents",
    "billable-only": "keep only billable (leaf) codes",
}


# ---------------------------------------------------------------- loading


EMBEDDED_SOURCE = "embedded real MedSynth subset (data/medsynth-demo, CC BY 4.0)"
TEMPLATED_SOURCE = "templated synthetic dialogues (prepare --templated; not MedSynth, they state the diagnosis)"


def load_rows(source: str | None, demo: bool, templated: bool = False) -> tuple[list[dict[str, Any]], str]:
    """Raw rows and a human name of where they came from."""
    if templated:
        return templated_rows(), TEMPLATED_SOURCE
    if demo:
        return read_embedded_rows(), EMBEDDED_SOURCE
    import datasets

    datasets.disable_progress_bars()
    if source is None:
        try:
            dataset = datasets.load_dataset(HUB_DATASET, split="train")
        except Exception as err:  # network, auth, hub layout: say what to do instead
            raise PrepareError(
                f"cannot load {HUB_DATASET} from the hub ({type(err).__name__}: {err}). "
                "Offline? Export the dataset once and pass --source FILE, or use --demo."
            ) from err
        return dataset.to_list(), f"hub:{HUB_DATASET}"
    return _load_local(Path(source)), str(source)


def _load_local(path: Path) -> list[dict[str, Any]]:
    import datasets

    builders = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    if not path.is_file():
        raise PrepareError(f"{path}: no such file")
    builder = builders.get(path.suffix.lower())
    if builder is None:
        raise PrepareError(f"{path}: unsupported file type {path.suffix!r} (use .csv, .jsonl, .json or .parquet)")
    if path.stat().st_size == 0:
        raise PrepareError(f"{path}: the file is empty")
    if builder != "parquet":
        try:
            with path.open(encoding="utf-8") as handle:
                for _ in iter(lambda: handle.read(1 << 20), ""):
                    pass
        except UnicodeDecodeError as err:
            raise PrepareError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start}); "
                               "re-save the export as UTF-8") from err
    # A throw-away cache: no copy of the (possibly sensitive) rows is left in ~/.cache.
    with tempfile.TemporaryDirectory(prefix="prepare-cache-") as cache:
        try:
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache)
        except Exception as err:
            raise PrepareError(f"{path}: cannot be read as {builder} ({type(err).__name__}: {err})") from err
        return dataset.to_list()


def canonical_columns(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Map column names like ' Note' or 'icd10' onto the canonical names; check required ones."""
    if not rows:
        raise PrepareError(f"{source}: no rows")
    known = {name.lower(): name for name in ("ID", "Note", "Dialogue", "ICD10", "ICD10_desc")}
    mapping = {col: known.get(col.strip().lower(), col.strip()) for col in rows[0]}
    missing = [c for c in REQUIRED_COLUMNS if c not in mapping.values()]
    if missing:
        raise PrepareError(f"{source}: missing required column(s) {', '.join(missing)} "
                           f"(found: {', '.join(repr(c) for c in rows[0])})")
    return [{mapping[k]: v for k, v in row.items()} for row in rows]


# ---------------------------------------------------------------- cleaning


GROUPINGS = {
    "dialogue": "identical dialogues share a split (default)",
    "category": "whole 3-character categories share a split: test codes and their siblings are never trained on",
}


def clean_rows(rows: list[dict[str, Any]], code_policy: str, deidentify: bool,
               group_by: str = "dialogue") -> tuple[list[Example], Counter]:
    """Normalise every row; return the kept examples and the count of dropped rows by reason."""

    scrub = deid.deidentify if deidentify else None
    kept: list[Example] = []
    dropped: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    for index, row in enumerate(tqdm(rows, desc="clean", unit="row", disable=None)):
        raw_dialogue = row.get("Dialogue")
        if not isinstance(raw_dialogue, str) or not raw_dialogue.strip():
            dropped["empty_dialogue"] += 1
            continue
        dialogue = clean_dialogue(raw_dialogue)
        if scrub is not None:
            dialogue = scrub(dialogue)
        if not dialogue:
            dropped["empty_dialogue"] += 1
            continue
        code = normalize_code(row.get("ICD10") or "")
        if code is None:
            dropped["malformed_code"] += 1
            continue
        status = validity(code)
        if status == "unknown" and code_policy in ("drop-unknown", "billable-only"):
            dropped["unknown_code"] += 1
            continue
        if status == "parent" and code_policy == "billable-only":
            dropped["parent_code"] += 1
            continue
        group = hashlib.sha256(dialogue.encode()).hexdigest()[:16]
        if (group, code) in seen:
            dropped["duplicate_row"] += 1
            continue
        seen.add((group, code))
        if group_by == "category":
            group = code[:3]
        row_id = str(row.get("ID") if row.get("ID") not in (None, "") else f"row-{index}")
        kept.append(Example(row_id=row_id, dialogue=dialogue, code=code, validity=status, group=group))
    return kept, dropped


# ---------------------------------------------------------------- splitting


def split_examples(examples: list[Example], seed: int, val_fraction: float, test_fraction: float,
                   unseen_fraction: float) -> dict[str, list[Example]]:
    """Deterministic grouped, code-stratified split.

    Identical dialogues (one group) always land in the same split. Codes are visited in
    a seeded order; each code's groups are shuffled and a running remainder hands out
    validation and test groups so the totals match the fractions, but a code with >= 2
    groups keeps at least one in train, so its test rows are never unseen codes. With
    ``unseen_fraction`` > 0, that share of codes goes whole to ``test_unseen`` (codes
    the model never trains on).
    """
    rng = random.Random(seed)
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        groups[example.group].append(example)
    groups_by_code: dict[str, list[str]] = defaultdict(list)
    for group_id, members in groups.items():
        groups_by_code[members[0].code].append(group_id)

    codes = sorted(groups_by_code)
    rng.shuffle(codes)
    unseen = set(codes[: round(len(codes) * unseen_fraction)]) if unseen_fraction > 0 else set()
    splits: dict[str, list[Example]] = {name: [] for name in SPLIT_FILES}
    carry = {"val": 0.0, "test": 0.0}
    for code in codes:
        group_ids = sorted(groups_by_code[code])
        rng.shuffle(group_ids)
        if code in unseen:
            splits["test_unseen"].extend(e for g in group_ids for e in groups[g])
            continue
        # A code with >= 2 groups keeps one in train, so its test rows are seen codes;
        # a single-group code may land anywhere (the data card counts unseen test codes).
        spare = len(group_ids) - 1 if len(group_ids) > 1 else 1
        quota = {}
        for name, fraction in (("test", test_fraction), ("val", val_fraction)):
            carry[name] += len(group_ids) * fraction
            quota[name] = min(spare, math.floor(carry[name]))
            carry[name] -= quota[name]
            spare -= quota[name]
        for position, group_id in enumerate(group_ids):
            if position < quota["test"]:
                split = "test"
            elif position < quota["test"] + quota["val"]:
                split = "val"
            else:
                split = "train"
            splits[split].extend(groups[group_id])
    return splits


# ---------------------------------------------------------------- records


def teach_choice(splits: dict[str, list[Example]], seed: int) -> dict[str, Any]:
    """Rewrite the train and validation shortlists to teach choosing (``prepare --choose``).

    Each row's list always holds the gold code (when the lookup missed it, it replaces the
    last candidate: every row teaches a choice among hard negatives, the retriever's own
    near misses) and is shuffled, so "copy the first candidate" stops being a winning rule.
    Test rows keep the retriever's ranked list, exactly as every other shortlist approach sees it.
    """
    rng = random.Random(seed)
    inserted = 0
    for name in ("train", "val"):
        for example in splits[name]:
            pairs = list(zip(example.candidates, example.candidate_scores, strict=True))
            if example.code not in example.candidates:
                inserted += 1
                pairs[-1:] = [(example.code, min(example.candidate_scores, default=0.0))]
            rng.shuffle(pairs)
            example.candidates = tuple(code for code, _ in pairs)
            example.candidate_scores = tuple(score for _, score in pairs)
    rows = len(splits["train"]) + len(splits["val"])
    return {"gold_inserted": inserted, "rows": rows,
            "method": "train/val shortlists shuffled; a gold code the lookup missed replaces the last candidate; "
                      "test rows keep the ranked list"}


# ---------------------------------------------------------------- shortlists


def add_shortlists(splits: dict[str, list[Example]], k: int, cache_dir: Path, neighbours: int = 10,
                   encoder: str = "", window_tokens: int = 0, seed: int = 0) -> dict[str, Any]:
    """Give every row its top-``k`` retrieval candidates (and, with ``window_tokens``, its evidence window);
    put the gold code on every training list (:func:`records.gold_on_list`); return the data card's part.

    The retriever knows all billable codes and the training split's dialogues (nearest
    neighbours); a training row is never its own neighbour. ``encoder``: a fine-tuned query encoder
    (``tools/train_encoder.py``) for the dense ranking. Recall is measured before the gold code is put on
    the training lists.
    """
    import random

    settings = RetrievalSettings(neighbours=neighbours, encoder=encoder)
    train = [(e.dialogue, e.code) for e in splits["train"]] if neighbours else None
    retriever = load_or_fit(cache_dir, settings, train)
    recall = {}
    for name, examples in splits.items():
        if not examples:
            continue
        lists = []
        for first in tqdm(range(0, len(examples), 256), desc=f"shortlist {name}", unit="batch", disable=None):
            chunk = examples[first:first + 256]
            own = list(range(first, first + len(chunk))) if name == "train" and neighbours else None
            lists += retriever.shortlist([e.dialogue for e in chunk], k, exclude_self=own)
        for example, ranked in zip(examples, lists, strict=True):
            example.candidates = tuple(code for code, _ in ranked)
            example.candidate_scores = tuple(score for _, score in ranked)
            if window_tokens:
                example.window = retriever.window(example.dialogue, list(example.candidates), window_tokens)
        recall[name] = round(sum(e.code in e.candidates for e in examples) / len(examples), 4)
    rng, inserted = random.Random(seed), 0
    for example in splits["train"]:
        example.candidates, example.candidate_scores, changed = gold_on_list(
            example.candidates, example.candidate_scores, example.code, rng)
        inserted += changed
    return {"k": k, "recall_at_k": recall, "retriever": settings.as_record(), "evidence_window": window_tokens,
            "gold_on_training_lists": {"inserted": inserted, "rows": len(splits["train"]),
                                       "method": "a gold code the lookup missed takes a random place on the "
                                                 "training list (the last candidate drops off); validation and "
                                                 "test lists are the retriever's"}}


# ---------------------------------------------------------------- writing


def write_outputs(out: Path, splits: dict[str, list[Example]], card_args: dict[str, Any]) -> dict[str, Any]:
    """Write every file into a staging folder, then move them into ``out`` together."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    try:
        hashes = {}
        for split, examples in splits.items():
            if split == "test_unseen" and not examples:
                continue
            make_record = evaluation_record if split.startswith("test") else training_record
            path = staging / SPLIT_FILES[split]
            write_jsonl(path, [make_record(e) for e in tqdm(examples, desc=f"write {split}", unit="row",
                                                             disable=None)], private=True)
            hashes[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        card = data_card(splits=splits, hashes=hashes, **card_args)
        (staging / "data_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
        (staging / "data_card.md").write_text(data_card_markdown(card))
        stale = out / SPLIT_FILES["test_unseen"]
        if "test_unseen.jsonl" not in hashes and stale.exists():
            stale.unlink()
        make_private(staging)  # the files hold dialogue text: owner-only before they appear in out
        for path in staging.iterdir():
            os.replace(path, out / path.name)
        make_private(out)
        return card
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- the whole step


def prepare(*, source: str | None, demo: bool, templated: bool, group_by: str, out: Path, retrieval_cache: Path,
            seed: int, val_fraction: float, test_fraction: float, unseen_fraction: float, code_policy: str,
            deidentify: bool, tokenizer: str, limit: int | None, shortlist_neighbours: int, shortlist_k: int | None,
            choose: bool, shortlist_encoder: str = "", evidence_window: int = 0,
            warn: Any = print) -> dict[str, Any]:
    """Load, clean, split, shortlist, write ``out`` (all files or none); return the data card."""

    raw, source_name = load_rows(source, demo, templated)
    rows = canonical_columns(raw[:limit] if limit else raw, source_name)
    kept, dropped = clean_rows(rows, code_policy, deidentify, group_by)
    if len(kept) + sum(dropped.values()) != len(rows):
        raise AssertionError("row accounting does not reconcile")  # a bug, never bad input
    if not kept:
        raise PrepareError(f"{source_name}: no usable rows ({dict(dropped)})")
    splits = split_examples(kept, seed, val_fraction, test_fraction, unseen_fraction)
    shortlist = add_shortlists(splits, shortlist_k, retrieval_cache, shortlist_neighbours, shortlist_encoder,
                               evidence_window, seed) if shortlist_k else None
    if shortlist and choose:
        shortlist["choose"] = teach_choice(splits, seed)
    lengths = token_lengths(tokenizer, splits)
    for line in over_length_warnings(lengths):
        warn(line)
    options = {"seed": seed, "demo": demo, "templated": templated, "group_by": group_by,
               "val_fraction": val_fraction, "test_fraction": test_fraction,
               "unseen_codes": unseen_fraction, "code_policy": code_policy, "deidentify": deidentify,
               "limit": limit, "shortlist": shortlist_k, "choose": choose, "shortlist_encoder": shortlist_encoder,
               "evidence_window": evidence_window}
    return write_outputs(out, splits, {"source": source_name, "rows_in": len(rows), "kept": kept,
                                       "dropped": dropped, "lengths": lengths, "options": options,
                                       "shortlist": shortlist})
