"""Shared fixtures: paths, the embedded model, the real MedSynth sample when present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
# tools/*.py are scripts; make them importable for unit tests.
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

from icd10_coder.offline import apply_offline_env, subprocess_env  # noqa: E402
from icd10_coder.paths import EMBEDDED_MODEL  # noqa: E402

# Tests run with the project's privacy defaults even when pytest is called directly (not
# through `make test`): libraries imported in-process (axolotl, MLflow) read them at import.
apply_offline_env(hub_offline=True)

MEDSYNTH_SAMPLE = REPO.parent / "shared" / "data" / "medsynth_sample.jsonl"
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    if not (EMBEDDED_MODEL / "config.json").is_file():
        pytest.fail(f"{EMBEDDED_MODEL} is missing: run `make setup` (make test does it)")
    return EMBEDDED_MODEL


@pytest.fixture(scope="session")
def medsynth_sample() -> Path:
    if not MEDSYNTH_SAMPLE.is_file():
        pytest.skip(f"real MedSynth sample not present at {MEDSYNTH_SAMPLE}")
    return MEDSYNTH_SAMPLE


def prepare_demo(out: Path) -> Path:
    """Run `tools/prepare.py --demo` into ``out`` (no token lengths: fast) and return ``out``."""
    subprocess.run([sys.executable, str(TOOLS / "prepare.py"), "--demo", "--tokenizer", "none", "--out", str(out)],
                   check=True, capture_output=True, env=subprocess_env(hub_offline=True))
    return out
