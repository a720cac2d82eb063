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


def prose(text: str) -> str:
    """A document without its generated blocks: what was typed by hand."""
    return re.sub(r"<!-- generated:([\w.-]+) -->\n.*?<!-- /generated:\1 -->", "", text, flags=re.S)


def test_the_layout_table_names_every_module_of_the_package():
    table = GUIDE.split("### Layout", 1)[1]
    owners = [line.rstrip(" |").rsplit("| ", 1)[1] for line in table.splitlines() if line.startswith("| ")]
    named = set(re.findall(r"`([a-z_]+\.py|[a-z_]+/)`", "\n".join(owners)))
    package = REPO / "tools" / "icd10_coder"
    modules = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    modules |= {f"{p.name}/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert modules == named, modules ^ named


def test_typed_timings_and_row_counts_match_the_generated_files():
    """Hand-typed figures that a run measured: the demo's minutes, the experiment's hours, the real row counts."""
    from icd10_coder.realdata import EMBEDDED_ROWS, REAL_FILES

    generated = REPO / "docs" / "generated"
    demo = re.search(r"\*\*(\d+) min (\d+) s\*\*", (generated / "demo-run.md").read_text())
    demo_minutes = int(demo.group(1)) + int(demo.group(2)) / 60
    experiment = (generated / "experiment-real.md").read_text()
    total_rows = int(re.match(r"(\d+) real MedSynth dialogues", experiment).group(1))
    file_rows = {sum(1 for line in path.read_text().splitlines() if line.strip()) for path in REAL_FILES
                 if path.is_file()}
    full_run = "--retrieval-only" not in experiment.split("\n", 1)[0]
    experiment_minutes = int(re.search(r"(\d+) min on 2 CPU cores", experiment).group(1))
    for name in ("README.md", "GUIDE.md", "Makefile"):
        for line in prose((REPO / name).read_text()).splitlines():
            if "demo" in line.lower():
                for claimed in re.findall(r"~\s?(\d+) min", line):
                    assert abs(int(claimed) - demo_minutes) <= 1, (name, line, demo_minutes)
            for claimed in re.findall(r"(\d[\d,]*) (?:shared )?real (?:MedSynth )?(?:rows|dialogues)", line):
                assert int(claimed.replace(",", "")) in {total_rows, EMBEDDED_ROWS, *file_rows}, (name, line)
            if full_run and "experiment" in line:
                for hours in re.findall(r"~\s?(\d+(?:\.\d+)?) h\b", line):
                    assert abs(float(hours) * 60 - experiment_minutes) <= 20, (name, line, experiment_minutes)
