"""tools/prepare.py: MedSynth quirks, bad inputs, determinism, reconciliation, splits."""

from __future__ import annotations

import csv
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

import prepare
from icd10_coder.prompts import render_system, render_user

FENCE = "`" * 3
DIALOGUE = "[doctor]: What brings you in?[patient]: My {part} hurts since {when}.[doctor]: Let us examine it."

# Every quirk of the real data, in one MedSynth-shaped table (no ID, no ICD10_desc, " Note").
QUIRK_ROWS = [
    {" Note": "n", "Dialogue": DIALOGUE.format(part="left knee", when="Monday"), "ICD10": "M25562"},
    {" Note": "n", "Dialogue": DIALOGUE.format(part="left knee", when="Tuesday"), "ICD10": "M25562"},
    {" Note": "n", "Dialogue": DIALOGUE.format(part="left knee", when="May"), "ICD10": "M25562"},
    {" Note": "n", "Dialogue": "[doctor] How did you hurt your head?[patient] I scraped it on a branch.",
     "ICD10": "S0081XA"},
    {" Note": "n", "Dialogue": "[Doctor]: Any trouble seeing?[Patient]: My eye pressure was high.", "ICD10": "H4011X1"},
    {" Note": "n", "Dialogue": "**Doctor:** Any fever?\n**Patient:** Yes, and flank pain.", "ICD10": "N10"},
    {" Note": "n", "Dialogue": f"{FENCE}text\n[doctor]: Kidney pain again?[patient]: Yes, on the right.\n{FENCE}",
     "ICD10": "N10"},
    {" Note": "n", "Dialogue": None, "ICD10": "N10"},
    {" Note": "n", "Dialogue": "   ", "ICD10": "N10"},
    # exact duplicate (same dialogue, same code): dropped
    {" Note": "n", "Dialogue": DIALOGUE.format(part="left knee", when="Monday"), "ICD10": "M25562"},
    # same dialogue, another code: kept, but must share a split with its twin
    {" Note": "n", "Dialogue": DIALOGUE.format(part="left knee", when="Tuesday"), "ICD10": "M25561"},
    {" Note": "n", "Dialogue": DIALOGUE.format(part="knee", when="June"), "ICD10": "M2556"},  # parent
    {" Note": "n", "Dialogue": DIALOGUE.format(part="knee", when="July"), "ICD10": "M25999"},  # unknown
    {" Note": "n", "Dialogue": DIALOGUE.format(part="foot", when="August"), "ICD10": "12345"},  # malformed
]


def write_csv(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_prepare(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(prepare.main, [*args, "--tokenizer", "none"], catch_exceptions=False)
    return result.exit_code, result.output


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_all(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    card = json.loads((out / "data_card.json").read_text())
    splits = {name: read_jsonl(out / f"{name}.jsonl") for name in ("train", "val", "test")}
    return card, splits


def row_code(record: dict) -> str:
    """The gold code of a training (answer line) or test (gold_code) record."""
    return record.get("gold_code") or record["messages"][2]["content"].split(" - ")[0]


def train_dialogue(record: dict) -> str:
    return record["messages"][1]["content"]


def test_quirks_are_normalised_and_rows_reconcile(tmp_path):
    source = write_csv(tmp_path / "medsynth.csv", QUIRK_ROWS)
    code, output = run_prepare("--source", str(source), "--out", str(tmp_path / "out"))
    assert code == 0, output
    card, splits = read_all(tmp_path / "out")

    assert card["rows_in"] == len(QUIRK_ROWS) == card["rows_kept"] + card["rows_dropped"]
    assert card["dropped_by_reason"] == {"empty_dialogue": 2, "duplicate_row": 1, "malformed_code": 1}
    assert card["gold_code_validity"] == {"billable": 7, "parent": 1, "unknown": 2}
    assert sum(card["splits"].values()) == card["rows_kept"]

    train_texts = [train_dialogue(r) for r in splits["train"] + splits["val"]]
    test_texts = [r["user"] for r in splits["test"]]
    for text in train_texts + test_texts:
        assert "**" not in text and FENCE not in text and "[doctor]" not in text.lower()
    every = "\n".join(train_texts + test_texts)
    assert "Doctor: " in every and "Patient: " in every

    answers = [r["messages"][2]["content"] for r in splits["train"] + splits["val"]]
    gold = [r["gold_code"] for r in splits["test"]]
    all_codes = {a.split(" - ")[0] for a in answers} | set(gold)
    assert all_codes <= {"M25.562", "M25.561", "S00.81XA", "H40.11X1", "N10", "M25.56", "M25.999"}
    assert "M25.562 - Pain in left knee" in answers + [f"{r['gold_code']} - {r['gold_description']}"
                                                       for r in splits["test"]]


def test_training_and_eval_records_carry_the_rendered_prompts(tmp_path):
    source = write_csv(tmp_path / "medsynth.csv", QUIRK_ROWS)
    run_prepare("--source", str(source), "--out", str(tmp_path / "out"))
    _, splits = read_all(tmp_path / "out")
    record = splits["train"][0]
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["messages"][0]["content"] == render_system()
    for test_row in splits["test"]:
        assert test_row["system"] == render_system()
        assert test_row["user"] == render_user(test_row["dialogue"])
        assert {"gold_code", "gold_description", "category", "block", "chapter"} <= set(test_row)


def test_identical_dialogues_share_a_split_and_test_codes_are_seen(tmp_path):
    rows = []
    for code in ("M25562", "M25561", "N10", "E119", "I10"):
        for n in range(6):
            rows.append({"Dialogue": DIALOGUE.format(part=f"part {code}", when=f"day {n}"), "ICD10": code})
    # the same dialogue under two codes, three times over
    for n in range(3):
        text = DIALOGUE.format(part="shared", when=f"week {n}")
        rows += [{"Dialogue": text, "ICD10": "M25562"}, {"Dialogue": text, "ICD10": "N10"}]
    source = write_csv(tmp_path / "rows.csv", rows)
    for seed in (1, 2, 3, 4):
        out = tmp_path / f"out{seed}"
        assert run_prepare("--source", str(source), "--out", str(out), "--seed", str(seed))[0] == 0
        card, splits = read_all(out)
        where: dict[str, set[str]] = {}
        for name, records in splits.items():
            for r in records:
                text = r["dialogue"] if name == "test" else train_dialogue(r).split("Dialogue:\n", 1)[1].rsplit(
                    "\n\n", 1)[0]
                where.setdefault(text, set()).add(name)
        assert all(len(names) == 1 for names in where.values()), "an identical dialogue straddles splits"
        train_codes = {r["messages"][2]["content"].split(" - ")[0] for r in splits["train"]}
        assert {r["gold_code"] for r in splits["test"]} <= train_codes
        assert card["test_codes_seen_in_train"] == card["test_codes"] > 0
        assert 0.6 <= card["splits"]["train"] / card["rows_kept"] <= 0.9


def test_same_seed_same_bytes_other_seed_other_split(tmp_path):
    rows = [{"Dialogue": DIALOGUE.format(part=f"p{c}", when=f"d{n}"), "ICD10": c}
            for c in ("M25562", "N10", "E119", "I10", "J069") for n in range(8)]
    source = write_csv(tmp_path / "rows.csv", rows)
    outputs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        run_prepare("--source", str(source), "--out", str(tmp_path / name), "--seed", str(seed))
        outputs[name] = {f.name: f.read_bytes() for f in sorted((tmp_path / name).iterdir())}
    assert outputs["a"] == outputs["b"]
    assert outputs["a"]["test.jsonl"] != outputs["c"]["test.jsonl"]
    card = json.loads(outputs["a"]["data_card.json"])
    import hashlib
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert card["files_sha256"][name] == hashlib.sha256(outputs["a"][name]).hexdigest()


def test_unseen_codes_split_holds_only_codes_never_trained_on(tmp_path):
    rows = [{"Dialogue": DIALOGUE.format(part=f"p{c}", when=f"d{n}"), "ICD10": c}
            for c in ("M25562", "N10", "E119", "I10", "J069", "K219", "F411", "N390") for n in range(5)]
    source = write_csv(tmp_path / "rows.csv", rows)
    run_prepare("--source", str(source), "--out", str(tmp_path / "out"), "--unseen-codes", "0.25")
    _, splits = read_all(tmp_path / "out")
    unseen = read_jsonl(tmp_path / "out" / "test_unseen.jsonl")
    assert len({r["gold_code"] for r in unseen}) == 2 and len(unseen) == 10
    trained = {r["messages"][2]["content"].split(" - ")[0] for r in splits["train"] + splits["val"]}
    assert not {r["gold_code"] for r in unseen} & trained


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_sources(tmp_path, fmt):
    import pandas as pd

    frame = pd.DataFrame([{"ID": i, "Dialogue": DIALOGUE.format(part="knee", when=f"d{i}"), "ICD10": "M25562",
                           "ICD10_desc": "Pain in left knee"} for i in range(10)])
    path = tmp_path / f"rows.{fmt}"
    frame.to_json(path, orient="records", lines=True) if fmt == "jsonl" else frame.to_parquet(path)
    code, output = run_prepare("--source", str(path), "--out", str(tmp_path / "out"))
    assert code == 0, output
    card, splits = read_all(tmp_path / "out")
    assert card["rows_kept"] == 10
    assert {r["id"] for r in splits["test"]} <= {str(i) for i in range(10)}


BAD_INPUTS = {
    "missing_column": ("rows.csv", lambda p: write_csv(p, [{"Dialogue": "x", "Code": "N10"}]), "ICD10"),
    "empty_file": ("rows.csv", lambda p: p.write_text(""), "empty"),
    "latin1": ("rows.csv", lambda p: write_csv(p, [{"Dialogue": "Douleur à l'épaule", "ICD10": "M25511"}],
                                              encoding="latin-1"), "UTF-8"),
    "no_usable_rows": ("rows.csv", lambda p: write_csv(p, [{"Dialogue": "", "ICD10": "N10"},
                                                         {"Dialogue": "hello", "ICD10": "nope"}]), "no usable rows"),
    "header_only": ("rows.csv", lambda p: p.write_text("Dialogue,ICD10\n"), "rows.csv"),
    "wrong_suffix": ("rows.xlsx", lambda p: p.write_text("x"), "unsupported"),
    "missing_file": ("absent.csv", lambda p: None, "no such file"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, case):
    name, make, message = BAD_INPUTS[case]
    source = tmp_path / name
    make(source)
    out = tmp_path / "out"
    result = CliRunner().invoke(prepare.main, ["--source", str(source), "--out", str(out), "--tokenizer", "none"])
    assert result.exit_code != 0
    assert name in result.output and message in result.output, result.output
    assert not out.exists() or not any(out.iterdir())


def test_failed_run_keeps_the_previous_files(tmp_path):
    out = tmp_path / "out"
    good = write_csv(tmp_path / "good.csv", QUIRK_ROWS)
    run_prepare("--source", str(good), "--out", str(out))
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    bad = write_csv(tmp_path / "bad.csv", [{"Dialogue": "", "ICD10": "N10"}])
    assert run_prepare("--source", str(bad), "--out", str(out))[0] != 0
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_outputs_are_private(tmp_path):
    run_prepare("--demo", "--out", str(tmp_path / "out"))
    for path in (tmp_path / "out").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o700


def test_templated_data_is_labelled_synthetic_and_measured_in_tokens(tmp_path, embedded_model):
    result = CliRunner().invoke(prepare.main, ["--templated", "--out", str(tmp_path / "out"),
                                               "--tokenizer", str(embedded_model)])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "out" / "data_card.json").read_text())
    assert card["synthetic_demo"] is True and "templated synthetic" in card["source"]
    assert "templated synthetic data" in (tmp_path / "out" / "data_card.md").read_text()
    lengths = card["token_lengths"]["prompt_plus_answer"]
    assert 100 < lengths["p50"] <= lengths["p95"] <= lengths["max"] < 512
    assert card["test_codes_seen_in_train"] == card["test_codes"] >= 5


def test_demo_is_the_embedded_real_rows_split_by_category(tmp_path):
    """`--demo` reads the committed real subset (no hub, no shared folder); by category no test code nor any
    sibling of it is trained on."""
    code, output = run_prepare("--demo", "--group-by", "category", "--val-fraction", "0.16", "--test-fraction",
                               "0.24", "--out", str(tmp_path / "out"))
    assert code == 0, output
    card, splits = read_all(tmp_path / "out")
    assert card["embedded_demo"] is True and card["synthetic_demo"] is False
    assert "embedded real MedSynth" in card["source"] and card["rows_kept"] == 100
    categories = {name: {row_code(r)[:3] for r in rows} for name, rows in splits.items()}
    assert categories["train"].isdisjoint(categories["test"]) and categories["train"].isdisjoint(categories["val"])
    assert categories["val"].isdisjoint(categories["test"])
    assert card["test_codes_seen_in_train"] == 0 and len(splits["test"]) >= 15 and len(splits["val"]) >= 10
    assert card["options"]["group_by"] == "category"


def test_demo_and_templated_and_source_exclude_each_other(tmp_path):
    code, output = run_prepare("--demo", "--templated", "--out", str(tmp_path / "out"))
    assert code != 0 and "exclude each other" in output


def test_real_medsynth_sample(tmp_path, medsynth_sample):
    code, output = run_prepare("--source", str(medsynth_sample), "--out", str(tmp_path / "out"))
    assert code == 0, output
    card, splits = read_all(tmp_path / "out")
    assert card["rows_in"] == 121 == card["rows_kept"] + card["rows_dropped"]
    assert card["codes_per_chapter"].keys() <= {"1", "2"}
    assert splits["test"], "one row per code must still give a test split"
    for row in splits["test"]:
        assert len(row["gold_code"]) == 3 or row["gold_code"][3] == "."
        assert row["dialogue"].startswith(("Doctor:", "Patient:"))


def test_token_lengths_equal_direct_tokenization(embedded_model, medsynth_sample):
    """The fast count (dialogue + per-code shell) equals tokenizing each whole chat, on real rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    rows = [json.loads(line) for line in medsynth_sample.read_text().splitlines()]
    from icd10_coder.datacard import prompt_shell_tokens
    from icd10_coder.preparation import canonical_columns, clean_rows
    from icd10_coder.records import training_record

    kept, _ = clean_rows(canonical_columns(rows, "sample"), "keep", False)
    direct = [len(tokenizer.apply_chat_template(training_record(e)["messages"], tokenize=True,
                                                return_dict=True)["input_ids"]) for e in kept]
    dialogue = [len(ids) for ids in tokenizer([e.dialogue for e in kept], add_special_tokens=False)["input_ids"]]
    fast = [d + shell for d, shell in zip(dialogue, prompt_shell_tokens(tokenizer, kept), strict=True)]
    assert fast == direct
