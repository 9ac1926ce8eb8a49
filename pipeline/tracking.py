"""The one MLflow helper every stage uses (DESIGN §5).

Tracking URI: `MLFLOW_TRACKING_URI` if set, else SQLite `mlflow.db` at the
project root by absolute path (the root of the original checkout also when DVC
runs a queued experiment in a temporary copy under `.dvc/tmp/exps`). Each stage
instance is one run named after it (`pretrain@moco-10-lt-0-0`, as DVC names it),
tagged with the stage, the hash of its resolved params and the DVC experiment
name and baseline revision when DVC sets them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from filelock import FileLock

from duel.config import config_hash, flatten
from duel.errors import DuelError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# MLflow's own record that the experiment holds model-training runs, not GenAI traces (the UI's mode itself is
# set by the address `python -m pipeline ui` prints: pipeline/ui.py).
EXPERIMENT_KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"
# Run tags from the environment: DVC's experiment name and baseline (a queued experiment), and the node and
# attempt of an instance that `python -m pipeline launch` runs (pipeline/worker.py sets them).
TAG_ENV = {
    "dvc_exp_name": "DVC_EXP_NAME",
    "dvc_baseline_rev": "DVC_EXP_BASELINE_REV",
    "launch_node": "DUEL_LAUNCH_NODE",
    "launch_attempt": "DUEL_LAUNCH_ATTEMPT",
}
STEP_FLUSH = 200  # per-step metrics are sent in batches: one SQLite write per 200 steps, not per step


class StageKilled(Exception):
    """SIGTERM or Ctrl-C in a stage: unwinds like an error (temp outputs removed), run marked KILLED.

    Not a KeyboardInterrupt: typer turns those into a silent exit before the stage can say what to do.
    """


def project_root() -> Path:
    """The checkout's root; for a queued DVC experiment, the checkout that queued it."""
    parts = PROJECT_ROOT.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return PROJECT_ROOT


def default_store() -> Path:
    return project_root() / "mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_store()}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def unreachable(uri: str) -> str | None:
    """Why the tracking server at `uri` does not answer its health check; None when it does."""
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5)
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def check_reachable(uri: str) -> None:
    """Fail fast, in one line, instead of MLflow's minutes of retries against a dead server."""
    if is_server(uri) and (reason := unreachable(uri)):
        raise DuelError(
            f"MLflow tracking server {uri} is unreachable ({reason}); "
            "start it (mlflow server ...) or unset MLFLOW_TRACKING_URI to log to mlflow.db"
        )


class StageRun:
    """One MLflow run for one stage instance; a context manager.

    With `resume=True` it reopens the newest unfinished run of the same name and
    params hash (a run killed halfway), so a resumed stage keeps one run, and every step
    metric reaches it exactly once: the trainer flushes the buffered steps before each
    checkpoint (a SIGKILL loses none that the resumed run will not recompute), and on
    reopening, steps the run already holds are not sent again.
    """

    def __init__(self, stage: str, name: str, config: dict[str, Any], experiment: str, resume: bool = False) -> None:
        self.stage, self.name, self.config, self.experiment = stage, name, config, experiment
        self.resume = resume
        self.params_hash = config_hash(config)
        self._steps: list[Any] = []
        self._logged: dict[str, int] = {}  # metric key -> last step the reopened run already holds

    def __enter__(self) -> StageRun:
        import mlflow

        uri = tracking_uri()
        local = uri != os.environ.get("MLFLOW_TRACKING_URI")  # the default store; read before set_tracking_uri sets it
        check_reachable(uri)
        mlflow.set_tracking_uri(uri)
        # Queue workers on a fresh checkout create the SQLite store, its tables and the experiment at the
        # same moment, and MLflow's table creation is not safe under that race: take turns (a server is).
        with FileLock(f"{default_store()}.lock") if local else contextlib.nullcontext():
            self.client = mlflow.MlflowClient()
            experiment_id = self._experiment_id(local)
        tags = {"stage": self.stage, "params_hash": self.params_hash}
        for tag, var in TAG_ENV.items():
            if os.environ.get(var):
                tags[tag] = os.environ[var]
        # A launched instance that Ray retries after its node was lost carries on its first attempt's run.
        retried = int(os.environ.get(TAG_ENV["launch_attempt"], "1")) > 1
        run_id = self._unfinished_run(experiment_id) if self.resume or retried else None
        self.run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=self.name, tags=tags)
        if run_id is None:
            mlflow.log_params({k: str(v) for k, v in flatten(self.config).items()})
            mlflow.log_dict(self.config, "config.json")
        else:
            for key in self.client.get_run(run_id).data.metrics:
                self._logged[key] = max(m.step for m in self.client.get_metric_history(run_id, key))
        return self

    def _experiment_id(self, local: bool) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            if experiment.tags.get(EXPERIMENT_KIND) != TRAINING:  # made by an older version of this pipeline
                self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, TRAINING)
            return experiment.experiment_id
        # Artifacts beside the default store, not in ./mlruns of whatever directory ran first.
        location = (project_root() / "mlartifacts").as_uri() if local else None
        try:
            return self.client.create_experiment(
                self.experiment, artifact_location=location, tags={EXPERIMENT_KIND: TRAINING}
            )
        except MlflowException as exc:
            # Two workers on one tracking server both found no experiment and both created it: the later is
            # refused, and uses the one the other made.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def _unfinished_run(self, experiment_id: str) -> str | None:
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.runName = '{self.name}' and tags.params_hash = '{self.params_hash}' "
            "and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def log_step(self, record: dict[str, float], prefix: str = "train") -> None:
        """Per-step curves, as `<prefix>/<key>`: apart from the final metrics of the same name."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(record["step"])
        for key, value in record.items():
            name = f"{prefix}/{key}"
            if key != "step" and step > self._logged.get(name, -1):
                self._steps.append(Metric(name, float(value), now, step))
        if len(self._steps) >= STEP_FLUSH:
            self.flush()

    @contextlib.contextmanager
    def _server_calls(self) -> Iterator[None]:
        """A tracking server that stops answering mid-stage ends the stage in one line. The stage's
        outputs written so far and its checkpoint stay, so a rerun resumes where the run stopped."""
        try:
            yield
        except Exception as exc:
            uri = tracking_uri()
            if is_server(uri) and (reason := unreachable(uri)):
                raise DuelError(
                    f"MLflow tracking server {uri} stopped answering during {self.name} ({reason}); "
                    "restart it and rerun the stage (pretrain resumes from its last checkpoint)"
                ) from exc
            raise

    def flush(self) -> None:
        """Send the buffered step metrics (`MLflowLogging` calls it before each checkpoint is written)."""
        with self._server_calls():
            for start in range(0, len(self._steps), 1000):  # MLflow's batch limit
                self.client.log_batch(self.run.info.run_id, metrics=self._steps[start : start + 1000])
        self._steps = []

    def log_metrics(self, metrics: dict[str, float]) -> None:
        import mlflow

        with self._server_calls():
            mlflow.log_metrics(metrics)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        import mlflow

        with self._server_calls():
            mlflow.log_artifact(str(path), folder)

    def log_dataset(self, name: str, indices: Any, labels: Any, manifest: Path, context: str) -> None:
        """A set of source images as the run's MLflow dataset input (the runs table's Datasets column): its
        indices into the source's train split and their labels, digested by MLflow, with the manifest as source."""
        import mlflow
        import mlflow.data
        from mlflow.data.dataset_source_registry import get_registered_sources
        from mlflow.exceptions import MlflowException

        # MLflow registers two local-file source classes (schemes "" and "file") and warns that any path is
        # ambiguous between them; naming the class avoids the warning.
        local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
        dataset = mlflow.data.from_numpy(indices, targets=labels, name=name, source=local(str(manifest)))
        with self._server_calls():
            try:
                mlflow.log_input(dataset, context=context)
            except MlflowException as exc:
                # Two queue workers logging the same training set at once: MLflow looks the dataset up, finds
                # none, and inserts it; the later insert breaks the store's unique (experiment, name, digest)
                # key. The failed call kept nothing (one transaction); again, it finds the other's dataset.
                if "unique constraint" not in str(exc).lower():
                    raise
                mlflow.log_input(dataset, context=context)

    def log_arrays(self, name: str, arrays: dict[str, Any]) -> None:
        """Arrays as one compressed `.npz` artifact of the run (nothing is written to the project)."""
        import mlflow
        import numpy as np

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            np.savez_compressed(path, **arrays)
            with self._server_calls():
                mlflow.log_artifact(str(path))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        import mlflow

        status = "FINISHED" if kind is None else "KILLED" if issubclass(kind, StageKilled) else "FAILED"
        try:
            if self._steps:
                self.flush()
            with self._server_calls():
                mlflow.end_run(status)
        except DuelError:
            if kind is None:
                raise
            # Already unwinding (the server went away mid-stage): that error is the one to report.
