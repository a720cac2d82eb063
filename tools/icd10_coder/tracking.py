"""MLflow, locally: each workspace has a SQLite store with its artifacts beside it.

MLflow gives an experiment the artifact location it has when the experiment is
*created*; created by axolotl's callback it would be ``./mlruns`` under whatever folder
training was launched from. So every tool that may come first (prepare, train, report)
creates the experiment itself, with the artifact folder beside the store.
"""

from __future__ import annotations

from icd10_coder.paths import private_folder
from icd10_coder.workspace import SQLITE, Workspace

EXPERIMENT = "icd10-medsynth"


def use_experiment(workspace: Workspace, name: str = EXPERIMENT) -> str:
    """Point MLflow at the workspace's store and select (creating if needed) the experiment."""
    import mlflow

    uri = workspace.tracking_uri()
    if uri.startswith(SQLITE):
        private_folder(workspace.outputs)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        root = private_folder(workspace.artifact_root)
        experiment_id = mlflow.create_experiment(name, artifact_location=root.as_uri())
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
