"""Where one run reads and writes: prepared data, adapters, results, report, MLflow store.

The real run's workspace is the checkout itself (``data/prepared/`` and ``outputs/``), so
``accelerate launch -m axolotl.cli.train recipes/qlora.yml`` works as written. Any other
workspace is one folder holding the same things without the ``data/`` and ``outputs/``
level: ``make demo`` uses ``outputs/demo/``, tests use throw-away folders. Choose one with
``--workspace DIR`` on every tool, or ``ICD10_WORKSPACE=DIR`` (``make ... WORKSPACE=DIR``).

Recipes name real-run paths (``data/prepared/train.jsonl``, ``outputs/adapters/qlora``);
:meth:`Workspace.recipe_for` rewrites them into the workspace, so one recipe serves both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icd10_coder.paths import REPO_ROOT, display_path

WORKSPACE_ENV = "ICD10_WORKSPACE"
DEMO_WORKSPACE = REPO_ROOT / "outputs" / "demo"
SERVING_WORKSPACE = REPO_ROOT / "outputs" / "serving"  # tools/serving_model.py: trained on every real row
# Real-run paths as recipes and run configs write them (relative to the checkout).
REAL_PREPARED = Path("data") / "prepared"
REAL_DATA = Path("data")
REAL_OUTPUTS = Path("outputs")
SHARED_OUTPUTS = ("models",)  # the embedded model is read by every workspace, never copied
SQLITE = "sqlite:///"


@dataclass(frozen=True)
class Workspace:
    """The folders of one run. ``outputs`` holds every run product except the prepared data."""

    prepared: Path
    outputs: Path

    @classmethod
    def real(cls) -> Workspace:
        return cls(prepared=REPO_ROOT / REAL_PREPARED, outputs=REPO_ROOT / REAL_OUTPUTS)

    @classmethod
    def at(cls, root: str | Path | None = None) -> Workspace:
        """``root``, else $ICD10_WORKSPACE, else the real run's (the checkout)."""
        chosen = root if root not in (None, "") else os.environ.get(WORKSPACE_ENV) or None
        if chosen is None:
            return cls.real()
        folder = Path(chosen)
        folder = (folder if folder.is_absolute() else Path.cwd() / folder).resolve()
        if folder == REPO_ROOT:
            return cls.real()
        if folder in (REPO_ROOT / REAL_PREPARED, REPO_ROOT / REAL_OUTPUTS) or folder in REPO_ROOT.parents:
            raise ValueError(f"{folder} cannot be a workspace: it would mix with the real run's files")
        return cls(prepared=folder / "prepared", outputs=folder)

    @property
    def is_real(self) -> bool:
        return self == Workspace.real()

    @property
    def root(self) -> Path:
        return REPO_ROOT if self.is_real else self.outputs

    @property
    def name(self) -> str:
        return "real run (checkout)" if self.is_real else display_path(self.root)

    @property
    def prepared_shortlist(self) -> Path:
        """Prepared data whose prompts carry the retrieval shortlist (``prepare --shortlist K``)."""
        return self.prepared.with_name("prepared-shortlist")

    @property
    def prepared_choose(self) -> Path:
        """Shortlist data whose training rows teach choosing (``prepare --shortlist K --choose``)."""
        return self.prepared.with_name("prepared-choose")

    @property
    def validation_dir(self) -> Path:
        """Results on the validation split (``run_eval --split val``), kept apart from the test results."""
        return self.outputs / "eval-val"

    @property
    def retrieval_cache(self) -> Path:
        """Fitted retrieval indexes (icd10_coder.retrieval), rebuilt when their inputs change."""
        return self.outputs / "retrieval-cache"

    # ------------------------------------------------------------------ run products
    @property
    def eval_dir(self) -> Path:
        return self.outputs / "eval"

    @property
    def serving_file(self) -> Path:
        """The approach this workspace serves (``make demo`` writes it; predict and the app read it)."""
        return self.outputs / "serving.json"

    @property
    def report_dir(self) -> Path:
        return self.outputs / "report"

    @property
    def adapters_dir(self) -> Path:
        return self.outputs / "adapters"

    @property
    def axolotl_cache(self) -> Path:
        return self.outputs / "axolotl-cache"

    @property
    def datasets_cache(self) -> Path:
        """HF datasets cache for axolotl and lm-eval: owner-only, inside the workspace."""
        return self.outputs / "datasets-cache"

    @property
    def audit_dir(self) -> Path:
        """The coder's decisions from the app (owner-only, append-only JSONL)."""
        return self.outputs / "audit"

    @property
    def recipes_dir(self) -> Path:
        """Recipes rewritten into this workspace (not used by the real run)."""
        return self.outputs / "recipes"

    @property
    def mlflow_db(self) -> Path:
        return self.outputs / "mlflow.db"

    @property
    def artifact_root(self) -> Path:
        """MLflow artifacts live beside the store, whoever creates the experiment."""
        return self.outputs / "mlflow-artifacts"

    def tracking_uri(self) -> str:
        """The workspace's MLflow store (SQLite): the one place its training and evaluation runs go."""
        return f"{SQLITE}{self.mlflow_db}"

    def recipe_tracking_uri(self) -> str:
        """The store as a recipe writes it: relative to the checkout where possible (no machine paths)."""
        return SQLITE + display_path(self.mlflow_db)

    # ------------------------------------------------------------------ recipe paths
    def map(self, path: str | Path) -> Path:
        """A real-run path (``data/prepared/x``, ``outputs/eval/y``) in this workspace.

        Anything else (a hub id, an absolute path, the embedded model under outputs/models)
        is returned unchanged.
        """
        given = Path(path)
        if given.is_absolute():
            return given
        parts = given.parts
        if parts[:1] == REAL_DATA.parts and len(parts) > 1 and parts[1].startswith("prepared"):
            return self.prepared.with_name(parts[1]).joinpath(*parts[2:])  # prepared, prepared-shortlist
        if parts[:1] == REAL_OUTPUTS.parts and not (len(parts) > 1 and parts[1] in SHARED_OUTPUTS):
            return self.outputs.joinpath(*parts[1:])
        return given

    def map_display(self, path: str | Path) -> str:
        """:meth:`map`, written relative to the checkout where possible."""
        mapped = self.map(path)
        return display_path(mapped) if mapped.is_absolute() else str(mapped)

    def recipe_for(self, recipe: dict[str, Any]) -> dict[str, Any]:
        """A copy of an axolotl recipe whose data, cache, output and MLflow paths are this workspace's."""
        resolved = dict(recipe)
        for key in ("datasets", "test_datasets"):
            if resolved.get(key):
                resolved[key] = [{**entry, "path": self.map_display(entry["path"])} if "path" in entry else entry
                                 for entry in resolved[key]]
        for key in ("dataset_prepared_path", "output_dir"):
            if resolved.get(key):
                resolved[key] = self.map_display(resolved[key])
        if resolved.get("use_mlflow") or resolved.get("mlflow_tracking_uri"):
            resolved["mlflow_tracking_uri"] = self.recipe_tracking_uri()
        return resolved
