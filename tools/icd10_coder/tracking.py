"""MLflow location: a local SQLite store under outputs/ unless MLFLOW_TRACKING_URI says otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from icd10_coder.offline import telemetry_defaults
from icd10_coder.paths import OUTPUTS, REPO_ROOT

SQLITE = "sqlite:///"


def tracking_uri() -> str:
    """The configured URI, with a relative SQLite path anchored at the repository root.

    axolotl recipes say ``sqlite:///outputs/mlflow.db`` (relative to where you launch, the
    repository root); tools resolve it the same way wherever they are started from.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or telemetry_defaults()["MLFLOW_TRACKING_URI"]
    if uri.startswith(SQLITE) and not uri[len(SQLITE):].startswith("/"):
        return f"{SQLITE}{REPO_ROOT / uri[len(SQLITE):]}"
    return uri


def artifact_root() -> Path:
    """Artifacts live beside a SQLite store (outputs/mlflow-artifacts by default)."""
    uri = tracking_uri()
    store_dir = Path(uri[len(SQLITE):]).parent if uri.startswith(SQLITE) else OUTPUTS
    return store_dir / "mlflow-artifacts"


def use_experiment(name: str) -> str:
    """Select (creating if needed) the experiment; new ones keep artifacts beside the store."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        root = artifact_root()
        root.mkdir(parents=True, exist_ok=True)
        experiment_id = mlflow.create_experiment(name, artifact_location=root.as_uri())
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
