"""Shared fixtures: paths, the embedded model, the real MedSynth sample when present."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
# tools/*.py are scripts; make them importable for unit tests.
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

from icd10_coder.offline import apply_offline_env, subprocess_env  # noqa: E402
from icd10_coder.paths import EMBEDDED_MODEL, MEDSYNTH_SAMPLE  # noqa: E402

# Tests run with the project's privacy defaults even when pytest is called directly (not
# through `make test`): libraries imported in-process (axolotl, MLflow) read them at import.
apply_offline_env(hub_offline=True)
# Any Hugging Face datasets cache a test (or a command it starts) writes goes to a private
# throw-away folder, never ~/.cache; tests never use the real run's workspace either.
_DATASETS_CACHE = tempfile.mkdtemp(prefix="icd10-test-datasets-")
atexit.register(shutil.rmtree, _DATASETS_CACHE, True)
os.environ["HF_DATASETS_CACHE"] = _DATASETS_CACHE
os.environ.pop("ICD10_WORKSPACE", None)


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


def prepare_templated(out: Path, *extra: str) -> Path:
    """Run `tools/prepare.py --templated` into ``out`` (no token lengths: fast) and return ``out``.

    Templated dialogues state their diagnosis and are short: they test wiring (prompts, files, tasks)
    in seconds; real dialogues (``--demo``, the shared files) test value. Its workspace (retrieval
    cache, MLflow) is a throw-away folder beside ``out``."""
    subprocess.run([sys.executable, str(TOOLS / "prepare.py"), "--templated", "--tokenizer", "none", "--out", str(out),
                    "--workspace", str(out.parent / f"{out.name}-workspace"), *extra],
                   check=True, capture_output=True, env=subprocess_env(hub_offline=True))
    return out


def network_namespace_available() -> tuple[bool, str]:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False, "unshare/ip not installed"
    if os.geteuid() != 0:
        return False, "needs root for a network namespace"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"unshare -n refused: {probe.stderr.strip()}"
    return True, ""


def offline_command(command: list[str]) -> tuple[list[str], bool, str]:
    """``command`` inside a loopback-only network namespace where the machine allows one."""
    offline, why_not = network_namespace_available()
    if offline:
        quoted = " ".join(f"'{c}'" for c in command)
        command = ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {quoted}"]
    return command, offline, why_not


def pipeline_env() -> dict[str, str]:
    """The privacy env, without the tests' private datasets cache: a tool that forgot to set its
    own would then write to ~/.cache, where the stray-copy checks look."""
    env = subprocess_env(hub_offline=True)
    env.pop("HF_DATASETS_CACHE", None)
    env.pop("ICD10_WORKSPACE", None)
    return env
