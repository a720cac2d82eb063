"""README and GUIDE figures come from generated files: a block that differs from its file fails here."""

from __future__ import annotations

from pathlib import Path

from icd10_coder.generated import GENERATED_DIR, blocks, sync_docs, write_generated

REPO = Path(__file__).resolve().parents[1]


def test_every_generated_block_in_readme_and_guide_is_its_file_verbatim():
    found = {}
    for doc in ("README.md", "GUIDE.md"):
        for name, content in blocks((REPO / doc).read_text(encoding="utf-8")).items():
            source = GENERATED_DIR / f"{name}.md"
            assert source.is_file(), f"{doc} shows generated:{name}, but {source} does not exist"
            assert content == source.read_text(encoding="utf-8"), f"{doc}: block {name} differs from {source.name}"
            found[(doc, name)] = True
    assert ("README.md", "experiment-real-summary") in found  # the README's result table is the experiment's file
    assert ("GUIDE.md", "experiment-real") in found and ("GUIDE.md", "retrieval-study") in found


def test_the_readme_summary_is_the_start_of_the_full_experiment_table():
    """Both files come from one run (tools/experiment_real.py writes them together): the summary is the
    header, verdict and both unseen-categories tables of the full file, verbatim."""
    summary = (GENERATED_DIR / "experiment-real-summary.md").read_text(encoding="utf-8")
    full = (GENERATED_DIR / "experiment-real.md").read_text(encoding="utf-8")
    assert full.startswith(summary.rstrip("\n")) and "target" in summary.lower()
    assert "Choices on dev" not in summary  # the README shows the tables; the choices are in GUIDE only
    if "| Retrieval (fine-tuned encoder) |" in full:  # a run of the protocol with the fine-tuned encoder
        assert "**Unseen categories, every test row" in summary and "| Retrieval (fine-tuned encoder) |" in summary
        assert "Choices on dev" in full


def test_write_generated_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- generated:a -->\nold\n<!-- /generated:a -->\nmiddle\n"
                   "<!-- generated:b -->\nkeep\n<!-- /generated:b -->\n")
    write_generated("a", "| new | table |", folder=tmp_path / "gen", docs=(doc,))
    text = doc.read_text()
    assert "| new | table |\n<!-- /generated:a -->" in text and "old" not in text and "\nkeep\n" in text
    (tmp_path / "gen" / "a.md").write_text("edited\n")
    sync_docs(tmp_path / "gen", (doc,))
    assert blocks(doc.read_text()) == {"a": "edited\n", "b": "keep\n"}
