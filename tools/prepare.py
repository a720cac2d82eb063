"""MedSynth -> axolotl training data + lm-eval evaluation data (``make prepare``).

    python tools/prepare.py                      # hub dataset Ahmad0067/MedSynth
    python tools/prepare.py --source export.csv  # a local CSV / JSONL / Parquet export
    python tools/prepare.py --demo               # offline synthetic demo set

Writes ``train.jsonl`` / ``val.jsonl`` (chat ``messages`` for axolotl), ``test.jsonl``
(rendered prompts + gold code and hierarchy for lm-eval), and ``data_card.json`` /
``data_card.md`` into ``--out``. All files are written together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from icd10_coder.offline import apply_offline_env  # noqa: E402
from icd10_coder.paths import EMBEDDED_MODEL, REPO_ROOT, display_path, make_private  # noqa: E402
from icd10_coder.records import evaluation_record, training_record  # noqa: E402
from icd10_coder.workspace import Workspace  # noqa: E402

HUB_DATASET = "Ahmad0067/MedSynth"
REQUIRED_COLUMNS = ("Dialogue", "ICD10")
SPLIT_FILES = {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl", "test_unseen": "test_unseen.jsonl"}
CODE_POLICIES = {
    "keep": "keep every code-shaped code, flag parent/unknown in the data card (default)",
    "drop-unknown": "drop codes that are not in ICD-10-CM, keep parents",
    "billable-only": "keep only billable (leaf) codes",
}


class PrepareError(click.ClickException):
    """A problem with the input; reported with the file name, nothing written."""


@dataclass
class Example:
    """One kept row, cleaned and normalised."""

    row_id: str
    dialogue: str
    code: str
    validity: str
    group: str = field(default="")  # hash of the dialogue: identical dialogues share a split
    candidates: tuple[str, ...] = ()  # retrieval shortlist shown in the prompt (prepare --shortlist)
    candidate_scores: tuple[float, ...] = ()  # the retriever's score per candidate (fusion: tools/fuse.py)


# ---------------------------------------------------------------- loading


def load_rows(source: str | None, demo: bool) -> tuple[list[dict[str, Any]], str]:
    """Raw rows and a human name of where they came from."""
    if demo:
        from icd10_coder.demo_data import demo_rows

        return demo_rows(), "synthetic demo data (prepare --demo; not MedSynth)"
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


def clean_rows(rows: list[dict[str, Any]], code_policy: str, deidentify: bool) -> tuple[list[Example], Counter]:
    """Normalise every row; return the kept examples and the count of dropped rows by reason."""
    from icd10_coder.codes import normalize_code, validity
    from icd10_coder.dialogue import clean_dialogue

    scrub = None
    if deidentify:
        from icd10_coder.deid import deidentify as scrub

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


# ---------------------------------------------------------------- data card


def token_lengths(tokenizer_path: str, splits: dict[str, list[Example]]) -> dict[str, Any] | None:
    """Percentiles of dialogue tokens and of whole training examples (prompt + answer), and
    per recipe how many rows of each split are longer than its ``sequence_len``."""
    if tokenizer_path == "none":
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except Exception as err:
        raise click.ClickException(f"cannot load tokenizer {tokenizer_path!r} ({err}); "
                                   "run `make setup` or pass --tokenizer none") from err
    examples = [e for split in splits.values() for e in split]
    if not examples:
        return None
    dialogue_tokens = [len(ids) for ids in tokenizer([e.dialogue for e in examples], add_special_tokens=False,
                                                     return_attention_mask=False)["input_ids"]]
    full_tokens = [n + shell for n, shell in zip(dialogue_tokens, prompt_shell_tokens(tokenizer, examples),
                                                 strict=True)]
    by_split, start = {}, 0
    for name, rows in splits.items():
        by_split[name] = full_tokens[start:start + len(rows)]
        start += len(rows)
    return {
        "tokenizer": display_path(Path(tokenizer_path)) if Path(tokenizer_path).exists() else tokenizer_path,
        "dialogue": percentiles(dialogue_tokens),
        "prompt_plus_answer": percentiles(full_tokens),
        "over_sequence_len": over_sequence_len(by_split),
    }


def recipe_sequence_lens(folder: Path = REPO_ROOT / "recipes") -> dict[str, int]:
    """``sequence_len`` of every axolotl recipe in ``recipes/``."""
    import yaml

    lens = {}
    for recipe in sorted(folder.glob("*.yml")):
        value = (yaml.safe_load(recipe.read_text()) or {}).get("sequence_len")
        if isinstance(value, int):
            lens[f"recipes/{recipe.name}"] = value
    return lens


def over_sequence_len(lengths_by_split: dict[str, list[int]]) -> dict[str, dict[str, int]]:
    """Rows whose prompt + answer is longer than each recipe's ``sequence_len``, per split.

    axolotl drops such training and validation rows (``excess_length_strategy: drop``):
    truncating would cut off the answer, the only tokens that carry loss.
    """
    return {recipe: {"sequence_len": limit,
                     **{split: sum(1 for n in lengths if n > limit) for split, lengths in lengths_by_split.items()
                        if lengths}}
            for recipe, limit in recipe_sequence_lens().items()}


def warn_over_length(lengths: dict[str, Any] | None) -> None:
    """Say which recipes would drop training or validation rows, and how many."""
    for recipe, counts in ((lengths or {}).get("over_sequence_len") or {}).items():
        dropped = {split: n for split, n in counts.items() if split in ("train", "val") and n}
        if dropped:
            click.secho(f"warning: {recipe} (sequence_len {counts['sequence_len']}) drops "
                        + ", ".join(f"{n} {split}" for split, n in dropped.items())
                        + " row(s) longer than that; raise sequence_len to keep them", fg="yellow", err=True)


def prompt_shell_tokens(tokenizer, examples: list[Example]) -> list[int]:
    """Tokens a training example adds around its dialogue: chat template, prompts and answer.

    The dialogue sits between line breaks in the user message, and a GPT-2-style byte-level
    BPE (SmolLM2's) never merges across them, so a whole example has exactly dialogue + shell
    tokens (tested on the real sample); other tokenizers may differ by a token or so. The shell
    depends only on the gold code (its answer line), so it is tokenized once per code
    rather than once per row (the dialogue, ~1,000 tokens, is tokenized once, in a batch).
    """
    placeholder = "X"  # one token; stands where the dialogue goes
    shells: dict[tuple[str, tuple[str, ...]], int] = {}
    for example in examples:
        key = (example.code, example.candidates)  # a shortlist makes the shell differ per row
        if key not in shells:
            stub = Example(row_id="", dialogue=placeholder, code=example.code, validity=example.validity,
                           candidates=example.candidates)
            chat = tokenizer.apply_chat_template(training_record(stub)["messages"], tokenize=False)
            shells[key] = len(tokenizer(chat, add_special_tokens=False)["input_ids"]) - 1
    return [shells[(e.code, e.candidates)] for e in examples]


def percentiles(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)])

    return {"min": float(ordered[0]), "p50": at(50), "p90": at(90), "p95": at(95), "p99": at(99),
            "max": float(ordered[-1]), "mean": round(sum(ordered) / len(ordered), 1)}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_shortlists(splits: dict[str, list[Example]], k: int, cache_dir: Path, neighbours: int = 10) -> dict[str, Any]:
    """Give every row its top-``k`` retrieval candidates; return recall@k per split for the data card.

    The retriever knows all billable codes and the training split's dialogues (nearest
    neighbours); a training row is never its own neighbour.
    """
    from icd10_coder.retrieval import RetrievalSettings, load_or_fit

    settings = RetrievalSettings(neighbours=neighbours)
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
        recall[name] = round(sum(e.code in e.candidates for e in examples) / len(examples), 4)
    return {"k": k, "recall_at_k": recall, "retriever": settings.as_record(),
            "gold_not_in_shortlist": "kept; the training answer stays the gold code (the list is a hint)"}


def data_card(*, source: str, rows_in: int, kept: list[Example], dropped: Counter,
              splits: dict[str, list[Example]], lengths: dict[str, Any] | None, hashes: dict[str, str],
              options: dict[str, Any], shortlist: dict[str, Any] | None = None) -> dict[str, Any]:
    from icd10_coder.codes import hierarchy

    codes = Counter(e.code for e in kept)
    chapters = Counter((hierarchy(code).chapter or "unknown") for code in codes)
    train_codes = {e.code for e in splits["train"]}
    return {
        "source": source,
        "synthetic_demo": bool(options.get("demo")),
        "options": options,
        "rows_in": rows_in,
        "rows_kept": len(kept),
        "rows_dropped": sum(dropped.values()),
        "dropped_by_reason": dict(sorted(dropped.items())),
        "codes": len(codes),
        "codes_per_chapter": dict(sorted(chapters.items(), key=lambda kv: (len(kv[0]), kv[0]))),
        "gold_code_validity": dict(sorted(Counter(e.validity for e in kept).items())),
        "splits": {name: len(rows) for name, rows in splits.items() if rows or name != "test_unseen"},
        "test_codes_seen_in_train": sum(1 for c in {e.code for e in splits["test"]} if c in train_codes),
        "test_codes": len({e.code for e in splits["test"]}),
        "token_lengths": lengths,
        "shortlist": shortlist,
        "files_sha256": hashes,
    }


def data_card_markdown(card: dict[str, Any]) -> str:
    lines = [
        "# Data card",
        "",
        f"- Source: {card['source']}" + (" — **synthetic demo data**" if card["synthetic_demo"] else ""),
        f"- Rows in: {card['rows_in']}, kept: {card['rows_kept']}, dropped: {card['rows_dropped']}"
        + "".join(f"\n  - {reason}: {count}" for reason, count in card["dropped_by_reason"].items()),
        f"- Codes: {card['codes']} ({', '.join(f'{k}: {v}' for k, v in card['gold_code_validity'].items())})",
        f"- Splits: {', '.join(f'{k} {v}' for k, v in card['splits'].items())}; "
        f"{card['test_codes_seen_in_train']} of {card['test_codes']} test codes are seen in training",
        f"- De-identified: {'yes' if card['options']['deidentify'] else 'no'}; seed {card['options']['seed']}; "
        f"code policy `{card['options']['code_policy']}`",
    ]
    if card.get("shortlist"):
        short = card["shortlist"]
        lines.append(f"- Shortlist in every prompt: top {short['k']} retrieval candidates; gold code in the "
                     "shortlist (recall@k): " + ", ".join(f"{k} {v:.3f}" for k, v in short["recall_at_k"].items())
                     + f"; gold not in the shortlist: {short['gold_not_in_shortlist']}")
        if short.get("choose"):
            lines.append(f"- Trained to choose (--choose): {short['choose']['method']}; gold inserted in "
                         f"{short['choose']['gold_inserted']} of {short['choose']['rows']} train/val rows")
    if card["token_lengths"]:
        lines += ["", f"Token lengths ({card['token_lengths']['tokenizer']}):", "",
                  "| what | min | p50 | p90 | p95 | p99 | max |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for what in ("dialogue", "prompt_plus_answer"):
            p = card["token_lengths"][what]
            lines.append(f"| {what} | " + " | ".join(f"{p[k]:.0f}" for k in ("min", "p50", "p90", "p95", "p99", "max"))
                         + " |")
        over = card["token_lengths"].get("over_sequence_len") or {}
        if over:
            lines += ["", "Rows longer than each recipe's `sequence_len` (prompt + answer; axolotl drops such "
                      "train/val rows):", "", "| recipe | sequence_len | " + " | ".join(card["splits"]) + " |",
                      "| --- | --- | " + " | ".join("---" for _ in card["splits"]) + " |"]
            for recipe, counts in over.items():
                lines.append(f"| `{recipe}` | {counts['sequence_len']} | "
                             + " | ".join(str(counts.get(split, 0)) for split in card["splits"]) + " |")
    lines += ["", "Codes per ICD-10-CM chapter: "
              + ", ".join(f"{k}: {v}" for k, v in card["codes_per_chapter"].items()), "",
              "Files (sha256):", ""] + [f"- `{name}` {digest}" for name, digest in card["files_sha256"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- writing


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


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
                                                             disable=None)])
            hashes[path.name] = sha256_file(path)
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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--source", type=click.Path(dir_okay=False), default=None,
              help=f"Local CSV / JSONL / Parquet export. Default: the hub dataset {HUB_DATASET}.")
@click.option("--workspace", default=None, metavar="DIR",
              help="Workspace to prepare (its prepared/ folder; the real run: data/prepared). "
                   "Default: $ICD10_WORKSPACE, else the checkout.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for train/val/test JSONL and the data card. Default: the workspace's prepared data "
                   "(data/prepared).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the split (same seed, same files).")
@click.option("--demo", is_flag=True, help="Use the small offline synthetic demo set instead of MedSynth.")
@click.option("--val-fraction", type=click.FloatRange(0, 0.5), default=0.1, show_default=True)
@click.option("--test-fraction", type=click.FloatRange(0, 0.5), default=0.1, show_default=True)
@click.option("--unseen-codes", "unseen_fraction", type=click.FloatRange(0, 0.5), default=0.0, show_default=True,
              help="Share of codes held out whole in test_unseen.jsonl (codes never seen in training).")
@click.option("--code-policy", type=click.Choice(list(CODE_POLICIES)), default="keep", show_default=True,
              help="; ".join(f"{k}: {v}" for k, v in CODE_POLICIES.items()))
@click.option("--deidentify", is_flag=True, help="Replace names, dates, contacts, IDs and addresses with "
              "[TYPE] placeholders (for real patient dialogues; MedSynth is synthetic).")
@click.option("--tokenizer", default=str(EMBEDDED_MODEL), show_default=True,
              help="Tokenizer for the length percentiles in the data card ('none' to skip).")
@click.option("--limit", type=int, default=None, help="Use only the first N rows (quick trials).")
@click.option("--shortlist-neighbours", type=click.IntRange(0, 100), default=10, show_default=True,
              help="Nearest training dialogues whose codes join the shortlist (0: code texts only).")
@click.option("--shortlist", "shortlist_k", type=click.IntRange(1, 50), default=None, metavar="K",
              help="Add the top K retrieval candidates (code + description) to every prompt; written to the "
                   "workspace's prepared-shortlist/ (data/prepared-shortlist) unless --out says otherwise.")
@click.option("--choose", is_flag=True,
              help="With --shortlist: training rows teach choosing (gold always on the list, list shuffled); "
                   "written to prepared-choose/ (data/prepared-choose) for recipes/*-choose.yml.")
def main(source: str | None, workspace: str | None, out: Path | None, seed: int, demo: bool,
         val_fraction: float, test_fraction: float, unseen_fraction: float, code_policy: str, deidentify: bool,
         tokenizer: str, limit: int | None, shortlist_neighbours: int, shortlist_k: int | None,
         choose: bool) -> None:
    """Turn MedSynth (or a local export, or --demo data) into axolotl and lm-eval files."""
    apply_offline_env()
    if demo and source:
        raise click.UsageError("--demo and --source exclude each other")
    try:
        space = Workspace.at(workspace)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    if choose and not shortlist_k:
        raise click.UsageError("--choose needs --shortlist K (the candidates to choose from)")
    if out is None:
        out = space.prepared_choose if choose else space.prepared_shortlist if shortlist_k else space.prepared
    raw, source_name = load_rows(source, demo)
    rows = canonical_columns(raw[:limit] if limit else raw, source_name)
    kept, dropped = clean_rows(rows, code_policy, deidentify)
    if len(kept) + sum(dropped.values()) != len(rows):
        raise AssertionError("row accounting does not reconcile")  # a bug, never bad input
    if not kept:
        raise PrepareError(f"{source_name}: no usable rows ({dict(dropped)})")
    splits = split_examples(kept, seed, val_fraction, test_fraction, unseen_fraction)
    shortlist = add_shortlists(splits, shortlist_k, space.retrieval_cache, shortlist_neighbours) if shortlist_k \
        else None
    if shortlist and choose:
        shortlist["choose"] = teach_choice(splits, seed)
    lengths = token_lengths(tokenizer, splits)
    warn_over_length(lengths)
    options = {"seed": seed, "demo": demo, "val_fraction": val_fraction, "test_fraction": test_fraction,
               "unseen_codes": unseen_fraction, "code_policy": code_policy, "deidentify": deidentify,
               "limit": limit, "shortlist": shortlist_k, "choose": choose}
    card = write_outputs(out, splits, {"source": source_name, "rows_in": len(rows), "kept": kept,
                                       "dropped": dropped, "lengths": lengths, "options": options,
                                       "shortlist": shortlist})
    click.echo(data_card_markdown(card))
    if out.resolve() in (space.prepared.resolve(), space.prepared_shortlist.resolve(),
                         space.prepared_choose.resolve()):
        from icd10_coder.tracking import use_experiment

        use_experiment(space)  # before axolotl can create it with artifacts under ./mlruns
    click.echo(f"Wrote {display_path(out.resolve())}/: " + ", ".join(f"{k} {v}" for k, v in card["splits"].items()))


if __name__ == "__main__":
    main()
