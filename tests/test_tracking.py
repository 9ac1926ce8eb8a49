import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pipeline import tracking
from pipeline.common import RunKey, manifest_path, stage_name
from tests.project_copy import ROOT, copy_project, free_port


def test_queued_experiments_log_to_the_store_of_the_checkout_that_queued_them(monkeypatch):
    monkeypatch.setattr(tracking, "PROJECT_ROOT", Path("/home/me/study/.dvc/tmp/exps/tmpab12cd"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.project_root() == Path("/home/me/study")
    assert tracking.tracking_uri() == "sqlite:////home/me/study/mlflow.db"


def test_environment_overrides_the_default_store(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking.tracking_uri() == "http://mlflow.internal:5000"


def test_run_names_match_the_dvc_matrix_and_its_output_paths():
    """DVC names a matrix instance by its items in the matrix's key order; RunKey must agree with dvc.yaml."""
    key = RunKey("dmoco", 10.0, "balanced", 2, 1)
    assert key.stage("pretrain") == "pretrain@dmoco-10-balanced-2-1" and stage_name("report") == "report"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    item = {"method": "dmoco", "imbalance": "10", "train_set": "balanced", "draw": 2, "seed": 1}
    for stage, folder in (("pretrain", key.pretrain_dir), ("probe", key.probe_dir)):
        assert list(stages[stage]["matrix"]) == list(item)
        out = stages[stage]["outs"][0]  # model.pt, test_features.npz
        assert re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), out).startswith(f"{folder}/")
    assert stages["prepare"]["outs"][0].replace("${item.imbalance}", "10").replace("${item.draw}", "2") == str(
        manifest_path(10.0, 2)
    )


# One stage's MLflow work, as a stage process does it.
STAGE = """
import sys
import time
import urllib.request
from pipeline.tracking import StageRun
with StageRun("prepare", f"prepare@{sys.argv[1]}", {"i": sys.argv[1]}, "first-use") as run:
    run.log_metrics({"x": 1.0})
"""


def test_several_stages_creating_the_default_store_at_once_all_log(tmp_path):
    """Queue workers on a fresh checkout: the first processes create mlflow.db and the experiment together."""
    env = copy_project(tmp_path)
    procs = [
        subprocess.Popen([sys.executable, "-c", STAGE, str(i)], cwd=tmp_path, env=env, stderr=subprocess.PIPE)
        for i in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("first-use").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"prepare@{i}" for i in range(4)]
    assert all(r.info.status == "FINISHED" and r.data.metrics == {"x": 1.0} for r in runs)


def test_an_experiment_another_worker_creates_first_is_used_not_an_error(tmp_path, monkeypatch):
    """Two queue workers on one tracking server: both look the experiment up, find none, and create it."""
    uri = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    lookup = mlflow.MlflowClient.get_experiment_by_name
    other_worker = mlflow.MlflowClient(uri)

    def lookup_losing_the_race(self, name):
        if lookup(other_worker, name) is None:
            other_worker.create_experiment(name)  # the other worker's create lands between our lookup and ours
            return None
        return lookup(self, name)

    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", lookup_losing_the_race)
    with tracking.StageRun("prepare", "prepare@1-0", {"i": 1}, "race") as run:
        run.log_metrics({"x": 1.0})
    experiment = other_worker.get_experiment_by_name("race")
    runs = other_worker.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["prepare@1-0"] and runs[0].info.status == "FINISHED"


def test_the_experiment_opens_as_model_training_and_runs_carry_their_training_set(tmp_path, monkeypatch):
    """MLflow 3's UI shows an untagged experiment as a GenAI one (its traces view); the runs table's Datasets
    column lists each run's dataset inputs."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    client.create_experiment("older")  # made before the tag existed: tagged on next use
    for experiment in ("older", "new"):
        with tracking.StageRun("pretrain", "pretrain@moco-10-lt-0-0", {"i": 1}, experiment) as run:
            for _ in range(2):  # a resumed run logs it again: still one input
                run.log_dataset(
                    "digits-imb10-lt-d0", np.array([3, 8, 9]), np.array([0, 1, 1]), Path("m.json"), "training"
                )
        assert client.get_experiment_by_name(experiment).tags[tracking.EXPERIMENT_KIND] == "custom_model_development"
    inputs = client.get_run(run.run.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == "digits-imb10-lt-d0"
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "training")]
    assert json.loads(inputs[0].dataset.profile)["features_size"] == 3
    assert json.loads(inputs[0].dataset.source) == {"uri": "m.json"}


def test_a_training_set_another_worker_logs_first_is_linked_not_an_error(tmp_path, monkeypatch):
    """Two queue workers starting runs on the same LT set at once: MLflow looks the dataset up, finds none and
    inserts it, and the other worker's insert lands in between (seen in a CI run on a tracking server)."""
    from mlflow.entities import Dataset, DatasetInput
    from mlflow.store.tracking.dbmodels.models import SqlDataset
    from sqlalchemy.orm import Session

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    other_worker = mlflow.MlflowClient(uri)
    add_all = Session.add_all
    raced = []

    def add_all_losing_the_race(self, objects):
        rows = [o for o in objects if isinstance(o, SqlDataset)]
        if rows and not raced:  # our lookup found no dataset; the other worker's insert commits before ours
            raced.append(rows[0].name)
            fields = ("name", "digest", "dataset_source_type", "dataset_source", "dataset_schema", "dataset_profile")
            dataset = Dataset(*(getattr(rows[0], f) for f in fields))
            other_run = other_worker.create_run(rows[0].experiment_id).info.run_id
            other_worker.log_inputs(other_run, [DatasetInput(dataset)])
            other_worker.set_terminated(other_run)
        return add_all(self, objects)

    with tracking.StageRun("pretrain", "pretrain@moco-10-lt-0-0", {"i": 1}, "race") as run:
        monkeypatch.setattr(Session, "add_all", add_all_losing_the_race)
        run.log_dataset("digits-imb10-lt-d0", np.array([3, 8, 9]), np.array([0, 1, 1]), Path("m.json"), "training")
        monkeypatch.undo()
    assert raced == ["digits-imb10-lt-d0"]
    experiment = other_worker.get_experiment_by_name("race").experiment_id
    inputs = [other_worker.get_run(r.info.run_id).inputs.dataset_inputs for r in other_worker.search_runs([experiment])]
    assert [len(i) for i in inputs] == [1, 1]
    assert inputs[0][0].dataset.digest == inputs[1][0].dataset.digest  # one dataset, linked to both runs


@pytest.mark.slow
def test_make_ui_prints_the_runs_table_and_serves_it(tmp_path):
    env = copy_project(tmp_path)
    setup = "from pipeline.tracking import StageRun\nwith StageRun('report', 'report', {}, 'duel-digits'): pass"
    subprocess.run([sys.executable, "-c", setup], cwd=tmp_path, env=env, check=True, capture_output=True)
    experiment = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("duel-digits")
    port = free_port()
    command = [sys.executable, "-m", "pipeline", "ui", "--port", str(port)]
    ui = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = ui.stdout.readline().strip()
        url = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
        assert line == f"MLflow runs of duel-digits: {url}"
        deadline = time.monotonic() + 60
        while tracking.unreachable(f"http://127.0.0.1:{port}"):
            assert ui.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
            time.sleep(0.5)
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={experiment.experiment_id}"
        with urllib.request.urlopen(api, timeout=10) as reply:  # the UI serves the store the URL points into
            assert json.load(reply)["experiment"]["name"] == "duel-digits"
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait(timeout=30)


def test_a_stage_ray_retries_carries_on_its_first_attempts_run_with_its_node_and_attempt(tmp_path, monkeypatch):
    """A probe whose node was lost mid-run: the launcher's retry (attempt 2) reopens the run the first
    attempt left unfinished, so the instance keeps one MLflow run; a new first attempt starts its own."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DUEL_LAUNCH_NODE", "127.0.0.1/aaaa0000")
    monkeypatch.setenv("DUEL_LAUNCH_ATTEMPT", "1")
    lost = tracking.StageRun("probe", "probe@moco-10-lt-0-0", {"i": 1}, "retries").__enter__()
    mlflow.end_run("RUNNING")  # the worker died: the run was never closed
    monkeypatch.setenv("DUEL_LAUNCH_NODE", "127.0.0.1/bbbb1111")
    monkeypatch.setenv("DUEL_LAUNCH_ATTEMPT", "2")
    with tracking.StageRun("probe", "probe@moco-10-lt-0-0", {"i": 1}, "retries") as retry:
        pass
    assert retry.run.info.run_id == lost.run.info.run_id
    tags = mlflow.MlflowClient(uri).get_run(retry.run.info.run_id).data.tags
    assert (tags["launch_node"], tags["launch_attempt"]) == ("127.0.0.1/bbbb1111", "2")
    monkeypatch.setenv("DUEL_LAUNCH_ATTEMPT", "1")
    with tracking.StageRun("probe", "probe@moco-10-lt-0-0", {"i": 1}, "retries") as fresh:
        pass
    assert fresh.run.info.run_id != lost.run.info.run_id
