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


def readme_commands() -> list[str]:
    """Every command line of the README's bash blocks (comments stripped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].split(" # ", 1)[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def test_readme_is_a_short_product_page():
    assert len(README.splitlines()) <= 150
    for heading in ("## Quick start", "## Result on real dialogues", "## The real thing, on a GPU", "## Read more"):
        assert heading in README


def test_every_command_the_readme_shows_exists():
    """Each `python tools/X.py` answers --help (exit 0) and knows every option the README passes it; each
    `make X` is a target; each recipe or config file named exists."""
    import subprocess
    import sys

    commands = readme_commands()
    assert len(commands) >= 10
    helps: dict[str, str] = {}
    for command in commands:
        words = command.split()
        if words[0] == "make":
            assert words[1] in MAKE_TARGETS, command
            continue
        for path in (w for w in words if w.startswith(("recipes/", "tools/", "tasks/"))):
            assert (REPO / path).exists(), (command, path)
        if words[0] == "python" and words[1].startswith("tools/"):
            if words[1] not in helps:
                result = subprocess.run([sys.executable, words[1], "--help"], cwd=REPO, capture_output=True,
                                        text=True, timeout=300)
                assert result.returncode == 0, (words[1], result.stderr[-2000:])
                helps[words[1]] = result.stdout
            for option in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
                assert option in helps[words[1]], (command, option)
        else:
            assert words[0] == "accelerate", f"a README command this test does not know how to check: {command}"
