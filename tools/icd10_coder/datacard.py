"""The data card of a prepared folder: where the rows came from, what was dropped and why, splits, code
validity, token lengths against every recipe's ``sequence_len``, the shortlist's recall, file hashes."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from icd10_coder.codes import hierarchy
from icd10_coder.paths import REPO_ROOT, display_path
from icd10_coder.records import Example, PrepareError, training_record


def token_lengths(tokenizer_path: str, splits: dict[str, list[Example]]) -> dict[str, Any] | None:
    """Percentiles of dialogue tokens and of whole training examples (prompt + answer), and
    per recipe how many rows of each split are longer than its ``sequence_len``."""
    if tokenizer_path == "none":
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except Exception as err:
        raise PrepareError(f"cannot load tokenizer {tokenizer_path!r} ({err}); "
                                   "run `make setup` or pass --tokenizer none") from err
    examples = [e for split in splits.values() for e in split]
    if not examples:
        return None
    # What the prompt shows: the evidence window when there is one, else the whole dialogue.
    dialogue_tokens = [len(ids) for ids in tokenizer([e.window or e.dialogue for e in examples],
                                                     add_special_tokens=False,
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


def over_length_warnings(lengths: dict[str, Any] | None) -> list[str]:
    """Which recipes would drop training or validation rows, and how many (one line each)."""
    warnings = []
    for recipe, counts in ((lengths or {}).get("over_sequence_len") or {}).items():
        dropped = {split: n for split, n in counts.items() if split in ("train", "val") and n}
        if dropped:
            warnings.append(f"warning: {recipe} (sequence_len {counts['sequence_len']}) drops "
                            + ", ".join(f"{n} {split}" for split, n in dropped.items())
                            + " row(s) longer than that; raise sequence_len to keep them")
    return warnings


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
        key = (example.code, example.candidates, bool(example.window))  # a shortlist: a shell per row
        if key not in shells:
            stub = Example(row_id="", dialogue=placeholder, code=example.code, validity=example.validity,
                           candidates=example.candidates, window=placeholder if example.window else "")
            chat = tokenizer.apply_chat_template(training_record(stub)["messages"], tokenize=False)
            shells[key] = len(tokenizer(chat, add_special_tokens=False)["input_ids"]) - 1
    return [shells[(e.code, e.candidates, bool(e.window))] for e in examples]


def percentiles(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)])

    return {"min": float(ordered[0]), "p50": at(50), "p90": at(90), "p95": at(95), "p99": at(99),
            "max": float(ordered[-1]), "mean": round(sum(ordered) / len(ordered), 1)}


def data_card(*, source: str, rows_in: int, kept: list[Example], dropped: Counter,
              splits: dict[str, list[Example]], lengths: dict[str, Any] | None, hashes: dict[str, str],
              options: dict[str, Any], shortlist: dict[str, Any] | None = None) -> dict[str, Any]:

    codes = Counter(e.code for e in kept)
    chapters = Counter((hierarchy(code).chapter or "unknown") for code in codes)
    train_codes = {e.code for e in splits["train"]}
    return {
        "source": source,
        "synthetic_demo": bool(options.get("templated")),
        "embedded_demo": bool(options.get("demo")),
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
        f"- Source: {card['source']}" + (" — **templated synthetic data**" if card["synthetic_demo"] else ""),
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
                     + f" (before the gold code is put on the training lists: "
                     f"{short['gold_on_training_lists']['inserted']} of {short['gold_on_training_lists']['rows']} "
                     f"training lists changed; validation and test lists are the retriever's)")
        lines.append(f"- Retriever's query encoder: {short['retriever'].get('encoder') or 'the base encoder'}; "
                     "prompts show " + (f"the evidence window (~{short['evidence_window']} tokens)"
                                        if short.get("evidence_window") else "the whole dialogue"))
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


def card_retriever(card: Path) -> dict[str, Any] | None:
    """The shortlist retriever a prepared data card records (None: data prepared without a shortlist)."""
    if not card.is_file():
        raise FileNotFoundError(f"{card}: no data card; run tools/prepare.py")
    return (json.loads(card.read_text()).get("shortlist") or {}).get("retriever")
