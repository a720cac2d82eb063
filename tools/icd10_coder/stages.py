"""Run one pipeline stage as the command a user would type, with its time recorded.

``make demo`` and ``make experiment-real`` chain the project's own tools through here: each
stage is a subprocess in the checkout with the workspace's private, offline environment.
"""

from __future__ import annotations

import subprocess
import time

import click

from icd10_coder.offline import workspace_env
from icd10_coder.paths import REPO_ROOT, display_path
from icd10_coder.workspace import Workspace


def run(stage: str, command: list[str], timings: dict[str, float], workspace: Workspace) -> None:
    """Run ``command``; its seconds go into ``timings[stage]``; a failure stops the chain with the stage named."""
    shown = [display_path(part) if part.startswith("/") else part for part in command]
    click.secho(f"\n=== {stage}: {' '.join(shown)}", bold=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=workspace_env(workspace, hub_offline=True), check=False)
    timings[stage] = round(time.perf_counter() - started, 1)
    if result.returncode != 0:
        raise click.ClickException(f"stage '{stage}' failed (exit {result.returncode}); see the output above")
