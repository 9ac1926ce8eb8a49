"""`python -m pipeline ui`: the MLflow UI on the study's store, opened at its runs table."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from pipeline.common import PARAMS, ParamsOption, read_params
from pipeline.tracking import is_server, tracking_uri

PortOption = Annotated[int, typer.Option(help="port of the UI on 127.0.0.1")]


def runs_url(base: str, experiment_id: str | None) -> str:
    """The runs table of the experiment (MLflow's UI routes after '#'), or the experiment list without one.

    MLflow 3.17's UI starts in its GenAI mode (an experiment opens on "Traces: 0") whatever the experiment's
    mlflow.experimentKind tag says; the workflowType parameter switches it to model training, and the UI
    remembers the choice in the browser."""
    if not experiment_id:
        return base
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui(port: PortOption = 5000, params: ParamsOption = PARAMS) -> None:
    """Print the address of the study's runs table and serve the MLflow UI there (Ctrl-C stops it);
    with MLFLOW_TRACKING_URI set to a tracking server, print that server's address instead."""
    import mlflow

    name = read_params(params).tracking.experiment
    uri = tracking_uri()
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else None
    base = uri if is_server(uri) else f"http://127.0.0.1:{port}"
    note = "" if experiment_id else f" (no experiment {name!r} yet: run `dvc repro` first)"
    print(f"MLflow runs of {name}: {runs_url(base, experiment_id)}{note}", flush=True)
    if not is_server(uri):  # a tracking server serves its own UI
        # MLflow's GenAI job runners (8 more processes, each importing MLflow) serve jobs no stage submits.
        os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
        os.execv(sys.executable, [*command, "--port", str(port)])
