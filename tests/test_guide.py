"""GUIDE.md and README.md stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GUIDE = (REPO / "GUIDE.md").read_text()
README = (REPO / "README.md").read_text()
MAKE_TARGETS = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))


def test_every_make_target_named_in_the_docs_exists():
    for doc in (GUIDE, README):
        named = set(re.findall(r"`make ([a-z][a-z-]*)", doc))
        assert named, "docs name make targets"
        assert named <= MAKE_TARGETS, named - MAKE_TARGETS


def test_hyperparameter_table_matches_the_gpu_recipe_exactly():
    section = GUIDE.split("## 4 Every hyperparameter", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_0-9]+)` \|", section, re.M)
    recipe = yaml.safe_load((REPO / "recipes" / "qlora.yml").read_text())
    assert len(documented) == len(set(documented)), "a key is documented twice"
    assert set(documented) == set(recipe), (set(documented) ^ set(recipe))


def test_documented_values_match_the_recipe():
    section = GUIDE.split("## 4 Every hyperparameter", 1)[1].split("\n## ", 1)[0]
    recipe = yaml.safe_load((REPO / "recipes" / "qlora.yml").read_text())
    for key, value in re.findall(r"^\| `([a-z_0-9]+)` \| `([^`]+)` \|", section, re.M):
        if isinstance(recipe[key], (list, dict)):
            continue
        assert str(recipe[key]).lower() == value.lower() or yaml.safe_load(value) == recipe[key], (key, value)


def test_files_and_tools_named_in_the_docs_exist():
    for doc in (GUIDE, README):
        for path in set(re.findall(r"`((?:tools|recipes|prompts|tasks|tests)/[\w./-]+\.(?:py|yml|yaml|j2|json|sh|md))`",
                                   doc)):
            assert (REPO / path).exists(), path


def test_readme_test_command_is_what_ci_runs():
    assert "make test" in README and "make test" in (REPO / ".ci" / "run").read_text()
