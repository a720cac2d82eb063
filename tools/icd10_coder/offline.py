"""Privacy defaults: telemetry off, read from ``tools/offline.env`` (the single source).

The Makefile exports the same file; Python entry points call :func:`apply_offline_env`
first thing, and every subprocess they start gets :func:`subprocess_env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from icd10_coder.paths import OFFLINE_ENV_FILE, private_folder
from icd10_coder.workspace import WORKSPACE_ENV

if TYPE_CHECKING:
    from icd10_coder.workspace import Workspace

# Set on top of the telemetry defaults where nothing may touch the network at all
# (demo, tests, predict): models and data must come from local files.
HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def telemetry_defaults(path: Path = OFFLINE_ENV_FILE) -> dict[str, str]:
    """The NAME=VALUE pairs of ``offline.env``."""
    pairs: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def subprocess_env(base: Mapping[str, str] | None = None, hub_offline: bool = False) -> dict[str, str]:
    """``base`` (default: this process's environment) with the defaults filled in where unset."""
    env = dict(os.environ if base is None else base)
    defaults = telemetry_defaults() | (HUB_OFFLINE if hub_offline else {})
    for name, value in defaults.items():
        env.setdefault(name, value)
    return env


def apply_offline_env(hub_offline: bool = False) -> None:
    """Fill this process's environment with the defaults (call before importing ML libraries)."""
    os.environ.update(subprocess_env(hub_offline=hub_offline))


def workspace_env(workspace: Workspace, hub_offline: bool = False) -> dict[str, str]:
    """:func:`subprocess_env` for a command that runs in ``workspace``.

    The child reads and writes that workspace (tools see $ICD10_WORKSPACE), logs to its
    MLflow store, and the Hugging Face datasets cache (where axolotl copies every dialogue
    it loads) is an owner-only folder inside it instead of ~/.cache.
    """

    env = subprocess_env(hub_offline=hub_offline)
    env[WORKSPACE_ENV] = str(workspace.root)
    env["MLFLOW_TRACKING_URI"] = workspace.tracking_uri()
    env["HF_DATASETS_CACHE"] = str(private_folder(workspace.datasets_cache))
    return env
